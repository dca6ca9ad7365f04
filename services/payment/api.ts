/** PaymentService RPC handlers: validate, call the store, map to messages. */
import type { MessageInitShape } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { SagaMode } from "../../gen/shopmesh/common/v1/common_pb.js";
import {
  ChargePaymentRequestSchema,
  type PaymentSchema,
  type PaymentService,
  PaymentStatus,
} from "../../gen/shopmesh/payment/v1/payment_pb.js";
import {
  IdempotencyKeyReusedError,
  identityOf,
  NotFoundError,
  requestFingerprint,
  type ServiceImpl,
} from "../../platform/index.js";
import { canSee, type PaymentRecord, validateCharge, validateLookup, validateRefund } from "./domain.js";
import type { PaymentStore } from "./store.js";

/** Dependencies of the payment API. */
export interface PaymentApiDeps {
  readonly store: PaymentStore;
}

function paymentMessage(p: PaymentRecord): MessageInitShape<typeof PaymentSchema> {
  return {
    id: p.id,
    orderId: p.orderId,
    customerId: p.customerId,
    // A void tombstone never attempted an amount, so it carries none rather than a currency-less zero.
    amount: p.kind === "VOID" ? undefined : { currencyCode: p.currency, amountMinor: BigInt(p.amountMinor) },
    status: PaymentStatus[p.status],
    declineReason: p.declineReason,
    createdAt: timestampFromMs(p.createdAt),
    updatedAt: timestampFromMs(p.updatedAt),
  };
}

/** Creates the PaymentService handlers. */
export function createPaymentApi({ store }: PaymentApiDeps): ServiceImpl<typeof PaymentService> {
  return {
    async chargePayment(req) {
      const input = validateCharge(req);
      const result = await store.charge(
        requestFingerprint(ChargePaymentRequestSchema, req),
        input,
        SagaMode.ORCHESTRATION,
      );
      if (result.kind === "key-reused") throw new IdempotencyKeyReusedError(req.idempotencyKey);
      return { payment: paymentMessage(result.payment) };
    },

    async refundPayment(req) {
      const { target, reason } = validateRefund(req);
      const result = await store.refund(target, reason, SagaMode.ORCHESTRATION);
      if (result.kind === "not-found") throw new NotFoundError("payment", req.paymentId);
      return { payment: paymentMessage(result.payment) };
    },

    async getPayment(req, ctx) {
      const lookup = validateLookup(req);
      const payment =
        lookup.by === "id" ? await store.payment(lookup.paymentId) : await store.latestForOrder(lookup.orderId);
      // Another customer's payment answers exactly like a missing one, so ids cannot be probed.
      if (!payment || !canSee(identityOf(ctx.metadata), payment)) {
        throw lookup.by === "id"
          ? new NotFoundError("payment", lookup.paymentId)
          : new NotFoundError("payment for order", lookup.orderId);
      }
      return { payment: paymentMessage(payment) };
    },
  };
}
