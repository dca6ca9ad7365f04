/** Wires the inventory service: store (seeded on first start), events, API. */

import { EVENTS } from "../../contracts/events.js";
import { InventoryService } from "../../gen/shopmesh/inventory/v1/inventory_pb.js";
import { bind, type Host, type Logger, locationOf, startHost } from "../../platform/index.js";
import { createInventoryApi } from "./api.js";
import { DEMO_CATALOGUE } from "./catalogue.js";
import type { InventoryConfig } from "./config.js";
import { inventoryConsumers } from "./events.js";
import { InventoryStore } from "./store.js";

/** A running inventory service. */
export interface InventoryApp extends Host {
  readonly store: InventoryStore;
}

/** Opens the store, seeds the catalogue when empty, and starts serving and consuming. */
export async function startInventory(config: InventoryConfig, log: Logger): Promise<InventoryApp> {
  const store = await InventoryStore.open(locationOf("inventory", config), Date.now, log);
  if (config.SEED_CATALOGUE) {
    const n = await store.seedIfEmpty(DEMO_CATALOGUE);
    if (n > 0) log.info({ products: n }, "seeded demo catalogue");
  }
  const host = await startHost({
    name: "inventory",
    config,
    log,
    db: store.db,
    catalogue: EVENTS,
    outbox: store.outbox,
    consumers: inventoryConsumers(store),
    build: () => ({ services: [bind(InventoryService, createInventoryApi({ store }))], parts: undefined }),
    close: () => store.close(),
  });
  return { ...host, store };
}
