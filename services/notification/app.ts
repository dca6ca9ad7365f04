/** Wires the notification service: store, event consumers, API, gRPC server. */
import { NotificationService } from "../../gen/shopmesh/notification/v1/notification_pb.js";
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
import { createNotificationApi } from "./api.js";
import type { NotificationConfig } from "./config.js";
import { notificationConsumers } from "./events.js";
import { NotificationStore } from "./store.js";

/** A running notification service. */
export interface NotificationApp {
  readonly port: number;
  readonly address: string;
  readonly store: NotificationStore;
  readonly telemetry: AppTelemetry;
  readonly events: Eventing;
  /** Drains calls (bounded by SHUTDOWN_GRACE_MS), stops the consumers and the bus, closes the database. */
  stop(): Promise<void>;
}

/** Opens the store, starts consuming order and payment events, and starts serving. */
export async function startNotification(config: NotificationConfig, log: Logger): Promise<NotificationApp> {
  const store = NotificationStore.open(config.DB_PATH);
  const telemetry = await startAppTelemetry("notification", config.METRICS_PORT, log);
  let events: Eventing | undefined;
  try {
    events = await startEventing({
      url: config.NATS_URL,
      service: "notification",
      telemetry,
      db: store.db,
      consumers: notificationConsumers(store, log),
      log,
      crashAfterCommit: config.FAULT_CRASH_AFTER_COMMIT,
    });
    const server = await startGrpcServer({
      telemetry,
      host: config.GRPC_HOST,
      port: config.GRPC_PORT,
      services: [bind(NotificationService, createNotificationApi({ store }))],
      faults: FaultInjector.fromConfig(config),
      log,
    });
    const registration = await announce(events.bus, "notification", config.GRPC_ADVERTISE_HOST, server.port, log);
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
