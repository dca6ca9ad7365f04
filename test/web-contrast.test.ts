/**
 * The web shop's colours as a low-vision user meets them (WCAG 2.1 AA): Debian's Chromium driven by
 * playwright-core against the real system and gateway in this process, as test/web-a11y.test.ts does.
 * On every route and in the states that bring their own colours (errors, badges, a cancelled and
 * compensated saga, steps retrying and the breaker for payment open with payment down (and its half-open
 * colours), the operator's refusals), every element that shows text is measured in the page, and again each kind of link and
 * button as it shows when hovered with the real pointer:
 * its computed colour against the background behind it (its own and its ancestors' backgrounds,
 * composited over the white canvas; a gradient counts as each of its stops). Text needs 4.5:1, large
 * text (24px, or bold from 18.66px) 3:1; a text field's border and the focus ring need 3:1 against
 * what is around them (WCAG 1.4.11). Disabled controls are exempt (WCAG 1.4.3), and so is text
 * hidden from assistive technology as decoration (the product art's initials): both are listed, not
 * measured.
 */
import type { Page } from "playwright-core";
import { describe, expect, it } from "vitest";
import { signInAs, webShop } from "./web-shop.js";

const shop = webShop({ order: { SAGA_STEP_BUDGET_MS: "3000" } }, { FAULT_INJECTION: "true" });

/** A fresh browser profile with one page on the gateway. */
async function openPage(): Promise<Page> {
  return (await shop.context()).newPage();
}

/** Signs in as `user` through the page's development sign-in. */
async function signIn(user: "alice" | "bob" | "operator"): Promise<Page> {
  const page = await openPage();
  await signInAs(page, user);
  return page;
}

/**
 * The colour arithmetic, defined in the page (window.__contrast): WCAG 2.1's relative luminance and
 * contrast ratio, an element's text colour and the backgrounds behind it.
 */
const CONTRAST = `window.__contrast = (() => {
  const parse = (s) => {
    const m = /^rgba?\\(([^)]+)\\)$/.exec(s.trim());
    if (!m) throw new Error("a colour this test cannot read: " + s);
    const p = m[1].split(/[\\s,/]+/).filter(Boolean).map((x) => (x.endsWith("%") ? parseFloat(x) / 100 : Number(x)));
    return [p[0], p[1], p[2], p[3] ?? 1];
  };
  const over = (top, under) => [0, 1, 2].map((i) => top[i] * top[3] + under[i] * (1 - top[3])).concat(1);
  const lum = (c) => {
    const [r, g, b] = c.slice(0, 3).map((v) => ((v /= 255) <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4));
    return 0.2126 * r + 0.7152 * g + 0.0722 * b;
  };
  const ratio = (a, b) => {
    const [hi, lo] = [lum(a), lum(b)].sort((x, y) => y - x);
    return (hi + 0.05) / (lo + 0.05);
  };
  const hex = (c) => "#" + c.slice(0, 3).map((v) => Math.round(v).toString(16).padStart(2, "0")).join("");
  /** The colours behind el (one per gradient stop), from the nearest opaque background up, over white. */
  const behind = (el) => {
    const layers = [];
    for (let e = el; e; e = e.parentElement) {
      const cs = getComputedStyle(e);
      const stops = cs.backgroundImage === "none" ? [] : [...cs.backgroundImage.matchAll(/rgba?\\([^)]+\\)/g)].map((m) => parse(m[0]));
      const color = parse(cs.backgroundColor);
      layers.push({ color, stops });
      if (color[3] === 1 || stops.some((s) => s[3] === 1)) break;
    }
    let under = [[255, 255, 255, 1]];
    for (const { color, stops } of layers.reverse()) {
      under = under.map((u) => over(color, u));
      if (stops.length) under = stops.flatMap((s) => under.map((u) => over(s, u)));
    }
    return under;
  };
  const name = (el) => {
    const id = el.closest("[data-testid]")?.getAttribute("data-testid");
    return el.tagName.toLowerCase() + (el.className && typeof el.className === "string" ? "." + el.className.trim().split(/\\s+/).join(".") : "") + (id ? " in " + id : "");
  };
  /** fg against every colour behind el: the worst ratio, as a finding when below need. */
  const measure = (el, what, fg, need) => {
    let worst;
    for (const bg of behind(el)) {
      const r = ratio(over(fg, bg), bg);
      if (!worst || r < worst.r) worst = { r, bg };
    }
    return { el: name(el), what, fg: hex(fg), bg: hex(worst.bg), ratio: Math.round(worst.r * 100) / 100, need };
  };
  return { parse, measure, name };
})();`;

