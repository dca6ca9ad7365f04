/**
 * The page's recurring pieces: status badges, loading and error states,
 * empty states and panels, each with an accessible name and a stable
 * data-testid.
 */
import { type Child, h, replace, uid } from "./dom.js";
import type { Problem } from "./errors.js";

/** A tone every badge and callout uses. */
export type Tone = "ok" | "bad" | "busy" | "warn" | "info" | "muted" | "comp";

/** A small status pill. */
export function badge(text: string, tone: Tone, attrs: Record<string, string> = {}): HTMLElement {
  return h("span", { class: `badge badge--${tone}`, ...attrs }, text);
}

/** A polite loading state. */
export function loading(what: string): HTMLElement {
  return h("p", { class: "loading", role: "status", "data-testid": "loading" }, h("span", { class: "spinner" }), what);
}

/** An error state saying what happened and when to retry; `retry` adds a button. */
export function problemBox(p: Problem, retry?: () => void): HTMLElement {
  return h(
    "div",
    { class: "callout callout--bad", role: "alert", "data-testid": "error", "data-code": p.code ?? "" },
    h("strong", { class: "callout__title" }, p.title),
    h("p", {}, p.detail),
    retry && p.retryable
      ? h("button", { type: "button", class: "button button--ghost", onclick: retry }, "Try again")
      : null,
  );
}

/** A callout for notes and warnings. */
export function callout(tone: Tone, title: string, ...body: Child[]): HTMLElement {
  return h("div", { class: `callout callout--${tone}` }, h("strong", { class: "callout__title" }, title), ...body);
}

/** A titled panel. */
export function panel(title: string, attrs: Record<string, string>, ...children: Child[]): HTMLElement {
  const id = `${attrs["data-testid"] ?? title.toLowerCase().replace(/\W+/g, "-")}-title`;
  return h(
    "section",
    { class: "panel", "aria-labelledby": id, ...attrs },
    h("h2", { class: "panel__title", id }, title),
    ...children,
  );
}

/** The page heading, focusable so a route change can move focus to it. */
export function pageTitle(text: string, ...extra: Child[]): HTMLElement {
  return h("div", { class: "page-head" }, h("h1", { tabindex: "-1", class: "page-head__title" }, text), ...extra);
}

/**
 * Marks `field` invalid and described by `why` (the alert saying what is wrong with it), so a screen
 * reader says both on the field itself; `undefined` marks it valid again.
 */
export function markInvalid(field: HTMLElement, why: HTMLElement | undefined): void {
  if (!why) {
    field.removeAttribute("aria-invalid");
    field.removeAttribute("aria-describedby");
    return;
  }
  why.id ||= uid("why");
  field.setAttribute("aria-invalid", "true");
  field.setAttribute("aria-describedby", why.id);
}

/** Marks each of `controls` (by the request field it sends) invalid when `named` has its field, the others valid. */
export function markFields(
  controls: Readonly<Record<string, HTMLElement>>,
  named: readonly string[] | undefined,
  why: HTMLElement | undefined,
): void {
  for (const [field, el] of Object.entries(controls)) markInvalid(el, named?.includes(field) ? why : undefined);
}

/**
 * Runs `work` with `buttons` disabled. A disabled button loses the focus: the one that had it gets it
 * back afterwards, or `fallback` does when that button is hidden by then (so the focus never falls to
 * the top of the page).
 */
export async function whileBusy(
  buttons: readonly HTMLButtonElement[],
  work: () => Promise<void>,
  fallback?: HTMLElement,
): Promise<void> {
  const had = buttons.find((b) => b === document.activeElement);
  for (const b of buttons) b.disabled = true;
  try {
    await work();
  } finally {
    for (const b of buttons) b.disabled = false;
    if (had && document.activeElement === document.body) (had.hidden ? fallback : had)?.focus();
  }
}

/**
 * A "live / not refreshed" note: its state (a badge) is a polite status, said when it changes; the time
 * of the last refresh beside it changes at every poll and is not.
 */
export function freshnessNote(attrs: Record<string, string>): {
  el: HTMLElement;
  show(state: HTMLElement, rest: string): void;
} {
  const state = h("span", { role: "status" });
  const rest = document.createTextNode("");
  return {
    el: h("p", attrs, state, rest),
    show(s, text) {
      if (state.textContent !== s.textContent) replace(state, s);
      rest.data = text;
    },
  };
}
