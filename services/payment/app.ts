/** Wires the payment service: store, events, API, gRPC server. */
import { PaymentService } from "../../gen/shopmesh/payment/v1/payment_pb.js";
import {
  type AppTelemetry,
  announce,
  bind,
  type Eventing,
  FaultInjector,
  type Logger,
  startAppTelemetry,
  startEventing,
  startGrpcServer,
} from "../../platform/index.js";
import { createPaymentApi } from "./api.js";
import type { PaymentConfig } from "./config.js";
import { paymentConsumers } from "./events.js";
import { PaymentStore } from "./store.js";

/** A running payment service. */
export interface PaymentApp {
  readonly port: number;
  readonly address: string;
  readonly store: PaymentStore;
  readonly telemetry: AppTelemetry;
  readonly events: Eventing;
  /** Drains calls (bounded by SHUTDOWN_GRACE_MS), stops the event machinery, closes the database. */
  stop(): Promise<void>;
}

/** Opens the store and starts serving. */
export async function startPayment(config: PaymentConfig, log: Logger): Promise<PaymentApp> {
  const store = PaymentStore.open(config.DB_PATH);
  const telemetry = await startAppTelemetry("payment", config.METRICS_PORT, log);
  const faults = FaultInjector.fromConfig(config);
  const events = await startEventing({
    url: config.NATS_URL,
    service: "payment",
    telemetry,
    db: store.db,
    outbox: store.outbox,
    consumers: paymentConsumers(store),
    log,
    crashBeforePublish: config.FAULT_CRASH_BEFORE_PUBLISH,
    crashAfterCommit: config.FAULT_CRASH_AFTER_COMMIT,
    faults,
  });
  const server = await startGrpcServer({
    telemetry,
    host: config.GRPC_HOST,
    port: config.GRPC_PORT,
    services: [bind(PaymentService, createPaymentApi({ store }))],
    faults,
    log,
  });
  const registration = await announce(events.bus, "payment", config.GRPC_ADVERTISE_HOST, server.port, log);
  return {
    port: server.port,
    address: server.address,
    store,
    telemetry,
    events,
    async stop() {
      // Deregister first: clients stop picking this instance before it drains.
      await registration?.stop();
      await server.stop(config.SHUTDOWN_GRACE_MS);
      await events.stop();
      store.close();
      await telemetry.close();
    },
  };
}
