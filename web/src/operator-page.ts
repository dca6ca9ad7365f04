/**
 * The operator panel (admin only): every service's health per instance, the
 * order service's circuit breaker for payment, refreshed every second;
 * restock; and, where the gateway enables fault injection, a service's
 * faults (latency, error rate, down) set on all its instances at once.
 */
import { Code } from "@connectrpc/connect";
import type { Downstream, Faults } from "../../gen/shopmesh/chaos/v1/chaos_pb.js";
import type { GetSystemStatusResponse, InstanceStatus } from "../../gen/shopmesh/gateway/v1/gateway_pb.js";
import type { Product } from "../../gen/shopmesh/inventory/v1/inventory_pb.js";
import { newKey } from "./cart.js";
import { h, replace, replaceIfChanged, uid } from "./dom.js";
import { describeError, hasCode, type Problem } from "./errors.js";
import { breaker, clock, duration } from "./format.js";
import type { PageContext } from "./page.js";
import { poll } from "./poll.js";
import { isOperator } from "./session.js";
import {
  badge,
  callout,
  freshnessNote,
  loading,
  markFields,
  pageTitle,
  panel,
  problemBox,
  type Tone,
  whileBusy,
} from "./ui.js";

/** How often the system status is read, in ms. */
const STATUS_POLL_MS = 1000;

/** Codes an operator may inject (numeric gRPC codes, as chaos.proto wants them). */
const ERROR_CODES = [
  { code: Code.Unavailable, label: "UNAVAILABLE" },
  { code: Code.DeadlineExceeded, label: "DEADLINE_EXCEEDED" },
  { code: Code.ResourceExhausted, label: "RESOURCE_EXHAUSTED" },
  { code: Code.Internal, label: "INTERNAL" },
] as const;

const BREAKER_TONE: Readonly<Record<ReturnType<typeof breaker>, Tone>> = {
  closed: "ok",
  open: "bad",
  "half-open": "warn",
  isolated: "bad",
  unknown: "muted",
};
/** Which state the summary shows when instances disagree: the worst. */
const BREAKER_RANK = ["unknown", "closed", "half-open", "open", "isolated"] as const;

/** Faults for people: "none", or "down · 200 ms latency · 30% UNAVAILABLE". */
export function faultsText(f: Faults | undefined): string {
  if (!f) return "none";
  const parts: string[] = [];
  if (f.down) parts.push("down");
  if (f.latencyMs > 0) parts.push(`${duration(f.latencyMs)} latency`);
  if (f.errorRate > 0) {
    const code =
      ERROR_CODES.find((c) => c.code === f.errorCode)?.label ?? (f.errorCode ? `code ${f.errorCode}` : "UNAVAILABLE");
    parts.push(`${Math.round(f.errorRate * 100)}% ${code}`);
  }
  return parts.length ? parts.join(" · ") : "none";
}

/** Shows why a form's call was refused in `message`, and marks the controls among `fields` it names invalid. */
function showRefusal(err: unknown, message: HTMLElement, fields: Readonly<Record<string, HTMLElement>>): void {
  const p = describeError(err);
  const box = problemBox(p);
  replace(message, box);
  markFields(fields, p.fields, box);
}

/** The "operators only" page. */
function operatorsOnly(ctx: PageContext): void {
  document.title = "Operators only · shopmesh";
  replace(
    ctx.root,
    h(
      "div",
      { class: "empty-page", "data-testid": "operators-only" },
      pageTitle("Operators only"),
      h(
        "p",
        { class: "lead" },
        `The operator panel needs the admin role; ${ctx.session.subject} is signed in as a customer.`,
      ),
      h(
        "p",
        { class: "muted" },
        "Sign out and sign in as the operator to see the services, restock and inject faults.",
      ),
      h("p", {}, h("a", { href: "#/", class: "button" }, "Back to the shop")),
    ),
  );
}

function downstreamLine(d: Downstream): HTMLElement {
  const b = breaker(d.breaker);
  return h(
    "li",
    { class: "downstream", "data-testid": `downstream-${d.name}` },
    h("span", {}, `→ ${d.name}`),
    badge(`breaker ${b}`, BREAKER_TONE[b], { "data-state": b }),
    h("span", { class: "muted small" }, `${d.inFlight} in flight, ${d.queued} queued`),
  );
}

