/** Wires the payment service: store, events, API. */
import { PaymentService } from "../../gen/shopmesh/payment/v1/payment_pb.js";
import { bind, type Host, type Logger, startHost } from "../../platform/index.js";
import { createPaymentApi } from "./api.js";
import type { PaymentConfig } from "./config.js";
import { paymentConsumers } from "./events.js";
import { PaymentStore } from "./store.js";

/** A running payment service. */
export interface PaymentApp extends Host {
  readonly store: PaymentStore;
}

/** Opens the store and starts serving and consuming. */
export async function startPayment(config: PaymentConfig, log: Logger): Promise<PaymentApp> {
  const store = PaymentStore.open(config.DB_PATH);
  const host = await startHost({
    name: "payment",
    config,
    log,
    db: store.db,
    outbox: store.outbox,
    consumers: paymentConsumers(store),
    services: () => [bind(PaymentService, createPaymentApi({ store }))],
    close: () => store.close(),
  });
  return { ...host, store };
}
