/** Wires the history service: store, event consumers, API, gRPC server. */
import { HistoryService } from "../../gen/shopmesh/history/v1/history_pb.js";
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
import { createHistoryApi } from "./api.js";
import type { HistoryConfig } from "./config.js";
import { historyConsumers } from "./events.js";
import { HistoryStore } from "./store.js";

/** A running history service. */
export interface HistoryApp {
  readonly port: number;
  readonly address: string;
  readonly store: HistoryStore;
  readonly telemetry: AppTelemetry;
  readonly events: Eventing;
  /** Drains calls (bounded by SHUTDOWN_GRACE_MS), stops the consumers and the bus, closes the database. */
  stop(): Promise<void>;
}

/** Opens the store, starts consuming order, inventory and payment events, and starts serving. */
export async function startHistory(config: HistoryConfig, log: Logger): Promise<HistoryApp> {
  const store = HistoryStore.open(config.DB_PATH);
  const telemetry = await startAppTelemetry("history", config.METRICS_PORT, log);
  let events: Eventing | undefined;
  try {
    events = await startEventing({
      url: config.NATS_URL,
      service: "history",
      telemetry,
      db: store.db,
      consumers: historyConsumers(store),
      log,
      crashAfterCommit: config.FAULT_CRASH_AFTER_COMMIT,
    });
    const server = await startGrpcServer({
      telemetry,
      host: config.GRPC_HOST,
      port: config.GRPC_PORT,
      services: [bind(HistoryService, createHistoryApi({ store }))],
      faults: FaultInjector.fromConfig(config),
      log,
    });
    const registration = await announce(events.bus, "history", config.GRPC_ADVERTISE_HOST, server.port, log);
    const running = events;
    return {
      port: server.port,
      address: server.address,
      store,
      telemetry,
      events: running,
      async stop() {
        // Deregister first: clients stop picking this instance before it drains.
        await registration?.stop();
        await server.stop(config.SHUTDOWN_GRACE_MS);
        await running.stop();
        store.close();
        await telemetry.close();
      },
    };
  } catch (err) {
    // A failed start (port taken, say) must not leave consumers writing to a database nobody owns.
    await events?.stop();
    store.close();
    throw err;
  }
}
