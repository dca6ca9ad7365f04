/**
 * The shop: the catalogue with live stock (polled every few seconds and
 * after each order), the cart, and the checkout — saga mode and card — that
 * places the order with one idempotency key per checkout and opens its page.
 */
import { SagaMode } from "../../gen/shopmesh/common/v1/common_pb.js";
import type { Product } from "../../gen/shopmesh/inventory/v1/inventory_pb.js";
import type { CartLine } from "./cart.js";
import { h, keepFocus, replace, replaceIfChanged, uid } from "./dom.js";
import { describeError, type Problem } from "./errors.js";
import { clock, money, times } from "./format.js";
import type { PageContext } from "./page.js";
import { poll } from "./poll.js";
import { orderHref } from "./router.js";
import { badge, callout, freshnessNote, loading, pageTitle, panel, problemBox, whileBusy } from "./ui.js";

/** How often the catalogue's stock is read again, in ms. */
const STOCK_POLL_MS = 3000;

/** The cards the checkout offers (the simulated provider's test tokens). */
export const CARDS = [
  { token: "tok_visa", label: "Good card", note: "approved" },
  { token: "tok_decline", label: "Declined card", note: "the provider declines it" },
  { token: "tok_insufficient", label: "Insufficient funds", note: "declined for lack of funds" },
] as const;

const MODES = [
  { mode: SagaMode.ORCHESTRATION, label: "Orchestration", note: "the order service calls each step in turn" },
  { mode: SagaMode.CHOREOGRAPHY, label: "Choreography", note: "services react to each other's events" },
] as const;

/** A card's product art: a monogram in one of six colours, chosen by the id. */
function art(p: Product): HTMLElement {
  let n = 0;
  for (const c of p.id) n = (n * 31 + c.charCodeAt(0)) >>> 0;
  const initials = p.name
    .split(/\s+/)
    .slice(0, 2)
    .map((w) => w.charAt(0).toUpperCase())
    .join("");
  return h("div", { class: `product__art art--${n % 6}`, "aria-hidden": "true" }, initials);
}

/** Reads the whole catalogue (a few pages at most). */
async function catalogue(ctx: PageContext): Promise<Product[]> {
  const all: Product[] = [];
  let pageToken = "";
  for (let i = 0; i < 10; i++) {
    const res = await ctx.api.inventory.listProducts({ pageSize: 100, pageToken }, { signal: ctx.signal });
    all.push(...res.products);
    pageToken = res.nextPageToken;
    if (!pageToken) break;
  }
  return all;
}

/** One product card, built once and updated in place (so focus and reading position survive a refresh). */
interface ProductCard {
  readonly el: HTMLElement;
  update(p: Product, inCart: number): void;
}

function productCard(ctx: PageContext, p0: Product): ProductCard {
  const titleId = uid("product");
  const available = h("span", { class: "stock__n", "data-testid": "available" });
  const reserved = h("span", { class: "stock__n", "data-testid": "reserved" });
  const fill = h("span", { class: "stockbar__available" });
  const held = h("span", { class: "stockbar__reserved" });
  const inCartNote = h("span", { class: "product__incart" });
  const add = h(
    "button",
    {
      type: "button",
      class: "button",
      "data-testid": "add-to-cart",
      "data-focus": `add-${p0.id}`,
      onclick: () => ctx.cart.add(p0.id),
    },
    "Add to cart",
  );
  const price = h("p", { class: "product__price" });
  const el = h(
    "article",
    { class: "product", "data-testid": `product-${p0.id}`, "aria-labelledby": titleId },
    art(p0),
    h("h3", { class: "product__name", id: titleId }, p0.name),
    price,
    h("p", { class: "stock" }, available, " available · ", reserved, " reserved"),
    h("div", { class: "stockbar", "aria-hidden": "true" }, fill, held),
    h("div", { class: "product__actions" }, add, inCartNote),
  );
  return {
    el,
    update(p, inCart) {
      price.textContent = money(p.unitPrice);
      available.textContent = String(p.available);
      reserved.textContent = String(p.reserved);
      const total = Math.max(1, p.available + p.reserved);
      // CSSOM, not a style attribute: allowed by the page's Content-Security-Policy.
      fill.style.width = `${(100 * p.available) / total}%`;
      held.style.width = `${(100 * p.reserved) / total}%`;
      el.classList.toggle("product--out", p.available === 0);
      add.disabled = p.available === 0;
      add.textContent = p.available === 0 ? "Out of stock" : "Add to cart";
      // The visible words first (a voice-control user says what they see), then which product.
      add.setAttribute("aria-label", `${add.textContent}: ${p.name}`);
      inCartNote.textContent = inCart > 0 ? `${inCart} in cart` : "";
    },
  };
}

