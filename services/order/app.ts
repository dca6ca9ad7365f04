/** Wires the order service: store, resilient clients, saga orchestrator, choreography consumers, gRPC server. */
import { InventoryService } from "../../gen/shopmesh/inventory/v1/inventory_pb.js";
import { OrderService } from "../../gen/shopmesh/order/v1/order_pb.js";
import { PaymentService } from "../../gen/shopmesh/payment/v1/payment_pb.js";
import {
  type AppTelemetry,
  announce,
  bind,
  createResilientClient,
  type Eventing,
  FaultInjector,
  type Logger,
  policyFrom,
  type ResilientClient,
  startAppTelemetry,
  startEventing,
  startGrpcServer,
  upstreamChannel,
} from "../../platform/index.js";
import { createOrderApi } from "./api.js";
import { Choreography } from "./choreography.js";
import type { OrderConfig } from "./config.js";
import { SagaOrchestrator } from "./saga.js";
import { OrderStore } from "./store.js";

/** A running order service. */
export interface OrderApp {
  readonly port: number;
  readonly address: string;
  readonly store: OrderStore;
  readonly telemetry: AppTelemetry;
  readonly saga: SagaOrchestrator;
  readonly inventory: ResilientClient<typeof InventoryService>;
  readonly payment: ResilientClient<typeof PaymentService>;
  readonly events: Eventing;
  /** Drains calls, stops sagas (they resume on the next start), closes channels and the database. */
  stop(): Promise<void>;
}

/** Opens the store, connects to inventory and payment, resumes unfinished sagas, and starts serving. */
export async function startOrder(config: OrderConfig, log: Logger): Promise<OrderApp> {
  const store = OrderStore.open(config.DB_PATH);
  const telemetry = await startAppTelemetry("order", config.METRICS_PORT, log);
  const choreography = new Choreography(store);
  const faults = FaultInjector.fromConfig(config);
  const events = await startEventing({
    url: config.NATS_URL,
    service: "order",
    telemetry,
    db: store.db,
    outbox: store.outbox,
    consumers: choreography.consumers(),
    log,
    crashBeforePublish: config.FAULT_CRASH_BEFORE_PUBLISH,
    crashAfterCommit: config.FAULT_CRASH_AFTER_COMMIT,
    faults,
  });
  const inventoryChannel = upstreamChannel(config.INVENTORY_TARGET, events.bus, log);
  const paymentChannel = upstreamChannel(config.PAYMENT_TARGET, events.bus, log);
  const inventory = createResilientClient(
    "inventory",
    InventoryService,
    inventoryChannel,
    policyFrom("INVENTORY", config),
    log,
    { telemetry },
  );
  const payment = createResilientClient("payment", PaymentService, paymentChannel, policyFrom("PAYMENT", config), log, {
    telemetry,
  });
  const saga = new SagaOrchestrator({
    store,
    inventory,
    payment,
    telemetry,
    log: log.child({ component: "saga" }),
    timing: {
      stepBudgetMs: config.SAGA_STEP_BUDGET_MS,
      retryBaseMs: config.SAGA_RETRY_BASE_MS,
      retryMaxMs: config.SAGA_RETRY_MAX_MS,
    },
  });
  const advance = (orderId: string) => {
    if (store.get(orderId)?.sagaMode === "CHOREOGRAPHY") choreography.cancelRequested(orderId);
    else saga.kick(orderId);
  };
  const server = await startGrpcServer({
    telemetry,
    host: config.GRPC_HOST,
    port: config.GRPC_PORT,
    services: [bind(OrderService, createOrderApi({ store, advance, defaultMode: config.SAGA_DEFAULT_MODE }))],
    faults,
    log,
  });
  const registration = await announce(events.bus, "order", config.GRPC_ADVERTISE_HOST, server.port, log);
  const m = telemetry.metrics;
  store.onPlaced((o) => m.sagasStarted.inc({ mode: o.sagaMode }));
  store.onTerminal((o) => {
    const outcome = o.status.toLowerCase();
    m.sagasFinished.inc({ mode: o.sagaMode, outcome });
    m.sagaDuration.observe({ mode: o.sagaMode, outcome }, (o.updatedAt - o.createdAt) / 1000);
    // Something was held or taken (or may have been) and had to be given back.
    if (o.status === "CANCELLED" && (o.stock !== "none" || o.payment !== "none"))
      m.sagasCompensated.inc({ mode: o.sagaMode });
  });
  saga.resumeAll();
  return {
    port: server.port,
    address: server.address,
    store,
    telemetry,
    saga,
    inventory,
    payment,
    events,
    async stop() {
      // Deregister first: clients stop picking this instance before it drains.
      await registration?.stop();
      await server.stop(config.SHUTDOWN_GRACE_MS);
      await saga.stop();
      await events.stop();
      inventoryChannel.close();
      paymentChannel.close();
      store.close();
      await telemetry.close();
    },
  };
}