/**
 * Every text (and placeholder, and text field border) in `root` (an expression; the page's body unless
 * told) measured, `root` itself included; and what was exempt.
 */
const AUDIT_TEXT = (root = "document.body") => `((root) => {
  const { parse, measure, name } = window.__contrast;
  const found = [];
  const exempt = [];
  const fields = "input:not([type=checkbox]):not([type=radio]), select, textarea";
  for (const el of [root, ...root.querySelectorAll("*")]) {
    const cs = getComputedStyle(el);
    const rect = el.getBoundingClientRect();
    if (cs.visibility !== "visible" || rect.width <= 1 || rect.height <= 1) continue;
    const own = [...el.childNodes].filter((n) => n.nodeType === 3).map((n) => n.textContent).join("").trim();
    const isField = el.matches(fields);
    const text = isField ? (el.value || "").trim() : own;
    const placeholder = isField && !el.value && el.placeholder ? el.placeholder : "";
    if (!text && !placeholder && !isField) continue;
    if (el.closest(":disabled")) { exempt.push("disabled: " + name(el) + " " + JSON.stringify(text)); continue; }
    if (el.closest("[aria-hidden=true]")) { exempt.push("decorative: " + name(el) + " " + JSON.stringify(text)); continue; }
    for (let e = el; e; e = e.parentElement)
      if (Number(getComputedStyle(e).opacity) < 1) found.push({ el: name(el), what: "under opacity " + getComputedStyle(e).opacity + " (not measured)", need: 0 });
    const size = parseFloat(cs.fontSize);
    const large = size >= 24 || (Number(cs.fontWeight) >= 700 && size >= 18.66);
    const need = large ? 3 : 4.5;
    if (text) found.push({ ...measure(el, "text " + JSON.stringify(text.slice(0, 40)), parse(cs.color), need) });
    if (placeholder) found.push(measure(el, "placeholder " + JSON.stringify(placeholder), parse(getComputedStyle(el, "::placeholder").color), need));
    if (isField && cs.borderTopStyle !== "none" && el.parentElement)
      found.push(measure(el.parentElement, "border of " + name(el), parse(cs.borderTopColor), 3));
  }
  return { measured: found, exempt };
})(${root})`;

/**
 * Marks one element of each kind the pointer can hover (a link, each button and card variant, a summary:
 * kinds told apart by tag, class and aria-current) with data-hover-probe="<n>"; returns how many.
 */
const HOVER_TARGETS = `(() => {
  for (const e of document.querySelectorAll("[data-hover-probe]")) e.removeAttribute("data-hover-probe");
  const kinds = new Set();
  let n = 0;
  for (const el of document.querySelectorAll("a[href], button, summary, [role=button]")) {
    const rect = el.getBoundingClientRect();
    if (el.matches(":disabled") || el.closest("[aria-hidden=true]") || rect.width <= 1 || rect.height <= 1) continue;
    if (getComputedStyle(el).visibility !== "visible") continue;
    // Placed off the page until focused (the skip link): no pointer reaches it.
    if (rect.right + scrollX <= 0 || rect.bottom + scrollY <= 0) continue;
    const kind = el.tagName + "." + el.className + "|" + el.getAttribute("aria-current");
    if (kinds.has(kind)) continue;
    kinds.add(kind);
    el.setAttribute("data-hover-probe", String(n++));
  }
  return n;
})()`;

/** The focused element's focus ring against what is around it (its outline sits outside it, on its parent). */
const AUDIT_RING = `(() => {
  const { parse, measure, name } = window.__contrast;
  const el = document.activeElement;
  if (!el || el === document.body || el.hasAttribute("data-ring-seen")) return undefined;
  el.setAttribute("data-ring-seen", "");
  const cs = getComputedStyle(el);
  if (cs.outlineStyle === "none") return { el: name(el), what: "focus ring: none", fg: "", bg: "", ratio: 0, need: 3 };
  return { ...measure(el.parentElement ?? el, "focus ring", parse(cs.outlineColor), 3), el: name(el) };
})()`;

