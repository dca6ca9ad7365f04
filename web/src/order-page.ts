/**
 * One order: its saga as a live timeline from WatchOrder (server streaming
 * over the Connect protocol, reconnecting after a dropped stream), the
 * composed details beside it, and the history read model's entry with its
 * lag. Another customer's order, or one that does not exist, reads as "not
 * found" — the services answer NOT_FOUND for both, on purpose.
 */
import { Code } from "@connectrpc/connect";
import type { GetOrderDetailsResponse } from "../../gen/shopmesh/gateway/v1/gateway_pb.js";
import type { OrderHistoryEntry } from "../../gen/shopmesh/history/v1/history_pb.js";
import { type Order, OrderStatus } from "../../gen/shopmesh/order/v1/order_pb.js";
import { h, replace, replaceIfChanged } from "./dom.js";
import { describeError, hasCode, type Problem } from "./errors.js";
import { dateTime, epochMs, isFinal, money, orderStatus, sagaMode } from "./format.js";
import { detailsContent, type HistoryView, historyContent } from "./order-panels.js";
import type { PageContext } from "./page.js";
import { poll, sleep } from "./poll.js";
import { cancelRequested, omittedNote, refundPending, sagaRows } from "./saga-view.js";
import { createTimeline } from "./timeline.js";
import { badge, loading, pageTitle, panel, problemBox, whileBusy } from "./ui.js";

/** How often the details and the read model are read again while something may still change, in ms. */
const SIDE_POLL_MS = 1500;
/** How long after the order settles the side panels keep refreshing (late events, notifications), in ms. */
const SETTLE_GRACE_MS = 8000;

/** Nothing more will happen to the order: terminal, with no refund pending. */
function settled(o: Order): boolean {
  return isFinal(o.status) && !refundPending(o);
}

/** Whether `next` is at least as new as `prev` (the stream and the details poll both deliver orders). */
function newer(prev: Order | undefined, next: Order): boolean {
  if (!prev) return true;
  const a = epochMs(prev.updatedAt) ?? 0;
  const b = epochMs(next.updatedAt) ?? 0;
  return b > a || (b === a && next.steps.length >= prev.steps.length);
}

/** How many pages of 100 history entries the page reads to find an order's. */
const HISTORY_PAGES = 5;

/**
 * Finds the order's read-model entry (entries are newest-changed first, so a live order's is near the
 * top); `beyond` when the newest {@link HISTORY_PAGES} pages do not hold it, more are left, and the order
 * (last changed at `changedAt`) changed before the oldest of them: else its entry is one the read model
 * has not written yet (its events are on their way), and will be among them.
 */
async function findHistory(
  ctx: PageContext,
  orderId: string,
  changedAt: number | undefined,
): Promise<{ entry: OrderHistoryEntry | undefined; beyond: boolean }> {
  let pageToken = "";
  let oldest: number | undefined;
  for (let i = 0; i < HISTORY_PAGES; i++) {
    const res = await ctx.api.history.listOrderHistory({ pageSize: 100, pageToken }, { signal: ctx.signal });
    const hit = res.entries.find((e) => e.orderId === orderId);
    if (hit) return { entry: hit, beyond: false };
    oldest = epochMs(res.entries.at(-1)?.lastEventAt) ?? oldest;
    pageToken = res.nextPageToken;
    if (!pageToken) return { entry: undefined, beyond: false };
  }
  return { entry: undefined, beyond: changedAt !== undefined && oldest !== undefined && changedAt < oldest };
}

/** The "order not found" page. */
function notFound(ctx: PageContext, id: string): void {
  document.title = "Order not found · shopmesh";
  replace(
    ctx.root,
    h(
      "div",
      { class: "empty-page", "data-testid": "order-not-found" },
      pageTitle("Order not found"),
      h("p", { class: "lead" }, "There is no order ", h("code", { class: "wrap" }, id), " among your orders."),
      h(
        "p",
        { class: "muted" },
        "Orders can only be seen by the customer who placed them. Check the link, or find the order in your list.",
      ),
      h(
        "p",
        {},
        h("a", { href: "#/orders", class: "button" }, "My orders"),
        " ",
        h("a", { href: "#/", class: "button button--ghost" }, "Back to the shop"),
      ),
    ),
  );
}

