/** OrderService RPC handlers: identity, validation, the store, and kicking the saga. */
import type { MessageInitShape } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { trace } from "@opentelemetry/api";
import { validateLines } from "../../contracts/lines.js";
import { SagaMode as SagaModeEnum } from "../../gen/shopmesh/common/v1/common_pb.js";
import {
  type OrderSchema,
  type OrderService,
  OrderStatus as OrderStatusEnum,
  PlaceOrderRequestSchema,
  StepStatus as StepStatusEnum,
} from "../../gen/shopmesh/order/v1/order_pb.js";
import {
  FailedPreconditionError,
  IdempotencyKeyReusedError,
  type Identity,
  InvalidArgumentError,
  NotFoundError,
  Pages,
  pageSize,
  requestFingerprint,
  requireId,
  requireIdempotencyKey,
  requireIdentity,
  requireText,
  type ServiceImpl,
  type Tx,
} from "../../platform/index.js";
import { isSettled, type OrderRecord, refundPending, type SagaMode } from "./domain.js";
import { STEP_LOG_KEPT, type StoredStep, stepWindow } from "./schema.js";
import type { OrderStore } from "./store.js";

/** ListOrders' pages: newest first. */
const PAGES = new Pages("shopmesh.order.v1.OrderService/ListOrders", { t: "integer", id: "string" });

/** Longest reason CancelOrder takes (the order keeps it as its status reason, and its refund says it). */
const MAX_CANCEL_REASON = 500;

/** Dependencies of the order API. */
export interface OrderApiDeps {
  readonly store: OrderStore;
  /** The lease under which this replica places an orchestrated order (and so drives its saga). */
  readonly lease: { readonly owner: string; readonly ms: number };
  /**
   * A new order is being placed in `tx` (its lease token `fence`, when orchestrated): start its
   * saga, in `tx` or once it commits. Returns the order and its step log as `tx` leaves them.
   */
  readonly placed: (
    order: OrderRecord,
    fence: number,
    tx: Tx,
  ) => Promise<{ order: OrderRecord; steps: readonly StoredStep[] }>;
  /** A cancel was recorded in `tx`: move the saga along (in `tx`, or after it commits). */
  readonly cancelRequested: (order: OrderRecord, tx: Tx) => Promise<void>;
  /** Saga mode for requests that leave it UNSPECIFIED. */
  readonly defaultMode: SagaMode;
}

/** The step-log entries an Order message carries: the first (schema.ts, STEP_LOG_FIRST), then the latest. */
export const MAX_STEPS_SHOWN = STEP_LOG_KEPT;

/**
 * The Order message of `o` with its step log (oldest first, as stored: a long one has had entries
 * between its first and its latest dropped, schema.ts). `steps_omitted` counts every entry ever
 * written that it leaves out: the log's entries are numbered from 1 (`seq`), so the last one's number
 * is how many there were.
 */
export function orderMessage(o: OrderRecord, log: readonly StoredStep[]): MessageInitShape<typeof OrderSchema> {
  const steps = stepWindow(log);
  const written = Math.max(log.length, log.at(-1)?.seq ?? 0);
  return {
    id: o.id,
    customerId: o.customerId,
    items: o.items.map((l) => ({ productId: l.productId, quantity: l.quantity })),
    total: o.totalMinor === null ? undefined : { currencyCode: o.currency ?? "", amountMinor: BigInt(o.totalMinor) },
    status: OrderStatusEnum[o.status],
    statusReason: o.reason,
    sagaMode: SagaModeEnum[o.sagaMode],
    steps: steps.map((s) => ({
      name: s.name,
      status: StepStatusEnum[s.status],
      detail: s.detail,
      attempt: s.attempt,
      at: timestampFromMs(s.at),
    })),
    reservationId: o.reservationId,
    paymentId: o.paymentId,
    createdAt: timestampFromMs(o.createdAt),
    updatedAt: timestampFromMs(o.updatedAt),
    refundPending: refundPending(o),
    cancelRequested: o.cancelRequested !== null && o.status !== "CANCELLED",
    stepsOmitted: written - steps.length,
  };
}

/**
 * The states of order `id` from now until it is CONFIRMED or CANCELLED
 * with no refund pending (or `signal` aborts), each with its step log: its current state (as
 * `visible` lets it be seen: it throws for an order the caller may not see), then
 * each committed change, by any replica, never an older one after a newer (by version, not by clock).
 * The step log is read once; after that each change brings the entry it appended, and the log is
 * read again only when that is not known (another replica's change) or one was missed.
 */