function instanceBlock(i: InstanceStatus): HTMLElement {
  return h(
    "li",
    { class: "instance", "data-testid": "instance", "data-address": i.address },
    h(
      "div",
      { class: "instance__head" },
      h("code", { class: "wrap" }, i.address),
      i.serving ? badge("serving", "ok") : badge(i.detail ? `not serving: ${i.detail}` : "not serving", "bad"),
    ),
    h(
      "p",
      { class: "small" },
      "Faults: ",
      h(
        "span",
        { "data-testid": "faults", class: faultsText(i.faults) === "none" ? "" : "faulted" },
        faultsText(i.faults),
      ),
    ),
    i.downstreams.length ? h("ul", { class: "plain-list" }, i.downstreams.map(downstreamLine)) : null,
  );
}

/** The operator panel. */
export function operatorPage(ctx: PageContext): void {
  if (!isOperator(ctx.session)) {
    operatorsOnly(ctx);
    return;
  }
  const { api, signal } = ctx;
  let status: GetSystemStatusResponse | undefined;
  let statusProblem: Problem | undefined;
  let updatedAt = 0;
  let faultsShown: boolean | undefined;

  const breakerBox = h("div", { class: "breaker", "data-testid": "breaker-panel" }, loading("Reading the breaker…"));
  const servicesBox = h("div", { class: "services", "data-testid": "services" }, loading("Asking every service…"));
  const updated = freshnessNote({ class: "muted small", "data-testid": "status-updated" });
  const faultsBox = h(
    "div",
    { "data-testid": "faults-panel-body" },
    loading("Checking whether fault injection is on…"),
  );

  // Faults form.
  const serviceId = uid("svc");
  const latencyId = uid("latency");
  const rateId = uid("rate");
  const codeId = uid("code");
  const downId = uid("down");
  const serviceSelect = h("select", {
    id: serviceId,
    class: "input",
    "data-testid": "faults-service",
    onchange: () => fillFaults(),
  }); // its options: the services the first status names
  const latency = h("input", {
    id: latencyId,
    class: "input",
    type: "number",
    min: 0,
    max: 60000,
    step: 50,
    value: "0",
    "data-testid": "faults-latency",
  });
  const rate = h("input", {
    id: rateId,
    class: "input",
    type: "number",
    min: 0,
    max: 100,
    step: 5,
    value: "0",
    "data-testid": "faults-rate",
  });
  const codeSelect = h(
    "select",
    { id: codeId, class: "input", "data-testid": "faults-code" },
    ERROR_CODES.map((c) => h("option", { value: String(c.code) }, c.label)),
  );
  const down = h("input", { id: downId, type: "checkbox", "data-testid": "faults-down" });
  const faultsMessage = h("div", { "aria-live": "polite", "data-testid": "faults-message" });
  const applyButton = h(
    "button",
    { type: "submit", class: "button button--primary", "data-testid": "faults-apply" },
    "Apply faults",
  );
  const clearButton = h(
    "button",
    {
      type: "button",
      class: "button button--ghost",
      "data-testid": "faults-clear",
      onclick: () => void setFaults(true),
    },
    "Clear faults",
  );
  const faultsForm = h(
    "form",
    {
      class: "form-grid",
      "data-testid": "faults-form",
      onsubmit: (e: Event) => {
        e.preventDefault();
        void setFaults(false);
      },
    },
    h("div", { class: "field" }, h("label", { for: serviceId }, "Service"), serviceSelect),
    h("div", { class: "field" }, h("label", { for: latencyId }, "Latency (ms)"), latency),
    h("div", { class: "field" }, h("label", { for: rateId }, "Error rate (%)"), rate),
    h("div", { class: "field" }, h("label", { for: codeId }, "Error code"), codeSelect),
    h("div", { class: "field field--check" }, down, h("label", { for: downId }, "Down (every call fails UNAVAILABLE)")),
    h("div", { class: "field field--actions" }, applyButton, clearButton),
    faultsMessage,
  );

  /** Puts the chosen service's current faults into the form. */
  function fillFaults() {
    const f = status?.services.find((s) => s.service === serviceSelect.value)?.instances[0]?.faults;
    latency.value = String(f?.latencyMs ?? 0);
    rate.value = String(Math.round((f?.errorRate ?? 0) * 100));
    codeSelect.value = String(f?.errorCode || Code.Unavailable);
    down.checked = f?.down ?? false;
  }

  /** The faults form's controls by the request field each sends (a refusal names the field). */
  const faultFields = {
    service: serviceSelect,
    "faults.latency_ms": latency,
    "faults.error_rate": rate,
    "faults.error_code": codeSelect,
  };

  async function setFaults(clear: boolean) {
    const service = serviceSelect.value;
    const faults = clear
      ? {}
      : {
          latencyMs: Math.max(0, Math.min(60000, Math.round(Number(latency.value) || 0))),
          errorRate: Math.max(0, Math.min(100, Number(rate.value) || 0)) / 100,
          errorCode: Number(codeSelect.value),
          down: down.checked,
        };
    await whileBusy([applyButton, clearButton], async () => {
      try {
        const res = await api.operator.setServiceFaults({ service, faults }, { signal });
        markFields(faultFields, [], undefined);
        replace(
          faultsMessage,
          callout(
            "ok",
            `${service}: ${faultsText(res.faults)}`,
            h("p", { class: "small" }, `Set on ${res.instances} ${res.instances === 1 ? "instance" : "instances"}.`),
          ),
        );
        if (clear) {
          latency.value = "0";
          rate.value = "0";
          down.checked = false;
        }
        await refresh();
      } catch (err) {
        if (signal.aborted) return;
        showRefusal(err, faultsMessage, faultFields);
      }
    });
  }

  // Restock form.
  const productId = uid("product");
  const qtyId = uid("restock-qty");
  const productSelect = h(
    "select",
    { id: productId, class: "input", "data-testid": "restock-product" },
    h("option", { value: "" }, "Loading…"),
  );
  const restockQty = h("input", {
    id: qtyId,
    class: "input",
    type: "number",
    min: 1,
    max: 1000000,
    value: "10",
    required: true,
    "data-testid": "restock-quantity",
  });
  const restockButton = h(
    "button",
    { type: "submit", class: "button button--primary", "data-testid": "restock-submit" },
    "Restock",
  );
  const restockMessage = h("div", { "aria-live": "polite", "data-testid": "restock-message" });
  const restockForm = h(
    "form",
    {
      class: "form-grid form-grid--restock",
      "data-testid": "restock-form",
      onsubmit: (e: Event) => {
        e.preventDefault();
        void restock();
      },
    },
    h("div", { class: "field" }, h("label", { for: productId }, "Product"), productSelect),
    h("div", { class: "field" }, h("label", { for: qtyId }, "Units to add"), restockQty),
    h("div", { class: "field field--actions" }, restockButton),
    restockMessage,
  );

  async function loadProducts() {
    try {
      const res = await api.inventory.listProducts({ pageSize: 100 }, { signal });
      replace(
        productSelect,
        res.products.map((p: Product) => h("option", { value: p.id }, `${p.name} (${p.available} available)`)),
      );
    } catch (err) {
      if (!signal.aborted)
        replace(
          restockMessage,
          problemBox(describeError(err), () => void loadProducts()),
        );
    }
  }

  // The restock last sent and not answered: sent again (the same product and quantity), it keeps its key, so
  // one whose answer was lost (a dropped connection, a timeout) is applied once, not again by the retry.
  let unanswered: { what: string; key: string } | undefined;
  async function restock() {
    const quantity = Math.round(Number(restockQty.value));
    if (!productSelect.value || !(quantity >= 1)) return;
    const what = `${productSelect.value} ${quantity}`;
    const idempotencyKey = unanswered?.what === what ? unanswered.key : newKey();
    unanswered = { what, key: idempotencyKey };
    const fields = { product_id: productSelect, quantity: restockQty };
    await whileBusy([restockButton], async () => {
      try {
        const res = await api.inventory.restock(
          { idempotencyKey, productId: productSelect.value, quantity },
          { signal },
        );
        unanswered = undefined;
        markFields(fields, [], undefined);
        const p = res.product;
        replace(
          restockMessage,
          callout(
            "ok",
            `Restocked ${p?.name ?? productSelect.value}`,
            h("p", {}, `${p?.available ?? "?"} now available.`),
          ),
        );
        await loadProducts();
        if (p) productSelect.value = p.id;
      } catch (err) {
        if (signal.aborted) return;
        showRefusal(err, restockMessage, fields);
      }
    });
  }

  function drawStatus() {
    updated.show(
      statusProblem ? badge(`Not refreshed: ${statusProblem.title}`, "warn") : badge("Live", "ok"),
      updatedAt ? ` updated ${clock(updatedAt)}, every ${STATUS_POLL_MS / 1000} s` : "",
    );
    if (!status) {
      if (statusProblem) replaceIfChanged(servicesBox, problemBox(statusProblem));
      return;
    }
    // The order service's breaker for payment, per order instance and at a glance.
    const order = status.services.find((s) => s.service === "order");
    const perInstance = (order?.instances ?? []).map((i) => ({
      address: i.address,
      state: breaker(i.downstreams.find((d) => d.name === "payment")?.breaker),
    }));
    const worst = perInstance.reduce<ReturnType<typeof breaker>>(
      (w, i) => (BREAKER_RANK.indexOf(i.state) > BREAKER_RANK.indexOf(w) ? i.state : w),
      "unknown",
    );
    replace(
      breakerBox,
      h(
        "div",
        { class: `breaker__state breaker__state--${worst}`, "data-testid": "breaker-payment", "data-state": worst },
        h("span", { class: "breaker__label" }, "Order → payment"),
        h(
          "strong",
          { class: "breaker__value" },
          worst === "half-open" ? "Half-open" : worst.charAt(0).toUpperCase() + worst.slice(1),
        ),
      ),
      h(
        "p",
        { class: "small muted" },
        worst === "open"
          ? "Calls to payment fail fast; a probe is let through after a pause."
          : worst === "half-open"
            ? "One probe call decides whether the breaker closes or opens again."
            : worst === "closed"
              ? "Calls to payment flow."
              : "No order instance answered.",
      ),
      perInstance.length > 1
        ? h(
            "ul",
            { class: "plain-list small" },
            perInstance.map((i) => h("li", {}, h("code", {}, i.address), " ", badge(i.state, BREAKER_TONE[i.state]))),
          )
        : null,
    );
    replace(
      servicesBox,
      status.services.map((s) =>
        h(
          "article",
          { class: "service", "data-testid": `service-${s.service}`, "data-serving": String(s.serving) },
          h(
            "div",
            { class: "service__head" },
            h("h3", {}, s.service),
            s.instances.some((i) => i.faults?.down)
              ? badge("down (injected)", "bad")
              : s.serving
                ? badge("serving", "ok")
                : badge("not serving", "bad"),
          ),
          s.instances.length
            ? h("ul", { class: "instances" }, s.instances.map(instanceBlock))
            : h("p", { class: "muted small" }, "No instance known."),
        ),
      ),
    );
    if (faultsShown !== status.faultsEnabled) {
      faultsShown = status.faultsEnabled;
      if (status.faultsEnabled) {
        const options = status.services.map(({ service: s }) =>
          h("option", { value: s, selected: s === "payment" }, s),
        );
        replace(serviceSelect, ...options);
        replace(faultsBox, faultsForm);
        fillFaults();
      } else {
        replace(
          faultsBox,
          callout(
            "info",
            "Fault injection is off on this gateway",
            h(
              "p",
              {},
              "It is on where the gateway runs with ",
              h("code", {}, "FAULT_INJECTION=true"),
              " (",
              h("code", {}, "make run"),
              ", the kind fault overlay).",
            ),
          ),
        );
      }
    }
  }

  async function refresh() {
    try {
      status = await api.operator.getSystemStatus({}, { signal });
      statusProblem = undefined;
      updatedAt = Date.now();
    } catch (err) {
      if (signal.aborted) return;
      if (hasCode(err, Code.PermissionDenied)) {
        stopPolling.abort();
        operatorsOnly(ctx);
        return;
      }
      statusProblem = describeError(err);
    }
    drawStatus();
  }

  replace(
    ctx.root,
    pageTitle("Operator", updated.el),
    h(
      "div",
      { class: "operator" },
      h(
        "div",
        { class: "operator__column" },
        panel("Circuit breaker", { "data-testid": "breaker-section" }, breakerBox),
        panel("Restock", { "data-testid": "restock-section" }, restockForm),
      ),
      h("div", { class: "operator__column" }, panel("Faults", { "data-testid": "faults-section" }, faultsBox)),
      panel("Services", { "data-testid": "services-section", class: "panel operator__services" }, servicesBox),
    ),
  );
  void loadProducts();
  const stopPolling = new AbortController();
  poll(STATUS_POLL_MS, AbortSignal.any([signal, stopPolling.signal]), refresh);
}
