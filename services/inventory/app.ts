/** Wires the inventory service: store, API, gRPC server. */
import { InventoryService } from "../../gen/shopmesh/inventory/v1/inventory_pb.js";
import { bind, FaultInjector, type Logger, startGrpcServer } from "../../platform/index.js";
import { createInventoryApi } from "./api.js";
import { DEMO_CATALOGUE } from "./catalogue.js";
import type { InventoryConfig } from "./config.js";
import { InventoryStore } from "./store.js";

/** A running inventory service. */
export interface InventoryApp {
  readonly port: number;
  readonly address: string;
  readonly store: InventoryStore;
  /** Drains calls (bounded by SHUTDOWN_GRACE_MS) and closes the database. */
  stop(): Promise<void>;
}

/** Opens the store, seeds the catalogue when empty, and starts serving. */
export async function startInventory(config: InventoryConfig, log: Logger): Promise<InventoryApp> {
  const store = InventoryStore.open(config.DB_PATH);
  if (config.SEED_CATALOGUE) {
    const n = store.seedIfEmpty(DEMO_CATALOGUE);
    if (n > 0) log.info({ products: n }, "seeded demo catalogue");
  }
  const server = await startGrpcServer({
    host: config.GRPC_HOST,
    port: config.GRPC_PORT,
    services: [bind(InventoryService, createInventoryApi({ store }))],
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
