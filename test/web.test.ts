/**
 * The web shop in a real browser: Debian's Chromium driven by playwright-core
 * (no browser download) against the real system and gateway in this process,
 * the page built by web/build.ts and served by the gateway at `/`.
 *
 * What a person would do: sign in, order, watch the saga reach CONFIRMED;
 * a declined card compensated; a double click and a retry after a lost
 * answer placing one order; another customer's order not found; the
 * operator taking payment down, seeing the breaker open, and the order
 * cancelled "payment unavailable" once payment is back and the breaker
 * closed; choreography ending the same way; no horizontal scroll at 375 px;
 * and no Content-Security-Policy violation anywhere.
 *
 * Screenshots go to docs/screenshots/ when missing or with SCREENSHOTS=update
 * (otherwise to a temp dir, so a test run leaves the work tree clean).
 */
import { existsSync } from "node:fs";
import { join } from "node:path";
import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import type { Page } from "playwright-core";
import { afterAll, describe, expect, it } from "vitest";
import { signDevToken } from "../gateway/auth.js";
import { OrderHistoryEntrySchema } from "../gen/shopmesh/history/v1/history_pb.js";
import { OrderSchema, OrderStatus, StepStatus } from "../gen/shopmesh/order/v1/order_pb.js";
import { readModelState } from "../web/src/read-model.js";
import { parseRoute } from "../web/src/router.js";
import { cancelRequested, omittedNote, refundPending, sagaRows } from "../web/src/saga-view.js";
import { ROOT, tempDir } from "./fixtures.js";
import { startTestGateway } from "./system.js";
import { DESKTOP, signInAs, webShop } from "./web-shop.js";

const PHONE = { width: 375, height: 812 };
const SHOTS = join(ROOT, "docs", "screenshots");

const shop = webShop(
  {
    // Payment down: the saga gives up on the charge after 3 s (not 15), and the order service's
    // breaker for payment probes again 2 s after it opened, so the outage test takes seconds. Not
    // 1.5 s: in CI (2026-12-06) a choreographed order beside another suite never showed CONFIRMED,
    // most likely cancelled at a pause that long on two busy cores (statusShown now says what it shows).
    order: { SAGA_STEP_BUDGET_MS: "3000", PAYMENT_BREAKER_HALF_OPEN_AFTER_MS: "2000" },
  },
  // The gateway's own breaker for a dead upstream probes again after 1 s, so the 503 case recovers quickly.
  { FAULT_INJECTION: "true", UPSTREAM_BREAKER_HALF_OPEN_AFTER_MS: "1000" },
);
/** Problems any page reported: uncaught errors and Content-Security-Policy violations. */
const pageProblems = shop.problems;
const shotsDir = tempDir("shopmesh-web-");
afterAll(() => shotsDir[Symbol.dispose]());

/** A fresh browser profile (its own sessionStorage) with one page at `viewport`. */
async function openPage(viewport: { width: number; height: number } = DESKTOP, baseURL?: string): Promise<Page> {
  const page = await (await shop.context(undefined, baseURL, viewport)).newPage();
  page.on("pageerror", (e) => pageProblems.push(`page error: ${e.message}`));
  page.on("console", (m) => {
    if (m.type() === "error" && /Content Security Policy/i.test(m.text())) pageProblems.push(`CSP: ${m.text()}`);
  });
  return page;
}

/** Signs in as `user` through the page's development sign-in. */
async function signIn(
  user: "alice" | "bob" | "operator",
  viewport: { width: number; height: number } = DESKTOP,
): Promise<Page> {
  const page = await openPage(viewport);
  await signInAs(page, user);
  return page;
}

/** Where a screenshot goes: docs/screenshots when missing or SCREENSHOTS=update, else the temp dir. */
function shot(name: string): string {
  const committed = join(SHOTS, name);
  return process.env.SCREENSHOTS === "update" || !existsSync(committed) ? committed : join(shotsDir.path, name);
}

