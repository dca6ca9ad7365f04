/**
 * The page's only DOM helper: elements built from a tag, attributes and
 * children. Text is always set as text (never parsed as HTML), so nothing a
 * server sends can become markup, and no inline style is ever written —
 * the Content-Security-Policy allows only the page's own stylesheet.
 */

/** What may stand as a child: nodes, text, nothing, or lists of them. */
export type Child = Node | string | number | bigint | null | undefined | false | readonly Child[];

/** Attribute values; `on*` keys take event listeners, `false`/`null`/`undefined` leave the attribute out. */
export type Attrs = Readonly<Record<string, string | number | boolean | null | undefined | ((e: Event) => void)>>;

/** Properties set as properties (the live state of a control), not as attributes. */
const PROPERTIES = new Set(["value", "checked", "selected"]);

/** Appends `children` to `parent`, flattening lists and skipping empty ones. */
export function append(parent: Node, ...children: Child[]): void {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(parent, ...(c as Child[]));
    else if (c instanceof Node) parent.appendChild(c);
    else parent.appendChild(document.createTextNode(String(c)));
  }
}

/** Creates `<tag>` with `attrs` and `children`. */
export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Attrs = {},
  ...children: Child[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (typeof value === "function") el.addEventListener(key.slice(2).toLowerCase(), value);
    else if (PROPERTIES.has(key)) Reflect.set(el, key, value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  append(el, ...children);
  return el;
}

/** Replaces everything inside `parent` with `children`. */
export function replace(parent: Element, ...children: Child[]): void {
  parent.replaceChildren();
  append(parent, ...children);
}

/**
 * Like {@link replace}, but leaves `parent` alone when `children` draw the markup it holds already: an
 * alert or a live region's content put in again is announced again, so a poll that keeps getting the
 * same answer (or failing the same way) would say it at every turn.
 */
export function replaceIfChanged(parent: Element, ...children: Child[]): void {
  const next = document.createElement("div");
  append(next, ...children);
  if (next.innerHTML !== parent.innerHTML) parent.replaceChildren(...next.childNodes);
}

/** A unique element id for pairing a `<label for>` with its control. */
let ids = 0;
export function uid(prefix: string): string {
  ids += 1;
  return `${prefix}-${ids}`;
}

/**
 * Runs `redraw` (which replaces elements inside `container`) and puts focus
 * back on the element with the same `data-focus` key, so a live refresh
 * never throws a keyboard user out of what they were on; when that element
 * is gone (its line was removed), on `container` itself if it is focusable
 * (`tabindex="-1"`), rather than leaving it to fall to the top of the page.
 */
export function keepFocus(container: Element, redraw: () => void): void {
  const active = document.activeElement;
  const key = active instanceof HTMLElement && container.contains(active) ? active.dataset.focus : undefined;
  redraw();
  if (key === undefined) return;
  const again = container.querySelector<HTMLElement>(`[data-focus="${CSS.escape(key)}"]`);
  if (again) again.focus();
  else if (container instanceof HTMLElement && container.hasAttribute("tabindex")) container.focus();
}
