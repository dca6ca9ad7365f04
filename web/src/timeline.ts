/**
 * The saga timeline on the page: one row per step, updated in place as
 * WatchOrder reports changes (so a screen reader announces only what
 * changed), compensations marked and set apart from the forward steps.
 */
import { StepStatus } from "../../gen/shopmesh/order/v1/order_pb.js";
import { h, replace } from "./dom.js";
import { clock, epochMs } from "./format.js";
import type { StepRow, StepState } from "./saga-view.js";
import { badge, type Tone } from "./ui.js";

const STATE: Readonly<Record<StepState, { label: string; tone: Tone; icon: string }>> = {
  waiting: { label: "Waiting", tone: "muted", icon: "○" },
  running: { label: "Running", tone: "busy", icon: "…" },
  retrying: { label: "Retrying", tone: "warn", icon: "↻" },
  succeeded: { label: "Succeeded", tone: "ok", icon: "✓" },
  failed: { label: "Failed", tone: "bad", icon: "✕" },
  compensated: { label: "Compensated", tone: "comp", icon: "↺" },
};

const ENTRY: Readonly<Record<number, string>> = {
  [StepStatus.STARTED]: "started",
  [StepStatus.SUCCEEDED]: "succeeded",
  [StepStatus.FAILED]: "failed",
  [StepStatus.COMPENSATED]: "compensated",
};

interface RowView {
  readonly li: HTMLLIElement;
  update(row: StepRow): void;
}

function rowView(name: string): RowView {
  const icon = h("span", { class: "step__icon", "aria-hidden": "true" });
  const label = h("span", { class: "step__name" });
  const state = h("span", { class: "step__state" });
  const kind = h("span", { class: "step__kind" });
  const attempts = h("span", { class: "step__attempts", "data-testid": "attempts" });
  const at = h("time", { class: "step__at" });
  const purpose = h("p", { class: "step__purpose" });
  const detail = h("p", { class: "step__detail", "data-testid": "step-detail" });
  const undone = h("p", { class: "step__undone" });
  const log = h("ol", { class: "step__log" });
  const summary = h("summary", {});
  const entries = h("details", { class: "step__entries" }, summary, log);
  const li = h(
    "li",
    { class: "step", "data-testid": `step-${name}` },
    icon,
    h(
      "div",
      { class: "step__body" },
      h("div", { class: "step__head" }, label, state, kind, attempts, at),
      purpose,
      detail,
      undone,
      entries,
    ),
  );
  let shown = "";
  return {
    li,
    update(row) {
      // Inside a live region every rewritten node is announced again, unchanged or not: a row is
      // redrawn only when something in it changed (the details poll delivers the same order again).
      const key = [
        row.state,
        row.label,
        row.compensation,
        row.attempts,
        row.detail,
        row.undoneBy,
        ...row.entries.map((e) => `${e.status} ${e.attempt} ${epochMs(e.at)} ${e.detail}`),
      ].join("\n");
      if (key === shown) return;
      shown = key;
      const s = STATE[row.state];
      li.className = `step step--${row.state}${row.compensation ? " step--compensation" : ""}${row.undoneBy ? " step--undone" : ""}`;
      li.dataset.status = row.state;
      li.dataset.attempts = String(row.attempts);
      icon.textContent = s.icon;
      label.textContent = row.label;
      replace(state, badge(s.label, s.tone));
      replace(kind, row.compensation && row.state !== "compensated" ? badge("Compensation", "comp") : null);
      attempts.textContent = row.attempts > 1 ? `${row.attempts} attempts` : row.attempts === 1 ? "1 attempt" : "";
      at.textContent = row.at ? clock(row.at) : "";
      purpose.textContent = row.purpose;
      detail.textContent = row.detail;
      detail.hidden = row.detail === "";
      undone.textContent = row.undoneBy ? `Undone by ${row.undoneBy.toLowerCase()}` : "";
      undone.hidden = !row.undoneBy;
      entries.hidden = row.entries.length === 0;
      // Each row's disclosure says whose log it opens, not only how long it is.
      replace(
        summary,
        h("span", { class: "visually-hidden" }, `${row.label}: `),
        `${row.entries.length} log ${row.entries.length === 1 ? "entry" : "entries"}`,
      );
      replace(
        log,
        row.entries.map((e) =>
          h(
            "li",
            {},
            h("time", {}, clock(e.at)),
            ` attempt ${e.attempt} · ${ENTRY[e.status] ?? "unknown"}`,
            e.detail ? ` · ${e.detail}` : "",
          ),
        ),
      );
    },
  };
}

/** The timeline element and its update function. */
export function createTimeline(): { el: HTMLElement; update(rows: readonly StepRow[]): void } {
  const list = h("ol", {
    class: "timeline",
    "data-testid": "timeline",
    "aria-live": "polite",
    "aria-relevant": "additions text",
    "aria-label": "Saga steps",
  });
  const views = new Map<string, RowView>();
  const divider = h(
    "li",
    { class: "timeline__divider", "data-testid": "compensation-divider" },
    "Compensation: what may have happened is undone, stock first",
  );
  return {
    el: list,
    update(rows) {
      const wanted: HTMLLIElement[] = [];
      let dividerPlaced = false;
      for (const row of rows) {
        if (row.compensation && !dividerPlaced) {
          wanted.push(divider);
          dividerPlaced = true;
        }
        let v = views.get(row.name);
        if (!v) {
          v = rowView(row.name);
          views.set(row.name, v);
        }
        v.update(row);
        wanted.push(v.li);
      }
      // Rows that stay in place are left alone (a live region then announces only what is new).
      const current = [...list.children];
      if (current.every((c, i) => c === wanted[i])) list.append(...wanted.slice(current.length));
      else list.replaceChildren(...wanted);
    },
  };
}
