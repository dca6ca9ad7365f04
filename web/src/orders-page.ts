/** My orders: ListOrders, newest first, a page at a time, each linking to its order page. */
import type { Order } from "../../gen/shopmesh/order/v1/order_pb.js";
import { h, replace } from "./dom.js";
import { describeError } from "./errors.js";
import { dateTime, money, orderStatus, sagaMode } from "./format.js";
import type { PageContext } from "./page.js";
import { createPager } from "./pager.js";
import { orderHref } from "./router.js";
import { badge, callout, loading, pageTitle, problemBox } from "./ui.js";

/** Orders per page. */
const PAGE_SIZE = 10;

function row(o: Order): HTMLElement {
  const s = orderStatus(o.status);
  return h(
    "li",
    { class: "order-row", "data-testid": "order-row", "data-order-id": o.id },
    h("a", { href: orderHref(o.id), class: "order-row__link" }, h("code", { class: "wrap" }, o.id)),
    badge(s.label, s.tone),
    h("span", { class: "order-row__total" }, money(o.total)),
    h(
      "span",
      { class: "muted small" },
      `${dateTime(o.createdAt)} · ${sagaMode(o.sagaMode)} · ${o.items.reduce((n, i) => n + i.quantity, 0)} items`,
    ),
    o.statusReason ? h("span", { class: "order-row__reason small" }, o.statusReason) : null,
  );
}

/** The orders page. */
export function ordersPage(ctx: PageContext): void {
  const list = h("div", { "data-testid": "orders" }, loading("Loading your orders…"));
  const pager = createPager((token) => void load(token));

  async function load(pageToken: string) {
    replace(list, loading("Loading your orders…"));
    try {
      const res = await ctx.api.orders.listOrders({ pageSize: PAGE_SIZE, pageToken }, { signal: ctx.signal });
      pager.loaded(res.nextPageToken);
      replace(
        list,
        res.orders.length === 0
          ? callout(
              "info",
              "No orders yet",
              h("p", {}, "Orders you place in the ", h("a", { href: "#/" }, "shop"), " appear here."),
            )
          : h("ul", { class: "order-rows", "data-testid": "orders-list" }, res.orders.map(row)),
      );
    } catch (err) {
      if (!ctx.signal.aborted)
        replace(
          list,
          problemBox(describeError(err), () => void load(pageToken)),
        );
    }
  }

  replace(ctx.root, pageTitle("My orders"), h("section", { class: "panel", "aria-label": "Orders" }, list, pager.el));
  void load(pager.current());
}
