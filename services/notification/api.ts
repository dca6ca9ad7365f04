/** NotificationService RPC handlers: identity, validation, the store, mapping to messages. */
import type { MessageInitShape } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import {
  NotificationKind,
  type NotificationSchema,
  type NotificationService,
} from "../../gen/shopmesh/notification/v1/notification_pb.js";
import { Pages, pageSize, requireIdentity, type ServiceImpl } from "../../platform/index.js";
import { type NotificationRecord, validateListFilter } from "./domain.js";
import type { NotificationStore } from "./store.js";

/** ListNotifications' pages: newest first. */
const PAGES = new Pages("shopmesh.notification.v1.NotificationService/ListNotifications", {
  t: "integer",
  id: "string",
});

/** Dependencies of the notification API. */
export interface NotificationApiDeps {
  readonly store: NotificationStore;
}

function notificationMessage(n: NotificationRecord): MessageInitShape<typeof NotificationSchema> {
  return {
    id: n.id,
    customerId: n.customerId,
    orderId: n.orderId,
    kind: NotificationKind[n.kind],
    message: n.message,
    eventId: n.eventId,
    sentAt: timestampFromMs(n.sentAt),
  };
}

/** Creates the NotificationService handlers. */
export function createNotificationApi({ store }: NotificationApiDeps): ServiceImpl<typeof NotificationService> {
  return {
    async listNotifications(req, ctx) {
      // Everyone, admins included, lists only the notifications addressed to them.
      const who = requireIdentity(ctx.metadata);
      const limit = pageSize(req.pageSize);
      const { orderId } = validateListFilter(req);
      const cursor = PAGES.cursor(req.pageToken);
      const rows = await store.listByCustomer(
        who.subject,
        orderId,
        cursor && { sentAt: cursor.t, id: cursor.id },
        limit + 1,
      );
      const { page, nextPageToken } = PAGES.of(rows, limit, (last) => ({ t: last.sentAt, id: last.id }));
      return { notifications: page.map(notificationMessage), nextPageToken };
    },
  };
}