interface Measured {
  readonly el: string;
  readonly what: string;
  readonly fg?: string;
  readonly bg?: string;
  readonly ratio?: number;
  readonly need: number;
}

/** What on `page` falls short, as lines naming the element and its colours; the exempt text too. */
async function shortfalls(page: Page, where: string): Promise<{ short: string[]; exempt: string[]; count: number }> {
  await page.evaluate(CONTRAST);
  const { measured, exempt } = await page.evaluate<{ measured: Measured[]; exempt: string[] }>(AUDIT_TEXT());
  // Hover colours: each kind of link and button hovered with the real pointer, its text measured as it
  // then shows (after any transition), then the pointer moved off.
  const kinds = await page.evaluate<number>(HOVER_TARGETS);
  for (let i = 0; i < kinds; i++) {
    const probe = `[data-hover-probe="${i}"]`;
    await page.locator(probe).hover();
    await page.evaluate(
      "Promise.all(document.getAnimations().filter((a) => a instanceof CSSTransition).map((a) => a.finished))",
    );
    const hovered = await page.evaluate<{ measured: Measured[]; hovered: boolean }>(
      `({ ...${AUDIT_TEXT(`document.querySelector('${probe}')`)}, hovered: document.querySelector('${probe}').matches(":hover") })`,
    );
    if (!hovered.hovered) throw new Error(`${where}: ${probe} was not hovered (covered by another element?)`);
    measured.push(...hovered.measured.map((m) => ({ ...m, what: `hovered ${m.what}` })));
  }
  await page.mouse.move(0, 0);
  const stops: Measured[] = [];
  await page.bringToFront(); // focus rings show in the page that has the focus
  await page.evaluate(
    "for (const e of document.querySelectorAll('[data-ring-seen]')) e.removeAttribute('data-ring-seen')",
  );
  // From the skip link, reached by a key (a focus() after a click shows no :focus-visible ring).
  await page.evaluate("document.querySelector('.skip-link').focus()");
  await page.keyboard.press("Tab");
  await page.keyboard.press("Shift+Tab");
  for (let i = 0; i < 80; i++) {
    const ring = await page.evaluate<Measured | undefined>(AUDIT_RING);
    if (!ring) break;
    stops.push(ring);
    await page.keyboard.press("Tab");
  }
  const all = [...measured, ...stops];
  return { short: shortOf(where, all), exempt: exempt.map((e) => `${where}: ${e}`), count: all.length };
}

/** Of `measured` on `where`, what falls short, one line each. */
function shortOf(where: string, measured: readonly Measured[]): string[] {
  const short = measured
    .filter((m) => m.ratio === undefined || m.ratio < m.need)
    .map((m) => `${where}: ${m.el} ${m.what}: ${m.fg} on ${m.bg} = ${m.ratio}:1 < ${m.need}:1`);
  return [...new Set(short)];
}

