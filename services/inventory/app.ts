/** Wires the inventory service: store, API, gRPC server. */
import { InventoryService } from "../../gen/shopmesh/inventory/v1/inventory_pb.js";
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
import { createInventoryApi } from "./api.js";
import { DEMO_CATALOGUE } from "./catalogue.js";
import type { InventoryConfig } from "./config.js";
import { inventoryConsumers } from "./events.js";
import { InventoryStore } from "./store.js";

/** A running inventory service. */
export interface InventoryApp {
  readonly port: number;
  readonly address: string;
  readonly store: InventoryStore;
  readonly telemetry: AppTelemetry;
  readonly events: Eventing;
  /** Drains calls (bounded by SHUTDOWN_GRACE_MS), stops the event machinery, closes the database. */
  stop(): Promise<void>;
}

/** Opens the store, seeds the catalogue when empty, and starts serving. */
export async function startInventory(config: InventoryConfig, log: Logger): Promise<InventoryApp> {
  const store = InventoryStore.open(config.DB_PATH);
  const telemetry = await startAppTelemetry("inventory", config.METRICS_PORT, log);
  if (config.SEED_CATALOGUE) {
    const n = store.seedIfEmpty(DEMO_CATALOGUE);
    if (n > 0) log.info({ products: n }, "seeded demo catalogue");
  }
  const faults = FaultInjector.fromConfig(config);
  const events = await startEventing({
    url: config.NATS_URL,
    service: "inventory",
    telemetry,
    db: store.db,
    outbox: store.outbox,
    consumers: inventoryConsumers(store),
    log,
    crashBeforePublish: config.FAULT_CRASH_BEFORE_PUBLISH,
    crashAfterCommit: config.FAULT_CRASH_AFTER_COMMIT,
    faults,
  });
  const server = await startGrpcServer({
    telemetry,
    host: config.GRPC_HOST,
    port: config.GRPC_PORT,
    services: [bind(InventoryService, createInventoryApi({ store }))],
    faults,
    log,
  });
  const registration = await announce(events.bus, "inventory", config.GRPC_ADVERTISE_HOST, server.port, log);
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
