/**
 * The order page's side panels: the composed details (GetOrderDetails: the
 * order with its payment, the products' current stock and the
 * notifications, with the parts that could not be fetched called out) and
 * the history read model's entry with its lag.
 */
import type { GetOrderDetailsResponse } from "../../gen/shopmesh/gateway/v1/gateway_pb.js";
import type { OrderHistoryEntry } from "../../gen/shopmesh/history/v1/history_pb.js";
import type { Order } from "../../gen/shopmesh/order/v1/order_pb.js";
import { PaymentStatus } from "../../gen/shopmesh/payment/v1/payment_pb.js";
import { type Child, h } from "./dom.js";
import type { Problem } from "./errors.js";
import { clock, dateTime, duration, money, notificationKind, orderStatus, paymentStatus } from "./format.js";
import { readModelState } from "./read-model.js";
import { badge, loading, problemBox } from "./ui.js";

const PARTS: Readonly<Record<string, string>> = {
  payment: "Payment",
  products: "Products and stock",
  notifications: "Notifications",
};

/** A definition list from label/value pairs. */
function facts(pairs: readonly (readonly [string, Child])[], attrs: Record<string, string> = {}): HTMLElement {
  return h(
    "dl",
    { class: "facts", ...attrs },
    pairs.map(([k, v]) => h("div", { class: "facts__row" }, h("dt", {}, k), h("dd", {}, v))),
  );
}

/** The composed details' content. */
export function detailsContent(d: GetOrderDetailsResponse | undefined, problem: Problem | undefined): Child[] {
  if (!d) return [problem ? problemBox(problem) : loading("Fetching the details…")];
  const missing = new Map(d.missing.map((m) => [m.part, m.code]));
  const out: Child[] = [];
  if (problem) out.push(badge(`Not refreshed: ${problem.title}`, "warn"));
  if (d.missing.length > 0) {
    out.push(
      h(
        "div",
        { class: "callout callout--warn", role: "status", "data-testid": "details-missing" },
        h("strong", { class: "callout__title" }, "Some parts could not be fetched"),
        h(
          "ul",
          {},
          d.missing.map((m) => h("li", { "data-part": m.part }, `${PARTS[m.part] ?? m.part}: ${m.code}`)),
        ),
        h("p", { class: "small" }, "The gateway answers with what it has; the rest is retried on the next refresh."),
      ),
    );
  }
  const p = d.payment;
  out.push(
    h("h3", { class: "subhead" }, "Payment"),
    missing.has("payment")
      ? h("p", { class: "missing", "data-testid": "payment-missing" }, `Unavailable (${missing.get("payment")})`)
      : p
        ? facts(
            [
              [
                "Status",
                badge(
                  paymentStatus(p.status),
                  p.status === PaymentStatus.CAPTURED ? "ok" : p.status === PaymentStatus.REFUNDED ? "comp" : "bad",
                ),
              ],
              ["Amount", money(p.amount)],
              ...(p.declineReason ? [["Reason", p.declineReason] as const] : []),
              ["Payment", h("code", {}, p.id)],
            ],
            { "data-testid": "payment" },
          )
        : h("p", { class: "muted" }, "No charge was made."),
    h("h3", { class: "subhead" }, "Products"),
    missing.has("products")
      ? h("p", { class: "missing" }, `Unavailable (${missing.get("products")})`)
      : h(
          "ul",
          { class: "plain-list", "data-testid": "details-products" },
          d.products.map((pr) =>
            h(
              "li",
              {},
              h("strong", {}, pr.name),
              ` · ${money(pr.unitPrice)} · now ${pr.available} available, ${pr.reserved} reserved`,
            ),
          ),
        ),
    h("h3", { class: "subhead" }, "Notifications"),
    missing.has("notifications")
      ? h("p", { class: "missing" }, `Unavailable (${missing.get("notifications")})`)
      : d.notifications.length === 0
        ? h("p", { class: "muted" }, "None sent yet.")
        : h(
            "ul",
            { class: "plain-list", "data-testid": "details-notifications" },
            d.notifications.map((n) =>
              h(
                "li",
                {},
                badge(notificationKind(n.kind), "info"),
                " ",
                n.message,
                " ",
                h("time", { class: "muted small" }, dateTime(n.sentAt)),
              ),
            ),
          ),
  );
  return out;
}

/** What the page knows about the read model's entry. */
export interface HistoryView {
  readonly entry: OrderHistoryEntry | undefined;
  readonly problem: Problem | undefined;
  /** Whether the page has looked at least once. */
  readonly checked: boolean;
  /** Whether the entry, if there is one, is older than the newest entries the page reads (the order changed before them). */
  readonly beyond: boolean;
}

/** The read model panel's content. */
export function historyContent(order: Order | undefined, v: HistoryView): Child[] {
  if (!order || !v.checked) return [v.problem ? problemBox(v.problem) : loading("Reading the history…")];
  const rm = readModelState(order, v.entry);
  const out: Child[] = [];
  if (v.problem) out.push(badge(`Not refreshed: ${v.problem.title}`, "warn"));
  if (!v.entry && v.beyond) {
    out.push(
      h(
        "p",
        {},
        badge("Older than the entries shown", "muted", { "data-testid": "history-state", "data-state": "beyond" }),
      ),
      h(
        "p",
        { class: "muted small" },
        "The page reads the newest 500 entries of your history, and this order changed before all of them.",
      ),
    );
    return out;
  }
  const pill =
    rm.state === "in-step"
      ? badge("In step with the order", "ok", { "data-testid": "history-state", "data-state": rm.state })
      : rm.state === "behind"
        ? badge("Catching up", "warn", { "data-testid": "history-state", "data-state": rm.state })
        : badge("Not in the read model yet", "muted", { "data-testid": "history-state", "data-state": rm.state });
  out.push(h("p", {}, pill));
  const e = v.entry;
  if (!e) {
    out.push(
      h(
        "p",
        { class: "muted small" },
        "The history service builds its view from events only; the entry appears within moments.",
      ),
    );
    return out;
  }
  out.push(
    facts(
      [
        ["Status there", orderStatus(e.status).label],
        ["Payment there", paymentStatus(e.paymentStatus)],
        ...(e.reason ? [["Reason there", e.reason] as const] : []),
        ["Last event", h("code", { class: "wrap" }, e.lastEventType.replace(/^shopmesh\./, ""))],
        ["Event time", clock(e.lastEventAt)],
        ["Order changed", clock(order.updatedAt)],
        [
          "Lag",
          h(
            "span",
            { "data-testid": "history-lag" },
            rm.state === "in-step" || rm.lagMs === undefined
              ? "none: caught up"
              : `${duration(rm.lagMs)} behind the order`,
          ),
        ],
      ],
      { "data-testid": "history-entry" },
    ),
  );
  return out;
}