describe("the web shop's colours", () => {
  it("every text, placeholder, text field border and focus ring on every page meets WCAG 2.1 AA contrast", async () => {
    const short: string[] = [];
    const exempt: string[] = [];
    const audit = async (where: string, page: Page) => {
      const r = await shortfalls(page, where);
      expect(r.count, where).toBeGreaterThan(5);
      short.push(...r.short);
      exempt.push(...r.exempt);
    };

    // Sign-in: the cards, the token disclosure open with its placeholder, then a token refused.
    const anon = await openPage();
    await anon.goto("/");
    await anon.getByTestId("signin-alice").waitFor();
    await anon.locator("summary", { hasText: "I have a token" }).click();
    await audit("signin", anon);
    await anon.getByTestId("token-input").fill("not a token");
    await anon.getByTestId("token-form").getByRole("button").click();
    await anon.getByRole("alert").filter({ hasText: "not a JWT" }).waitFor();
    await audit("signin refused", anon);

    // The shop, live, with a cart line short of stock and a checkout refused.
    const alice = await signIn("alice");
    await alice.getByTestId("product-ceramic-mug").getByTestId("available").filter({ hasText: /\d/ }).waitFor();
    await alice.getByRole("status").filter({ hasText: "Live stock" }).waitFor();
    await alice.getByTestId("product-coffee-beans").getByTestId("add-to-cart").click();
    const qty = alice.getByRole("spinbutton", { name: /^Quantity of Single-origin coffee beans/ });
    await qty.fill("150");
    await qty.press("Tab");
    await alice
      .getByTestId("cart-line-coffee-beans")
      .getByText(/^Only \d+ available/)
      .waitFor();
    await audit("shop", alice);
    await qty.fill("1");
    await qty.press("Tab");
    const placeOrder = "**/shopmesh.order.v1.OrderService/PlaceOrder";
    await alice.route(placeOrder, (route) =>
      route.fulfill({
        status: 429,
        headers: { "content-type": "application/json", "retry-after": "2" },
        body: JSON.stringify({ code: "resource_exhausted", message: "rate limit exceeded" }),
      }),
    );
    await alice.getByTestId("place-order").click();
    await alice.getByTestId("checkout-message").getByRole("alert").waitFor();
    await audit("checkout refused", alice);
    await alice.unroute(placeOrder);

    // A confirmed order, and a declined one whose saga was compensated.
    await alice.getByTestId("place-order").click();
    await alice.waitForURL(/#\/orders\/.+/);
    await alice.locator('[data-testid="order-status"][data-status="CONFIRMED"]').waitFor({ timeout: 20_000 });
    await alice.getByTestId("payment").filter({ hasText: "Captured" }).waitFor();
    await audit("order confirmed", alice);
    await alice.goto("/#/");
    await alice.getByTestId("product-ceramic-mug").getByTestId("add-to-cart").click();
    await alice.getByTestId("card-tok_decline").check();
    await alice.getByTestId("place-order").click();
    await alice.waitForURL(/#\/orders\/.+/);
    await alice.locator('[data-testid="order-status"][data-status="CANCELLED"]').waitFor({ timeout: 20_000 });
    await alice.getByTestId("step-release_stock").filter({ hasText: "Compensated" }).waitFor();
    await alice
      .locator('[data-testid="timeline"] details')
      .first()
      .evaluate((d) => d.setAttribute("open", ""));
    await audit("order cancelled", alice);
    // A saga still running (payment answers after 2 s): the Pending status and a Running step.
    await shop.sys.paymentChaos.setFaults({ faults: { latencyMs: 2_000 } });
    try {
      await alice.goto("/#/");
      await alice.getByTestId("product-paper-filters").getByTestId("add-to-cart").click();
      await alice.getByTestId("place-order").click();
      await alice.waitForURL(/#\/orders\/.+/);
      await alice.getByTestId("step-charge_payment").and(alice.locator('[data-status="running"]')).waitFor();
      await audit("order running", alice);
    } finally {
      await shop.sys.paymentChaos.setFaults({ faults: {} });
    }
    // Payment down, as the operator's fault sets it: the saga retries the charge, then its refund (a
    // Retrying step, and the refund pending), and the order service's breaker for payment opens.
    const ops = await signIn("operator");
    await shop.sys.paymentChaos.setFaults({ faults: { down: true } });
    try {
      await alice.goto("/#/");
      await alice.getByTestId("product-paper-filters").getByTestId("add-to-cart").click();
      await alice.getByTestId("place-order").click();
      await alice.waitForURL(/#\/orders\/.+/);
      const retrying = alice.locator('[data-testid="timeline"] > li[data-status="retrying"]');
      await retrying.first().waitFor({ timeout: 15_000 });
      await audit("order retrying", alice);
      // Still retrying when measured: payment is down, so nothing ends the retries but the step budget
      // (the charge's) or payment coming back (the refund's).
      expect(await retrying.count()).toBeGreaterThan(0);
      await ops.goto("/#/operator");
      const open = ops.locator('[data-testid="breaker-payment"][data-state="open"]');
      await open.waitFor({ timeout: 20_000 });
      await audit("operator breaker open", ops);
      expect(await open.count()).toBe(1);
      // Half-open lasts one probe call, too short to catch: its colours are measured on a copy of the open
      // breaker's box given half-open's class, beside it in the same panel, made, measured and removed in
      // one step (the page redraws the panel every few seconds: a copy left for a whole audit, its hovers
      // and its focus stops, was gone by its end on a busy machine).
      const copy = '[data-testid="breaker-half-open-copy"]';
      const halfOpen = await ops.evaluate<{ measured: Measured[]; exempt: string[] }>(`(() => {
        const box = document.querySelector('[data-testid="breaker-payment"][data-state="open"]');
        const copy = box.cloneNode(true);
        copy.className = "breaker__state breaker__state--half-open";
        copy.dataset.testid = "breaker-half-open-copy";
        const value = copy.querySelector(".breaker__value");
        if (value) value.textContent = "Half-open";
        box.parentElement.after(copy);
        try { return ${AUDIT_TEXT(`document.querySelector('${copy}')`)}; } finally { copy.remove(); }
      })()`);
      expect(halfOpen.measured.map((m) => m.what)).toContain('text "Half-open"');
      short.push(...shortOf("operator breaker half-open", halfOpen.measured));
      exempt.push(...halfOpen.exempt.map((e) => `operator breaker half-open: ${e}`));
    } finally {
      await shop.sys.paymentChaos.setFaults({ faults: {} });
    }
    // The shop's stock gone stale (the inventory down): a warning badge.
    await alice.goto("/#/");
    await alice.getByRole("status").filter({ hasText: "Live stock" }).waitFor();
    await shop.sys.inventoryChaos.setFaults({ faults: { down: true } });
    try {
      await alice.getByRole("status").filter({ hasText: "Stock may be stale" }).waitFor({ timeout: 15_000 });
      await audit("shop stale", alice);
    } finally {
      await shop.sys.inventoryChaos.setFaults({ faults: {} });
    }
    for (const [hash, testid] of [
      ["#/orders", "order-row"],
      ["#/notifications", "notification"],
      ["#/operator", "operators-only"],
    ] as const) {
      await alice.goto(`/${hash}`);
      await alice.getByTestId(testid).first().waitFor({ timeout: 10_000 });
      await audit(hash, alice);
    }

    // The operator page, with each form refused (a restock the inventory refuses, faults out of range).
    await ops.goto("/#/operator");
    await ops.getByTestId("service-payment").waitFor();
    await ops.getByTestId("faults-form").waitFor();
    await ops.locator('[data-testid="restock-product"] option[value="ceramic-mug"]').waitFor({ state: "attached" });
    await audit("operator", ops);
    const restock = "**/shopmesh.inventory.v1.InventoryService/Restock";
    await ops.route(restock, (route) =>
      route.continue({ postData: JSON.stringify({ ...route.request().postDataJSON(), quantity: 0 }) }),
    );
    await ops.getByTestId("restock-submit").click();
    await ops.getByTestId("restock-message").getByRole("alert").waitFor();
    await ops.getByTestId("faults-code").evaluate((s) => s.querySelector("option")?.setAttribute("value", "99"));
    await ops.getByTestId("faults-code").selectOption({ index: 0 });
    await ops.getByTestId("faults-apply").click();
    await ops.getByTestId("faults-message").getByRole("alert").waitFor();
    await audit("operator refused", ops);

    expect(short, `exempt, not measured:\n${exempt.join("\n")}`).toEqual([]);
  }, 120_000);

  it("the current page's nav link differs from the others by more than colour (an underline, a weight), on each route", async () => {
    const ops = await signIn("operator");
    // What tells one link from another besides their colours: text decoration, weight, style, borders, shadow.
    const shape = (testid: string) =>
      ops.evaluate<string>(`(() => {
        const cs = getComputedStyle(document.querySelector('[data-testid="${testid}"]'));
        return [cs.textDecorationLine, cs.textDecorationThickness, cs.fontWeight, cs.fontStyle,
          cs.borderBottomStyle, cs.borderBottomWidth, cs.boxShadow].join(" ");
      })()`);
    const links = ["nav-shop", "nav-orders", "nav-notifications", "nav-operator"];
    for (const [hash, current] of [
      ["#/", "nav-shop"],
      ["#/orders", "nav-orders"],
      ["#/notifications", "nav-notifications"],
      ["#/operator", "nav-operator"],
    ] as const) {
      await ops.goto(`/${hash}`);
      await ops.locator(`[data-testid="${current}"][aria-current="page"]`).waitFor();
      const mine = await shape(current);
      for (const other of links.filter((l) => l !== current)) {
        expect(await ops.getByTestId(other).getAttribute("aria-current"), `${hash}: ${other}`).toBeNull();
        expect(await shape(other), `${hash}: ${current} against ${other}`).not.toBe(mine);
      }
    }
  });
});
