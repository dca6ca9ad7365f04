/** Wires the history service: store (the read model), event consumers, API. */

import { EVENTS } from "../../contracts/events.js";
import { HistoryService } from "../../gen/shopmesh/history/v1/history_pb.js";
import { bind, type Host, type Logger, locationOf, startHost } from "../../platform/index.js";
import { createHistoryApi } from "./api.js";
import type { HistoryConfig } from "./config.js";
import { historyConsumers } from "./events.js";
import { holdAgainstRebuild } from "./rebuild-aside.js";
import { HistoryStore } from "./store.js";

/** A running history service. */
export interface HistoryApp extends Host {
  readonly store: HistoryStore;
}

/**
 * Holds the view against a rebuild (waiting while one runs), opens the store, starts consuming order,
 * inventory and payment events, and starts serving.
 */
export async function startHistory(config: HistoryConfig, log: Logger): Promise<HistoryApp> {
  const location = locationOf("history", config);
  // Held while the service runs: a rebuild swapping the view under it would lose what it applies.
  const release = await holdAgainstRebuild(location, log);
  let store: HistoryStore;
  try {
    store = await HistoryStore.open(location, log);
  } catch (err) {
    await release();
    throw err;
  }
  const host = await startHost({
    name: "history",
    config,
    log,
    db: store.db,
    catalogue: EVENTS,
    consumers: historyConsumers(store),
    build: () => ({ services: [bind(HistoryService, createHistoryApi({ store }))], parts: undefined }),
    close: async () => {
      await store.close();
      await release();
    },
  });
  return { ...host, store };
}
