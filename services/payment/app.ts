/** Wires the payment service: store, events, API. */

import { EVENTS } from "../../contracts/events.js";
import { PaymentService } from "../../gen/shopmesh/payment/v1/payment_pb.js";
import { bind, type Host, type Logger, locationOf, startHost } from "../../platform/index.js";
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
  const store = await PaymentStore.open(locationOf("payment", config), Date.now, log);
  const host = await startHost({
    name: "payment",
    config,
    log,
    db: store.db,
    catalogue: EVENTS,
    outbox: store.outbox,
    consumers: paymentConsumers(store),
    build: () => ({ services: [bind(PaymentService, createPaymentApi({ store }))], parts: undefined }),
    close: () => store.close(),
  });
  return { ...host, store };
}
