/** Wires the notification service: store, event consumers, API. */

import { EVENTS } from "../../contracts/events.js";
import { NotificationService } from "../../gen/shopmesh/notification/v1/notification_pb.js";
import { bind, type Host, type Logger, locationOf, startHost } from "../../platform/index.js";
import { createNotificationApi } from "./api.js";
import type { NotificationConfig } from "./config.js";
import { notificationConsumers } from "./events.js";
import { NotificationStore } from "./store.js";

/** A running notification service. */
export interface NotificationApp extends Host {
  readonly store: NotificationStore;
}

/** Opens the store, starts consuming order and payment events, and starts serving. */
export async function startNotification(config: NotificationConfig, log: Logger): Promise<NotificationApp> {
  const store = await NotificationStore.open(locationOf("notification", config), Date.now, log);
  const host = await startHost({
    name: "notification",
    config,
    log,
    db: store.db,
    catalogue: EVENTS,
    consumers: notificationConsumers(store, log),
    build: () => ({ services: [bind(NotificationService, createNotificationApi({ store }))], parts: undefined }),
    close: () => store.close(),
  });
  return { ...host, store };
}