/** The order page for order `id`. */
export function orderPage(ctx: PageContext, id: string): void {
  const { api, signal } = ctx;
  let order: Order | undefined;
  let settledAt: number | undefined;
  let details: GetOrderDetailsResponse | undefined;
  let detailsProblem: Problem | undefined;
  let history: HistoryView = { entry: undefined, problem: undefined, checked: false, beyond: false };
  let gone = false;

  // The order's status, said politely when it changes (the timeline says each step).
  const statusBox = h("div", { class: "order-status", "aria-live": "polite", "data-testid": "order-status-box" });
  const live = h("span", { class: "live", "data-testid": "live", role: "status" });
  const summary = h("div", { "data-testid": "order-summary", tabindex: "-1" }, loading("Loading the order…"));
  const timeline = createTimeline();
  const detailsBox = h("div", { "data-testid": "details" });
  const historyBox = h("div", { "data-testid": "history" });
  const streamProblem = h("div", {});
  const omitted = h("p", { class: "muted small", "data-testid": "steps-omitted", hidden: true });
  const cancelButton = h(
    "button",
    {
      type: "button",
      class: "button button--ghost",
      "data-testid": "cancel-order",
      hidden: true,
      onclick: () => void cancel(),
    },
    "Cancel order",
  );
  const cancelMessage = h("div", { "aria-live": "polite" });

  replace(
    ctx.root,
    pageTitle("Order", h("code", { class: "order-id wrap", "data-testid": "order-id" }, id), statusBox, live),
    h(
      "div",
      { class: "order-layout" },
      h(
        "div",
        { class: "order-main" },
        panel(
          "Summary",
          { "data-testid": "summary-panel" },
          summary,
          h("div", { class: "row" }, cancelButton),
          cancelMessage,
        ),
        panel("Saga", { "data-testid": "saga-panel" }, streamProblem, omitted, timeline.el),
      ),
      h(
        "div",
        { class: "order-side" },
        panel(
          "Details",
          { "data-testid": "details-panel" },
          h(
            "p",
            { class: "muted small" },
            "Composed by the gateway from order, payment, inventory and notification in one call.",
          ),
          detailsBox,
        ),
        panel(
          "History read model",
          { "data-testid": "history-panel" },
          h("p", { class: "muted small" }, "The order as the history service sees it, built from events alone (CQRS)."),
          historyBox,
        ),
      ),
    ),
  );

  function setLive(state: "connecting" | "live" | "reconnecting" | "final") {
    // Set again on every message: a status region rewritten is announced again, so only a change is.
    if (live.dataset.state === state) return;
    live.dataset.state = state;
    const text = { connecting: "Connecting…", live: "Live", reconnecting: "Reconnecting…", final: "Final" }[state];
    replace(live, badge(text, state === "live" ? "ok" : state === "final" ? "muted" : "warn"));
  }

  function accept(o: Order) {
    if (!newer(order, o)) return;
    order = o;
    if (settled(o) && settledAt === undefined) settledAt = Date.now();
    drawOrder();
  }

  function drawOrder() {
    if (!order) return;
    const s = orderStatus(order.status);
    if (statusBox.firstElementChild?.getAttribute("data-status") !== OrderStatus[order.status])
      replace(
        statusBox,
        badge(s.label, s.tone, { "data-testid": "order-status", "data-status": OrderStatus[order.status] }),
      );
    document.title = `Order ${s.label.toLowerCase()} · shopmesh`;
    replaceIfChanged(
      summary,
      refundPending(order)
        ? h(
            "div",
            { class: "callout callout--warn", role: "status", "data-testid": "refund-pending" },
            h("strong", { class: "callout__title" }, "Refund pending"),
            h(
              "p",
              {},
              "Payment has yet to give the money back, or to confirm that none was taken: it is out of reach, or (an order cancelled before it answered) has not handled the cancel yet. This clears when it has.",
            ),
          )
        : null,
      cancelRequested(order)
        ? h(
            "div",
            { class: "callout callout--warn", role: "status", "data-testid": "cancel-requested" },
            h("strong", { class: "callout__title" }, "Cancel requested"),
            h("p", {}, "The saga takes the request at its next step, then undoes what it did."),
          )
        : null,
      order.statusReason
        ? h(
            "div",
            { class: `callout callout--${order.status === OrderStatus.CONFIRMED ? "ok" : "bad"}` },
            h(
              "strong",
              { class: "callout__title" },
              order.status === OrderStatus.CANCELLED ? "Why it was cancelled" : "Why it is being undone",
            ),
            h("p", { "data-testid": "order-reason" }, order.statusReason),
          )
        : null,
      h(
        "dl",
        { class: "facts" },
        h(
          "div",
          { class: "facts__row" },
          h("dt", {}, "Saga"),
          h("dd", { "data-testid": "order-mode" }, sagaMode(order.sagaMode)),
        ),
        h("div", { class: "facts__row" }, h("dt", {}, "Total"), h("dd", {}, money(order.total))),
        h("div", { class: "facts__row" }, h("dt", {}, "Placed"), h("dd", {}, dateTime(order.createdAt))),
        h(
          "div",
          { class: "facts__row" },
          h("dt", {}, "Items"),
          h("dd", {}, order.items.map((i) => `${i.quantity} × ${i.productId}`).join(", ")),
        ),
      ),
    );
    const hideCancel = order.status !== OrderStatus.PENDING || cancelRequested(order);
    // A hidden button drops the focus to the top of the page: it goes to the summary that says what happened.
    if (hideCancel && document.activeElement === cancelButton) summary.focus();
    cancelButton.hidden = hideCancel;
    omitted.textContent = omittedNote(order);
    omitted.hidden = omitted.textContent === "";
    timeline.update(sagaRows(order));
    drawHistory();
  }

  function drawDetails() {
    replaceIfChanged(detailsBox, ...detailsContent(details, detailsProblem));
  }

  function drawHistory() {
    replaceIfChanged(historyBox, ...historyContent(order, history));
  }

  /** Whether `err` ends the page: no such order (or an id the services refuse, so none), said once. */
  function fail(err: unknown): boolean {
    if (hasCode(err, Code.NotFound) || hasCode(err, Code.InvalidArgument)) {
      gone = true;
      notFound(ctx, id);
      return true;
    }
    return false;
  }

  async function cancel() {
    await whileBusy(
      [cancelButton],
      async () => {
        try {
          const res = await api.orders.cancelOrder({ orderId: id, reason: "cancelled in the web shop" }, { signal });
          if (res.order) accept(res.order);
          replace(cancelMessage);
        } catch (err) {
          if (!signal.aborted) replace(cancelMessage, problemBox(describeError(err)));
        }
      },
      summary,
    );
  }

  async function watch() {
    let backoff = 500;
    setLive("connecting");
    while (!signal.aborted && !gone) {
      let received = false;
      try {
        // No deadline: the stream waits for the order's next change, however long that takes.
        for await (const msg of api.orders.watchOrder({ orderId: id }, { signal, timeoutMs: 0 })) {
          received = true;
          if (msg.order) accept(msg.order);
          setLive("live");
          replace(streamProblem);
          backoff = 500;
        }
        if (order && settled(order)) {
          setLive("final");
          return;
        }
      } catch (err) {
        if (signal.aborted || fail(err)) return;
        const p = describeError(err);
        if (!p.retryable) {
          replace(streamProblem, problemBox(p));
          return;
        }
        // A stream that was live and dropped (the gateway ends one quiet for HTTP_STREAM_IDLE_TIMEOUT_MS, as
        // may a proxy) is reopened before anything is said: the problem shows when reopening fails.
        if (!received)
          replaceIfChanged(
            streamProblem,
            problemBox({ ...p, detail: `${p.detail} The timeline reconnects by itself.` }),
          );
      }
      setLive("reconnecting");
      await sleep(backoff, signal);
      backoff = Math.min(backoff * 2, 5000);
    }
  }

  /** Details and read model, while anything may still change. */
  async function refreshSide() {
    if (gone) return;
    const quiet = settledAt !== undefined && Date.now() - settledAt > SETTLE_GRACE_MS;
    // An entry older than the pages the page reads will not come nearer: no use reading them again.
    const historyDone = history.checked && order && (history.entry?.status === order.status || history.beyond);
    if (quiet && details && historyDone) return;
    const [d, e] = await Promise.allSettled([
      api.gateway.getOrderDetails({ orderId: id }, { signal }),
      findHistory(ctx, id, order ? epochMs(order.updatedAt) : undefined),
    ]);
    if (signal.aborted) return;
    if (d.status === "fulfilled") {
      details = d.value;
      detailsProblem = undefined;
      if (d.value.order) accept(d.value.order);
    } else {
      if (fail(d.reason)) return;
      detailsProblem = describeError(d.reason);
    }
    if (e.status === "fulfilled") {
      history = { ...e.value, problem: undefined, checked: true };
    } else {
      history = { ...history, problem: describeError(e.reason), checked: true };
    }
    drawDetails();
    drawHistory();
  }

  drawDetails();
  drawHistory();
  void watch();
  poll(SIDE_POLL_MS, signal, refreshSide);
}