/** The shop page. */
export function shopPage(ctx: PageContext): void {
  const { cart, signal } = ctx;
  let products: Product[] = [];
  let loaded = false;
  let stockProblem: Problem | undefined;
  let updatedAt = 0;
  const cards = new Map<string, ProductCard>();

  const grid = h("div", { class: "products", "data-testid": "catalogue" }, loading("Loading the catalogue…"));
  const stockNote = freshnessNote({ class: "muted small", "data-testid": "stock-updated" });
  // Focusable by script: it keeps the focus when the line that had it is removed.
  const cartBox = h("div", { "data-testid": "cart", tabindex: "-1" });
  // Lines of the saved cart that could not be used, or a cart the browser will not keep: said, not lost silently.
  const cartNote = h("div", { "aria-live": "polite", "data-testid": "cart-note" });
  const checkoutMessage = h("div", { "aria-live": "polite", "data-testid": "checkout-message" });
  let inFlight = false;
  /**
   * The lines the last checkout refusal named (`items[1].quantity`), by product id, and the id of the
   * alert that says why. Kept across the stock poll's redraws; gone when the cart changes (the refusal's
   * indices named the checkout as sent, not the cart now) or the order is placed again.
   */
  let refused: { readonly ids: ReadonlySet<string>; readonly why: string } | undefined;

  // Checkout choices.
  const modeName = uid("mode");
  const cardName = uid("card");
  const radio = (name: string, value: string, label: string, note: string, checked: boolean, testid: string) => {
    const id = uid(name);
    return h(
      "div",
      { class: "choice" },
      h("input", { type: "radio", name, id, value, checked, "data-testid": testid }),
      h("label", { for: id }, h("span", { class: "choice__label" }, label), h("span", { class: "choice__note" }, note)),
    );
  };
  const placeButton = h(
    "button",
    { type: "submit", class: "button button--primary button--wide", "data-testid": "place-order" },
    "Place order",
  );
  const form = h(
    "form",
    { class: "checkout", "data-testid": "checkout", onsubmit: (e: Event) => void place(e) },
    h(
      "fieldset",
      { class: "choices" },
      h("legend", {}, "Saga"),
      MODES.map((m, i) =>
        radio(modeName, String(m.mode), m.label, m.note, i === 0, `mode-${SagaMode[m.mode].toLowerCase()}`),
      ),
    ),
    h(
      "fieldset",
      { class: "choices" },
      h("legend", {}, "Card"),
      CARDS.map((c, i) => radio(cardName, c.token, c.label, c.note, i === 0, `card-${c.token}`)),
    ),
    placeButton,
    checkoutMessage,
  );

  const chosen = (name: string) => form.querySelector<HTMLInputElement>(`input[name="${name}"]:checked`)?.value ?? "";

  async function place(e: Event) {
    e.preventDefault();
    if (inFlight) return;
    const items = cart.items();
    if (items.length === 0) {
      replace(
        checkoutMessage,
        callout("info", "Your cart is empty", h("p", {}, "Add something from the catalogue first.")),
      );
      return;
    }
    const request = { items, cardToken: chosen(cardName), sagaMode: Number(chosen(modeName)) as SagaMode };
    // The same checkout keeps its key: a second click or a retry after an error is the same order.
    const idempotencyKey = cart.keyFor(request);
    inFlight = true;
    refused = undefined;
    drawCart();
    placeButton.textContent = "Placing order…";
    replace(checkoutMessage, loading("Placing your order…"));
    await whileBusy([placeButton], async () => {
      try {
        const { order } = await ctx.api.orders.placeOrder(
          { ...request, items: [...items], idempotencyKey },
          { signal },
        );
        cart.clear();
        if (order) ctx.go(orderHref(order.id));
      } catch (err) {
        if (signal.aborted) return;
        const p = describeError(err);
        const box = problemBox(p);
        replace(
          checkoutMessage,
          box,
          p.retryable
            ? h(
                "p",
                { class: "muted small" },
                "Placing it again sends the same checkout: it can never become two orders.",
              )
            : null,
        );
        markLines(items, p.fields, box);
      } finally {
        inFlight = false;
        placeButton.textContent = "Place order";
      }
    });
  }

  /**
   * Marks the quantity field of each line of `sent` that a refusal names (`items[1].quantity`) invalid,
   * described by `why` as well as by its stock warning, for as long as {@link refused} holds.
   */
  function markLines(sent: readonly CartLine[], named: readonly string[] | undefined, why: HTMLElement) {
    const ids = new Set(sent.filter((_, i) => named?.includes(`items[${i}].quantity`)).map((l) => l.productId));
    if (ids.size === 0) return;
    why.id ||= uid("why");
    refused = { ids, why: why.id };
    drawCart();
  }

  function drawCatalogue() {
    if (!loaded) {
      if (stockProblem)
        replaceIfChanged(
          grid,
          problemBox(stockProblem, () => void refresh()),
        );
      return;
    }
    if (products.length === 0) {
      replace(grid, callout("info", "The catalogue is empty"));
      return;
    }
    if (grid.querySelector('[data-testid="loading"], [data-testid="error"]')) grid.replaceChildren();
    for (const p of products) {
      let card = cards.get(p.id);
      if (!card) {
        card = productCard(ctx, p);
        cards.set(p.id, card);
        grid.append(card.el);
      }
      card.update(p, cart.quantity(p.id));
    }
    stockNote.show(
      stockProblem ? badge(`Stock may be stale: ${stockProblem.title}`, "warn") : badge("Live stock", "ok"),
      ` updated ${clock(updatedAt)}, every ${STOCK_POLL_MS / 1000} s`,
    );
  }

  let cartShown: string | undefined;
  function drawCart() {
    const note = cart.note();
    replaceIfChanged(cartNote, note ? callout("warn", note) : null);
    const byId = new Map(products.map((p) => [p.id, p]));
    // Redrawn only when what it shows changed: the stock poll calls this every few seconds, and a redraw
    // drops a quantity being typed and moves the focus (which a screen reader announces again).
    const shown = JSON.stringify(
      cart.items().map((l) => {
        const p = byId.get(l.productId);
        const marked = refused?.ids.has(l.productId) && refused.why;
        return [
          l.productId,
          l.quantity,
          p?.name,
          money(p?.unitPrice),
          p && l.quantity > p.available && p.available,
          marked,
        ];
      }),
    );
    if (shown === cartShown) return;
    cartShown = shown;
    keepFocus(cartBox, () => {
      const lines = cart.items();
      if (lines.length === 0) {
        replace(cartBox, h("p", { class: "muted", "data-testid": "cart-empty" }, "Your cart is empty."));
        return;
      }
      let total: bigint | undefined = 0n;
      let currency = "";
      const rows = lines.map((l) => {
        const p = byId.get(l.productId);
        const lineTotal = times(p?.unitPrice, l.quantity);
        if (lineTotal && total !== undefined && (currency === "" || currency === lineTotal.currencyCode)) {
          total += lineTotal.amountMinor;
          currency = lineTotal.currencyCode;
        } else total = undefined;
        const qtyId = uid("qty");
        const warnId = uid("short");
        const name = p?.name ?? l.productId;
        const short = p && l.quantity > p.available;
        const why = refused?.ids.has(l.productId) ? refused.why : undefined;
        return h(
          "li",
          { class: "cart-line", "data-testid": `cart-line-${l.productId}` },
          h("span", { class: "cart-line__name" }, name),
          h(
            "span",
            { class: "cart-line__qty" },
            h("label", { for: qtyId, class: "visually-hidden" }, `Quantity of ${name}`),
            h("input", {
              id: qtyId,
              class: "input input--qty",
              type: "number",
              min: 0,
              max: 999,
              inputmode: "numeric",
              value: String(l.quantity),
              "aria-invalid": why ? "true" : null,
              // The refusal first: it is why the field is marked.
              "aria-describedby": [why, short ? warnId : null].filter(Boolean).join(" ") || null,
              "data-focus": `qty-${l.productId}`,
              onchange: (e: Event) => cart.set(l.productId, Number((e.target as HTMLInputElement).value) || 0),
            }),
          ),
          h("span", { class: "cart-line__total" }, money(lineTotal)),
          h(
            "button",
            {
              type: "button",
              class: "button button--icon",
              "aria-label": `Remove ${name}`,
              "data-focus": `remove-${l.productId}`,
              onclick: () => cart.set(l.productId, 0),
            },
            "×",
          ),
          short
            ? h(
                "span",
                { class: "cart-line__warn", id: warnId },
                `Only ${p.available} available: this order would be cancelled for insufficient stock.`,
              )
            : null,
        );
      });
      replace(
        cartBox,
        h("ul", { class: "cart-lines" }, rows),
        h(
          "p",
          { class: "cart-total" },
          h("span", {}, "Total"),
          h(
            "strong",
            { "data-testid": "cart-total" },
            total === undefined ? "—" : money({ currencyCode: currency, amountMinor: total }),
          ),
        ),
      );
    });
  }

  async function refresh() {
    try {
      products = await catalogue(ctx);
      loaded = true;
      stockProblem = undefined;
      updatedAt = Date.now();
    } catch (err) {
      if (signal.aborted) return;
      stockProblem = describeError(err);
    }
    drawCatalogue();
    drawCart();
  }

  replace(
    ctx.root,
    pageTitle("Shop", stockNote.el),
    h(
      "div",
      { class: "shop" },
      panel("Catalogue", { "data-testid": "catalogue-panel", class: "panel shop__catalogue" }, grid),
      h(
        "aside",
        { class: "shop__side", "aria-label": "Cart and checkout" },
        panel("Cart", { "data-testid": "cart-panel" }, cartNote, cartBox),
        panel("Checkout", { "data-testid": "checkout-panel" }, form),
      ),
    ),
  );
  const unsubscribe = cart.subscribe(() => {
    refused = undefined;
    drawCatalogue();
    drawCart();
  });
  signal.addEventListener("abort", unsubscribe, { once: true });
  drawCart();
  poll(STOCK_POLL_MS, signal, refresh);
}