async function* follow(
  store: OrderStore,
  id: string,
  signal: AbortSignal,
  visible: (o: OrderRecord | undefined) => OrderRecord,
): AsyncIterable<{ order: OrderRecord; steps: readonly StoredStep[] }> {
  // Subscribe before reading, so no change between the read and the subscription is missed.
  const queue: { order: OrderRecord; step: StoredStep | null | undefined }[] = [];
  let wake: (() => void) | undefined;
  const off = store.onChange(id, (order, step) => {
    queue.push({ order, step });
    wake?.();
  });
  const onAbort = () => wake?.();
  signal.addEventListener("abort", onAbort);
  try {
    let current = visible(await store.get(id));
    // Read after the order: it holds every step of that version, and perhaps a few of later ones.
    let steps: readonly StoredStep[] = await store.steps(id);
    yield { order: current, steps };
    while (!isSettled(current) && !signal.aborted) {
      if (queue.length === 0) await new Promise<void>((r) => (wake = r));
      const next = queue.shift();
      if (!next || next.order.version <= current.version) continue;
      current = next.order;
      const last = steps.at(-1)?.seq ?? 0;
      if (next.step === undefined || (next.step && next.step.seq > last + 1)) steps = await store.steps(id);
      // Kept as the message shows it: a watch held through a long outage held every retry's entries.
      else if (next.step && next.step.seq === last + 1) steps = stepWindow([...steps, next.step]);
      yield { order: current, steps };
    }
  } finally {
    off();
    signal.removeEventListener("abort", onAbort);
  }
}

function sagaModeOf(mode: SagaModeEnum, fallback: SagaMode): SagaMode {
  switch (mode) {
    case SagaModeEnum.UNSPECIFIED:
      return fallback;
    case SagaModeEnum.ORCHESTRATION:
      return "ORCHESTRATION";
    case SagaModeEnum.CHOREOGRAPHY:
      return "CHOREOGRAPHY";
    default:
      throw new InvalidArgumentError("saga_mode", `unknown value ${mode}`);
  }
}

/** Creates the OrderService handlers. */
export function createOrderApi(deps: OrderApiDeps): ServiceImpl<typeof OrderService> {
  const { store, defaultMode } = deps;
  /** `o` if `who` may see it; NOT_FOUND otherwise (another customer's order does not exist for you). */
  const seenBy = (orderId: string, who: Identity, o: OrderRecord | undefined): OrderRecord => {
    if (!o || (o.customerId !== who.subject && !who.roles.includes("admin"))) throw new NotFoundError("order", orderId);
    return o;
  };
  const visible = async (orderId: string, who: Identity): Promise<OrderRecord> => {
    requireId(orderId, "order_id");
    return seenBy(orderId, who, await store.get(orderId));
  };
  const message = async (o: OrderRecord) => ({ order: orderMessage(o, await store.steps(o.id)) });

  return {
    async placeOrder(req, ctx) {
      const who = requireIdentity(ctx.metadata);
      requireIdempotencyKey(req.idempotencyKey);
      const items = validateLines(req.items);
      requireId(req.cardToken, "card_token", 64);
      const sagaMode = sagaModeOf(req.sagaMode, defaultMode);
      const placed = await store.place(
        {
          customerId: who.subject,
          key: req.idempotencyKey,
          fingerprint: requestFingerprint(PlaceOrderRequestSchema, req),
          items,
          cardToken: req.cardToken,
          sagaMode,
        },
        sagaMode === "ORCHESTRATION" ? deps.lease : undefined,
        deps.placed,
      );
      if (placed.kind === "key-reused") throw new IdempotencyKeyReusedError(req.idempotencyKey);
      trace.getActiveSpan()?.setAttribute("order.id", placed.order.id);
      // A replay needs nothing more: its saga is running (or is adopted) wherever it was placed.
      if (placed.kind !== "created") return message(placed.order);
      return { order: orderMessage(placed.order, placed.steps) };
    },

    async getOrder(req, ctx) {
      return message(await visible(req.orderId, requireIdentity(ctx.metadata)));
    },

    async cancelOrder(req, ctx) {
      const o = await visible(req.orderId, requireIdentity(ctx.metadata));
      requireText(req.reason, "reason", MAX_CANCEL_REASON);
      // The request and its first effect commit together: a crash cannot keep one without the other.
      const r = await store.db.transaction(async (tx) => {
        const r = await store.requestCancel(o.id, req.reason, tx);
        if (r.kind === "requested") await deps.cancelRequested(r.order, tx);
        return r;
      });
      switch (r.kind) {
        case "not-found":
          throw new NotFoundError("order", o.id);
        case "not-cancellable":
          throw new FailedPreconditionError(`order ${o.id} is ${r.order.status} and can no longer be cancelled`, [
            { type: "ORDER_STATUS", subject: `orders/${o.id}`, description: `status is ${r.order.status}` },
          ]);
        case "requested":
        case "already-cancelling":
          return message((await store.get(o.id)) ?? r.order);
      }
    },

    async listOrders(req, ctx) {
      const who = requireIdentity(ctx.metadata);
      const limit = pageSize(req.pageSize);
      const cursor = PAGES.cursor(req.pageToken);
      const rows = await store.listByCustomer(who.subject, cursor && { createdAt: cursor.t, id: cursor.id }, limit + 1);
      const { page, nextPageToken } = PAGES.of(rows, limit, (last) => ({ t: last.createdAt, id: last.id }));
      const orders = await Promise.all(page.map(async (o) => orderMessage(o, await store.steps(o.id))));
      return { orders, nextPageToken };
    },

    async *watchOrder(req, ctx) {
      const who = requireIdentity(ctx.metadata);
      requireId(req.orderId, "order_id");
      for await (const { order, steps } of follow(store, req.orderId, ctx.signal, (o) => seenBy(req.orderId, who, o)))
        yield { order: orderMessage(order, steps) };
    },
  };
}
