/** Notifications: what the shop told the customer about their orders (ListNotifications, paged). */
import type { Notification } from "../../gen/shopmesh/notification/v1/notification_pb.js";
import { NotificationKind } from "../../gen/shopmesh/notification/v1/notification_pb.js";
import { h, replace } from "./dom.js";
import { describeError } from "./errors.js";
import { dateTime, notificationKind } from "./format.js";
import type { PageContext } from "./page.js";
import { createPager } from "./pager.js";
import { orderHref } from "./router.js";
import { badge, callout, loading, pageTitle, problemBox, type Tone } from "./ui.js";

const PAGE_SIZE = 20;

/** Each kind's colour: a new kind fails to compile until it has one. */
const TONES: Record<NotificationKind, Tone> = {
  [NotificationKind.UNSPECIFIED]: "comp",
  [NotificationKind.ORDER_CONFIRMED]: "ok",
  [NotificationKind.ORDER_CANCELLED]: "bad",
  [NotificationKind.PAYMENT_REFUNDED]: "comp",
};

function tone(k: NotificationKind): Tone {
  return TONES[k] ?? "comp";
}

function item(n: Notification): HTMLElement {
  return h(
    "li",
    { class: "note", "data-testid": "notification", "data-order-id": n.orderId },
    h(
      "div",
      { class: "note__head" },
      badge(notificationKind(n.kind), tone(n.kind)),
      h("time", { class: "muted small" }, dateTime(n.sentAt)),
    ),
    h("p", { class: "note__message" }, n.message),
    h(
      "a",
      { href: orderHref(n.orderId), class: "small" },
      "Open the order",
      // Every notification has this link: its name says which order it opens.
      h("span", { class: "visually-hidden" }, ` ${n.orderId}`),
    ),
  );
}

/** The notifications page. */
export function notificationsPage(ctx: PageContext): void {
  const list = h("div", { "data-testid": "notifications" }, loading("Loading notifications…"));
  const pager = createPager((token) => void load(token));

  async function load(pageToken: string) {
    replace(list, loading("Loading notifications…"));
    try {
      const res = await ctx.api.notifications.listNotifications(
        { pageSize: PAGE_SIZE, pageToken },
        { signal: ctx.signal },
      );
      pager.loaded(res.nextPageToken);
      replace(
        list,
        res.notifications.length === 0
          ? callout(
              "info",
              "Nothing yet",
              h("p", {}, "You are told here when an order is confirmed, cancelled or refunded."),
            )
          : h("ul", { class: "notes", "data-testid": "notifications-list" }, res.notifications.map(item)),
      );
    } catch (err) {
      if (!ctx.signal.aborted)
        replace(
          list,
          problemBox(describeError(err), () => void load(pageToken)),
        );
    }
  }

  replace(
    ctx.root,
    pageTitle("Notifications"),
    h("section", { class: "panel", "aria-label": "Notifications" }, list, pager.el),
  );
  void load(pager.current());
}