/** Fills the cart from the shop and sets the checkout's choices (does not place the order). */
async function fillCheckout(
  page: Page,
  opts: { products: string[]; card?: string; mode?: "orchestration" | "choreography" },
): Promise<void> {
  await page.goto("/#/");
  for (const id of opts.products) await page.getByTestId(`product-${id}`).getByTestId("add-to-cart").click();
  await page.getByTestId(`mode-${opts.mode ?? "orchestration"}`).check();
  await page.getByTestId(`card-${opts.card ?? "tok_visa"}`).check();
}

/** The order id of the order page `page` shows (after the checkout navigated there). */
async function orderIdOf(page: Page): Promise<string> {
  await page.waitForURL(/#\/orders\/.+/);
  return decodeURIComponent(new URL(page.url()).hash.replace("#/orders/", ""));
}

/** Places an order through the page and returns its id. */
async function checkout(page: Page, opts: Parameters<typeof fillCheckout>[1]): Promise<string> {
  await fillCheckout(page, opts);
  await page.getByTestId("place-order").click();
  return orderIdOf(page);
}

/** Waits until the order page shows `status`; a timeout says what it shows instead (a CANCELLED's reason). */
async function statusShown(page: Page, status: keyof typeof OrderStatus, timeout = 20_000): Promise<void> {
  try {
    await page.locator(`[data-testid="order-status"][data-status="${status}"]`).waitFor({ timeout });
  } catch (err) {
    const shown = await page
      .getByTestId("order-status")
      .getAttribute("data-status", { timeout: 1_000 })
      .catch(() => "");
    const reason = await page
      .getByTestId("order-reason")
      .textContent({ timeout: 1_000 })
      .catch(() => "");
    throw new Error(`the order page shows ${shown || "no status"}${reason ? ` (${reason})` : ""}, not ${status}`, {
      cause: err,
    });
  }
}

/** The timeline as shown: step name → state. */
async function timeline(page: Page): Promise<Record<string, string>> {
  const rows = await page
    .locator('[data-testid="timeline"] > li.step')
    .evaluateAll((els) => els.map((e) => [e.getAttribute("data-testid") ?? "", e.getAttribute("data-status") ?? ""]));
  return Object.fromEntries(rows.map(([testid, status]) => [testid.replace(/^step-/, ""), status]));
}

/** Every order of `subject`, through the order service itself. */
async function orderCount(subject: string): Promise<number> {
  let n = 0;
  let pageToken = "";
  do {
    const res = await shop.sys.orders.listOrders({ pageSize: 100, pageToken }, shop.sys.as(subject));
    n += res.orders.length;
    pageToken = res.nextPageToken;
  } while (pageToken);
  return n;
}

/** Whether the document is wider than the viewport (a horizontal scroll bar). */
function scrollsSideways(page: Page): Promise<boolean> {
  // An expression: this file is typed for Node, without the DOM's types.
  return page.evaluate<boolean>("document.documentElement.scrollWidth > document.documentElement.clientWidth");
}

describe("the web shop in Chromium", () => {
  it("alice signs in, orders, and the timeline reaches CONFIRMED with every step shown", async () => {
    const page = await signIn("alice");
    await page.getByTestId("product-coffee-beans").getByTestId("available").filter({ hasText: /\d/ }).waitFor();
    const reservedBefore = Number(await page.getByTestId("product-coffee-beans").getByTestId("reserved").textContent());
    await fillCheckout(page, { products: ["coffee-beans", "ceramic-mug"] });
    expect(await page.getByTestId("cart-total").textContent()).toBe("$39.00");
    await page.screenshot({ path: shot("shop.png"), fullPage: true });

    await page.getByTestId("place-order").click();
    const id = await orderIdOf(page);
    await statusShown(page, "CONFIRMED");
    expect(await timeline(page)).toEqual({
      reserve_stock: "succeeded",
      charge_payment: "succeeded",
      confirm_order: "succeeded",
    });
    expect(await page.getByTestId("order-id").textContent()).toBe(id);
    expect(await page.getByTestId("live").getAttribute("data-state")).toBe("final");
    // The composed details and the read model catch up beside it.
    await page.getByTestId("payment").filter({ hasText: "Captured" }).waitFor();
    await page.locator('[data-testid="history-state"][data-state="in-step"]').waitFor();
    await page.screenshot({ path: shot("order-confirmed.png"), fullPage: true });

    // Live stock: the confirmed order holds its unit.
    await page.getByTestId("nav-shop").click();
    await page
      .getByTestId("product-coffee-beans")
      .getByTestId("reserved")
      .filter({ hasText: new RegExp(`^${reservedBefore + 1}$`) })
      .waitFor();
  });

  it("a declined card: the compensation steps appear and the order ends CANCELLED with the reason", async () => {
    const page = await signIn("alice");
    await checkout(page, { products: ["hand-grinder"], card: "tok_decline" });
    await statusShown(page, "CANCELLED");
    await page.getByTestId("step-release_stock").and(page.locator('[data-status="compensated"]')).waitFor();
    expect(await timeline(page)).toMatchObject({
      reserve_stock: "succeeded",
      charge_payment: "failed",
      release_stock: "compensated",
    });
    expect(await page.getByTestId("order-reason").textContent()).toMatch(/^payment declined: /);
    expect(await page.getByTestId("step-charge_payment").getByTestId("step-detail").textContent()).toMatch(/declined/);
    await page.getByTestId("compensation-divider").waitFor();
    expect(await page.getByTestId("step-reserve_stock").textContent()).toContain("Undone by release stock");
    await page.getByTestId("payment").filter({ hasText: "Declined" }).waitFor();
    await page.locator('[data-testid="history-state"][data-state="in-step"]').waitFor();
    await page.screenshot({ path: shot("order-compensated.png"), fullPage: true });
  });

  it("a double-clicked checkout, and a retry after a lost answer, each place one order", async () => {
    const page = await signIn("alice");
    const before = await orderCount("alice");
    await fillCheckout(page, { products: ["paper-filters"] });
    await page.getByTestId("place-order").dblclick();
    const first = await orderIdOf(page);
    await statusShown(page, "CONFIRMED");
    expect(await orderCount("alice")).toBe(before + 1);

    // The order is placed but its answer never arrives: the page says so, and placing it again
    // sends the same idempotency key, so the answer is the same order.
    let placedId = "";
    await page.route("**/shopmesh.order.v1.OrderService/PlaceOrder", async (route) => {
      if (placedId) return route.continue();
      const res = await route.fetch();
      placedId = ((await res.json()) as { order: { id: string } }).order.id;
      return route.abort("connectionreset");
    });
    await fillCheckout(page, { products: ["paper-filters"], card: "tok_visa" });
    await page.getByTestId("place-order").click();
    await page.getByTestId("checkout-message").getByTestId("error").waitFor();
    expect(placedId).not.toBe("");
    await page.getByTestId("place-order").click();
    expect(await orderIdOf(page)).toBe(placedId);
    expect(placedId).not.toBe(first);
    expect(await orderCount("alice")).toBe(before + 2);
  });

  it("bob cannot open alice's order: the page says not found", async () => {
    const { order } = await shop.sys.orders.placeOrder(
      {
        idempotencyKey: `web-bob-${process.pid}`,
        items: [{ productId: "ceramic-mug", quantity: 1 }],
        cardToken: "tok_visa",
      },
      shop.sys.as("alice"),
    );
    const page = await signIn("bob");
    await page.goto(`/#/orders/${order?.id}`);
    await page.getByTestId("order-not-found").waitFor();
    expect(await page.locator("h1").textContent()).toBe("Order not found");
    expect(await page.getByTestId("order-status").count()).toBe(0);
  });

  it("a link with a malformed percent-escape is a page not found, not a blank page with an uncaught URIError", async () => {
    const page = await signIn("alice");
    await page.goto("/#/orders/%E0%A4%A"); // a cut UTF-8 sequence: anyone can send such a link
    await page.locator("h1", { hasText: "Page not found" }).waitFor();
    await page.goto("/#/");
    await page.getByTestId("product-ceramic-mug").waitFor(); // and the page still follows its links
  });

  it("operator takes payment down: the breaker opens, the order is cancelled 'payment unavailable' after payment is back, and the breaker closes", async () => {
    const ops = await signIn("operator");
    await ops.getByTestId("nav-operator").click();
    await ops.locator('[data-testid="breaker-payment"][data-state="closed"]').waitFor();
    try {
      await ops.getByTestId("faults-service").selectOption("payment");
      await ops.getByTestId("faults-down").check();
      await ops.getByTestId("faults-apply").click();
      await ops.getByTestId("service-payment").getByTestId("faults").filter({ hasText: "down" }).first().waitFor();

      const alice = await signIn("alice");
      await checkout(alice, { products: ["pour-over-kettle"] });
      // The charge keeps failing until the step budget runs out; then the saga compensates, and the
      // refund (the void of the charge key) cannot reach payment: the order waits COMPENSATING, or is
      // CANCELLED with its refund pending, until payment is back.
      await alice
        .locator('[data-testid="order-status"][data-status="COMPENSATING"], [data-testid="refund-pending"]')
        .first()
        .waitFor({ timeout: 20_000 });
      await alice.locator('[data-testid="details-missing"] [data-part="payment"]').waitFor();
      await ops.locator('[data-testid="breaker-payment"][data-state="open"]').waitFor({ timeout: 20_000 });
      await ops.screenshot({ path: shot("operator.png"), fullPage: true });

      await ops.getByTestId("faults-clear").click();
      await ops.getByTestId("service-payment").getByTestId("faults").filter({ hasText: "none" }).first().waitFor();
      await statusShown(alice, "CANCELLED", 30_000);
      await alice.getByTestId("step-refund_payment").and(alice.locator('[data-status="compensated"]')).waitFor();
      expect(await alice.getByTestId("refund-pending").count()).toBe(0);
      expect(await alice.getByTestId("order-reason").textContent()).toMatch(/^payment unavailable/);
      expect(await timeline(alice)).toMatchObject({
        reserve_stock: "succeeded",
        charge_payment: "failed",
        refund_payment: "compensated",
        release_stock: "compensated",
      });
      expect(Number(await alice.getByTestId("step-charge_payment").getAttribute("data-attempts"))).toBeGreaterThan(1);
      await ops.locator('[data-testid="breaker-payment"][data-state="closed"]').waitFor({ timeout: 20_000 });
    } finally {
      await shop.sys.paymentChaos.setFaults({ faults: {} });
    }
  }, 90_000);

  it("a 429 and a 503 say what happened and when to retry; the retried checkout is still one order", async () => {
    const page = await signIn("alice");
    await fillCheckout(page, { products: ["ceramic-mug"] });
    const before = await orderCount("alice");
    // The gateway's 429 as the Connect protocol frames it, with its Retry-After.
    const placeOrder = "**/shopmesh.order.v1.OrderService/PlaceOrder";
    await page.route(placeOrder, (route) =>
      route.fulfill({
        status: 429,
        headers: { "content-type": "application/json", "retry-after": "3" },
        body: JSON.stringify({ code: "resource_exhausted", message: "rate limit exceeded" }),
      }),
    );
    await page.getByTestId("place-order").click();
    const error = page.getByTestId("checkout-message").getByTestId("error");
    await error.filter({ hasText: "Try again in 3 s" }).waitFor();
    expect(await error.textContent()).toContain("Too many requests (429)");
    await page.unroute(placeOrder);
    await page.getByTestId("place-order").click();
    await orderIdOf(page);
    expect(await orderCount("alice")).toBe(before + 1);

    // A real 503: inventory down, so the catalogue cannot be read; it comes back by itself.
    await shop.sys.inventoryChaos.setFaults({ faults: { down: true } });
    try {
      await page.getByTestId("nav-shop").click();
      await page
        .getByTestId("catalogue")
        .getByTestId("error")
        .filter({ hasText: "Service unavailable (503)" })
        .waitFor();
    } finally {
      await shop.sys.inventoryChaos.setFaults({ faults: {} });
    }
    await page.getByTestId("product-coffee-beans").waitFor({ timeout: 20_000 });
  });

  it("a cancel asked for while the charge is under way shows as requested, then the saga undoes the order", async () => {
    // Payment answers after 1.2 s (inside its 2 s deadline and the 3 s step budget): the order is
    // PENDING with its charge in flight when the customer cancels, and the saga takes the request at its
    // next step.
    await shop.sys.paymentChaos.setFaults({ faults: { latencyMs: 1_200 } });
    try {
      const alice = await signIn("alice");
      await checkout(alice, { products: ["pour-over-kettle"] });
      await alice.getByTestId("step-charge_payment").and(alice.locator('[data-status="running"]')).waitFor();
      await alice.getByTestId("cancel-order").click();
      await alice.getByTestId("cancel-requested").waitFor();
      expect(await alice.getByTestId("cancel-order").isHidden()).toBe(true);
      await statusShown(alice, "CANCELLED", 30_000);
      expect(await alice.getByTestId("cancel-requested").count()).toBe(0);
      expect(await alice.getByTestId("order-reason").textContent()).toBe(
        "cancelled by customer: cancelled in the web shop",
      );
      expect(await alice.getByTestId("steps-omitted").isHidden()).toBe(true);
    } finally {
      await shop.sys.paymentChaos.setFaults({ faults: {} });
    }
  }, 60_000);

  it("choreography reaches the same end state", async () => {
    const page = await signIn("alice");
    await checkout(page, { products: ["coffee-beans"], mode: "choreography" });
    await statusShown(page, "CONFIRMED");
    expect(await page.getByTestId("order-mode").textContent()).toBe("Choreography");
    expect(await timeline(page)).toMatchObject({
      reserve_stock: "succeeded",
      charge_payment: "succeeded",
      confirm_order: "succeeded",
    });
  });

  it("my orders page by page, and notifications", async () => {
    // Enough orders for a second page (the page shows 10).
    for (let i = 0; i < 11; i++) {
      await shop.sys.orders.placeOrder(
        {
          idempotencyKey: `web-page-${process.pid}-${i}`,
          items: [{ productId: "paper-filters", quantity: 1 }],
          cardToken: "tok_visa",
        },
        shop.sys.as("alice"),
      );
    }
    const page = await signIn("alice");
    await page.getByTestId("nav-orders").click();
    const rows = page.getByTestId("order-row");
    await rows.first().waitFor();
    expect(await rows.count()).toBe(10);
    const firstPage = await rows.evaluateAll((els) => els.map((e) => e.getAttribute("data-order-id")));
    await page.getByTestId("page-next").click();
    await page.getByTestId("order-row").first().waitFor();
    const secondPage = await rows.evaluateAll((els) => els.map((e) => e.getAttribute("data-order-id")));
    expect(secondPage.length).toBeGreaterThan(0);
    expect(secondPage.filter((id) => firstPage.includes(id))).toEqual([]);
    await page.getByTestId("page-prev").click();
    await page.getByTestId("order-row").first().waitFor();
    expect(await rows.evaluateAll((els) => els.map((e) => e.getAttribute("data-order-id")))).toEqual(firstPage);

    await page.getByTestId("nav-notifications").click();
    await page.getByTestId("notification").first().waitFor();
  });

  it("the operator restocks a product", async () => {
    const before = (await shop.sys.products.getProduct({ productId: "limited-print" })).product?.available ?? 0;
    const ops = await signIn("operator");
    await ops.goto("/#/operator");
    await ops.locator('[data-testid="restock-product"] option[value="limited-print"]').waitFor({ state: "attached" });
    await ops.getByTestId("restock-product").selectOption("limited-print");
    await ops.getByLabel("Units to add").fill("5");
    await ops.getByTestId("restock-submit").click();
    await ops
      .getByTestId("restock-message")
      .filter({ hasText: `${before + 5} now available` })
      .waitFor();
    expect((await shop.sys.products.getProduct({ productId: "limited-print" })).product?.available).toBe(before + 5);
  });

  it("a customer sees 'operators only' on the operator panel, and no link to it", async () => {
    const page = await signIn("bob");
    expect(await page.getByTestId("nav-operator").count()).toBe(0);
    await page.goto("/#/operator");
    await page.getByTestId("operators-only").waitFor();
    // The tab (and a screen reader's page list) says what the page is, not the panel it withholds.
    expect(await page.title()).toBe("Operators only · shopmesh");
  });

  it("at 375 px wide no page scrolls sideways", async () => {
    const page = await signIn("alice", PHONE);
    await fillCheckout(page, { products: ["coffee-beans"] });
    expect(await scrollsSideways(page)).toBe(false);
    const id = await checkout(page, { products: ["limited-print", "hand-grinder"], card: "tok_insufficient" });
    await statusShown(page, "CANCELLED");
    expect(await scrollsSideways(page)).toBe(false);
    const shown = { "#/orders": "order-row", "#/notifications": "notification", [`#/orders/${id}`]: "order-status" };
    for (const [path, testid] of Object.entries(shown)) {
      await page.goto(`/${path}`);
      await page.getByTestId(testid).first().waitFor();
      expect(await scrollsSideways(page), path).toBe(false);
    }
    const ops = await signIn("operator", PHONE);
    await ops.goto("/#/operator");
    await ops.getByTestId("service-payment").waitFor();
    expect(await scrollsSideways(ops)).toBe(false);
  });

  it("where the gateway verifies real tokens, sign-in says it is unavailable and takes a pasted token", async () => {
    const secret = "a-real-secret-that-is-not-the-public-development-one";
    const strict = await startTestGateway(shop.sys, { JWT_SECRET: secret });
    try {
      const page = await openPage(DESKTOP, strict.url);
      await page.goto("/");
      await page.getByTestId("signin-alice").click();
      await page.getByTestId("signin-unavailable").filter({ hasText: "make token" }).waitFor();
      const token = await signDevToken(
        { JWT_SECRET: secret, JWT_ISSUER: "shopmesh-dev", JWT_AUDIENCE: "shopmesh" },
        "alice",
        ["customer"],
      );
      await page.locator("summary", { hasText: "I have a token" }).click();
      await page.getByTestId("token-input").fill(token);
      await page.getByTestId("token-form").getByRole("button").click();
      await page.getByTestId("whoami").filter({ hasText: "alice" }).waitFor();
      await page.getByTestId("product-coffee-beans").waitFor();
    } finally {
      await strict.stop();
    }
  });
});

describe("the router (pure)", () => {
  it("reads a malformed percent-escape in an order link as a page not found, not an error", () => {
    for (const hash of ["#/orders/%", "#/orders/%E0%A4%A", "#/orders/abc%zz"]) {
      expect(parseRoute(hash)).toEqual({ page: "missing", path: hash.slice(1) });
    }
    expect(parseRoute("#/orders/ord_0mx2udtha9e760f")).toEqual({ page: "order", id: "ord_0mx2udtha9e760f" });
    expect(parseRoute(`#/orders/${"a".repeat(128)}`)).toEqual({ page: "order", id: "a".repeat(128) });
  });

  it("reads an order link whose id no service would take as a page not found: its text is never the page's title", () => {
    // A right-to-left override showing "sihT" as "This", a slash, a space, 129 characters, punctuation first.
    for (const hash of [
      "#/orders/%E2%80%AEsihT%20-%20call%20us",
      "#/orders/ord%2F1",
      "#/orders/a%20b",
      `#/orders/${"a".repeat(129)}`,
      "#/orders/-1",
    ]) {
      expect(parseRoute(hash)).toEqual({ page: "missing", path: hash.slice(1) });
    }
  });
});

describe("the timeline and read-model views (pure)", () => {
  const at = (ms: number) => timestampFromMs(ms);
  const step = (name: string, status: StepStatus, attempt = 1, detail = "") =>
    ({ name, status, attempt, detail, at: at(attempt) }) as const;

  it("folds the step log into one row per step, marking retries, failures, compensations and what they undid", () => {
    const order = create(OrderSchema, {
      status: OrderStatus.CANCELLED,
      steps: [
        step("reserve_stock", StepStatus.STARTED),
        step("reserve_stock", StepStatus.SUCCEEDED, 1, "reservation res_1"),
        step("charge_payment", StepStatus.STARTED),
        step("charge_payment", StepStatus.FAILED, 1, "UNAVAILABLE (will retry)"),
        step("charge_payment", StepStatus.STARTED, 2),
        step("charge_payment", StepStatus.FAILED, 2, "payment unavailable: UNAVAILABLE"),
        step("refund_payment", StepStatus.COMPENSATED, 1, "charge key voided"),
        step("release_stock", StepStatus.COMPENSATED, 1, "reservation res_1 released"),
        step("cancel_order", StepStatus.SUCCEEDED, 1, "payment unavailable"),
      ],
    });
    const rows = sagaRows(order);
    expect(rows.map((r) => [r.name, r.state, r.attempts, r.compensation])).toEqual([
      ["reserve_stock", "succeeded", 1, false],
      ["charge_payment", "failed", 2, false],
      ["refund_payment", "compensated", 1, true],
      ["release_stock", "compensated", 1, true],
      ["cancel_order", "succeeded", 1, true],
    ]);
    expect(rows[0]?.undoneBy).toBe("Release stock");
    expect(rows[1]?.detail).toBe("payment unavailable: UNAVAILABLE");
    expect(rows[1]?.entries).toHaveLength(4);
  });

  it("shows a retrying step as retrying and the steps to come as waiting while the order is pending", () => {
    const order = create(OrderSchema, {
      status: OrderStatus.PENDING,
      steps: [
        step("reserve_stock", StepStatus.SUCCEEDED),
        step("charge_payment", StepStatus.STARTED),
        step("charge_payment", StepStatus.FAILED, 1, "UNAVAILABLE (will retry)"),
      ],
    });
    expect(sagaRows(order).map((r) => [r.name, r.state])).toEqual([
      ["reserve_stock", "succeeded"],
      ["charge_payment", "retrying"],
      ["confirm_order", "waiting"],
    ]);
  });

  it("reads a refund that has not landed on a cancelled order as pending, and a never-sent attempt as a retry", () => {
    const cancelled = (last: StepStatus) =>
      create(OrderSchema, {
        status: OrderStatus.CANCELLED,
        refundPending: last !== StepStatus.COMPENSATED,
        steps: [
          step("release_stock", StepStatus.COMPENSATED),
          step("refund_payment", StepStatus.FAILED, 1, "UNAVAILABLE: breaker open (not sent; will retry)"),
          step("cancel_order", StepStatus.SUCCEEDED),
          step("refund_payment", last, 2),
        ],
      });
    expect(refundPending(cancelled(StepStatus.STARTED))).toBe(true);
    expect(sagaRows(cancelled(StepStatus.FAILED)).find((r) => r.name === "refund_payment")?.state).toBe("failed");
    expect(refundPending(cancelled(StepStatus.COMPENSATED))).toBe(false);
    const retrying = create(OrderSchema, {
      status: OrderStatus.COMPENSATING,
      steps: [step("refund_payment", StepStatus.FAILED, 1, "UNAVAILABLE (not sent; will retry)")],
    });
    expect(sagaRows(retrying)[0]?.state).toBe("retrying");
  });

  it("reads a cancel as requested only while the order is pending, and says how many log entries a long log leaves out", () => {
    expect(cancelRequested(create(OrderSchema, { status: OrderStatus.PENDING, cancelRequested: true }))).toBe(true);
    expect(cancelRequested(create(OrderSchema, { status: OrderStatus.PENDING }))).toBe(false);
    expect(cancelRequested(create(OrderSchema, { status: OrderStatus.COMPENSATING, cancelRequested: true }))).toBe(
      false,
    );
    expect(omittedNote(create(OrderSchema, {}))).toBe("");
    expect(omittedNote(create(OrderSchema, { stepsOmitted: 1 }))).toMatch(/^1 log entry between/);
    expect(omittedNote(create(OrderSchema, { stepsOmitted: 120 }))).toMatch(/^120 log entries between/);
  });

  it("reads the history entry as absent, behind by the order's newer change, or in step", () => {
    const order = create(OrderSchema, { id: "o1", status: OrderStatus.CONFIRMED, updatedAt: at(10_500) });
    expect(readModelState(order, undefined)).toEqual({ state: "absent", lagMs: undefined });
    const behind = create(OrderHistoryEntrySchema, {
      orderId: "o1",
      status: OrderStatus.PENDING,
      lastEventAt: at(10_000),
    });
    expect(readModelState(order, behind)).toEqual({ state: "behind", lagMs: 500 });
    const caughtUp = create(OrderHistoryEntrySchema, {
      orderId: "o1",
      status: OrderStatus.CONFIRMED,
      lastEventAt: at(10_500),
    });
    expect(readModelState(order, caughtUp)).toEqual({ state: "in-step", lagMs: 0 });
  });
});
