/** Wires the payment service: store, API, gRPC server. */
import { PaymentService } from "../../gen/shopmesh/payment/v1/payment_pb.js";
import { bind, FaultInjector, type Logger, startGrpcServer } from "../../platform/index.js";
import { createPaymentApi } from "./api.js";
import type { PaymentConfig } from "./config.js";
import { PaymentStore } from "./store.js";

/** A running payment service. */
export interface PaymentApp {
  readonly port: number;
  readonly address: string;
  readonly store: PaymentStore;
  /** Drains calls (bounded by SHUTDOWN_GRACE_MS) and closes the database. */
  stop(): Promise<void>;
}

/** Opens the store and starts serving. */
export async function startPayment(config: PaymentConfig, log: Logger): Promise<PaymentApp> {
  const store = PaymentStore.open(config.DB_PATH);
  const server = await startGrpcServer({
    host: config.GRPC_HOST,
    port: config.GRPC_PORT,
    services: [bind(PaymentService, createPaymentApi({ store }))],
    faults: FaultInjector.fromConfig(config),
    log,
  });
  return {
    port: server.port,
    address: server.address,
    store,
    async stop() {
      await server.stop(config.SHUTDOWN_GRACE_MS);
      store.close();
    },
  };
}
