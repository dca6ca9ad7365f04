/**
 * The operator panel's service and the gateway's browser endpoints against a
 * real system: health, faults and circuit breakers read from every instance,
 * faults set only where fault injection is on and only by an admin; the
 * development sign-in only while the development key is in use; the built
 * web page served from memory by exact path, with its caching and CSP.
 */
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BadRequestSchema } from "../gen/google/rpc/error_details_pb.js";
import { BreakerState } from "../gen/shopmesh/chaos/v1/chaos_pb.js";
import { OperatorService } from "../gen/shopmesh/gateway/v1/gateway_pb.js";
import { OrderStatus } from "../gen/shopmesh/order/v1/order_pb.js";
import type { Role } from "../platform/identity-rule.js";
import { silentLogger } from "../platform/log.js";
import { tempDir } from "../test/fixtures.js";
import { type System, startSystem, startTestGateway } from "../test/system.js";
import type { GatewayApp } from "./app.js";
import { signDevToken } from "./auth.js";
import { DEV_JWT_SECRET } from "./config.js";
import { UPSTREAMS } from "./routes.js";
import { findWebDirectory, webEndpoint } from "./web.js";

let sys: System;
let gw: GatewayApp;
let locked: GatewayApp;
const claims = { JWT_SECRET: DEV_JWT_SECRET, JWT_ISSUER: "shopmesh-dev", JWT_AUDIENCE: "shopmesh" };
const headers = async (sub: string, roles: Role[]) => ({
  authorization: `Bearer ${await signDevToken(claims, sub, roles)}`,
});

beforeAll(async () => {
  sys = await startSystem({
    order: {
      PAYMENT_BREAKER_CONSECUTIVE_FAILURES: "2",
      PAYMENT_BREAKER_HALF_OPEN_AFTER_MS: "300",
      PAYMENT_RETRY_MAX_ATTEMPTS: "1",
      SAGA_STEP_BUDGET_MS: "300",
    },
  });
  gw = await startTestGateway(sys, { FAULT_INJECTION: "true" });
  // Fault injection off, and tokens verified with another key: no sign-in, no SetServiceFaults.
  locked = await startTestGateway(sys, { JWT_SECRET: "another-secret-of-at-least-32-characters!" }, silentLogger());
});
afterAll(async () => {
  await locked?.stop();
  await gw?.stop();
  await sys?.[Symbol.asyncDispose]();
});

const operatorOf = (url: string) =>
  createClient(OperatorService, createConnectTransport({ baseUrl: url, httpVersion: "1.1" }));

describe("OperatorService", () => {
  it("shows every service's instances serving, their faults, and the order service's calls", async () => {
    const status = await operatorOf(gw.url).getSystemStatus({}, { headers: await headers("ops", ["admin"]) });
    expect(status.faultsEnabled).toBe(true);
    expect(status.services.map((s) => s.service)).toEqual(UPSTREAMS);
    for (const s of status.services) {
      expect(s.serving, s.service).toBe(true);
      expect(s.instances.length, s.service).toBeGreaterThanOrEqual(1);
      expect(s.instances[0]?.faults, s.service).toMatchObject({ down: false, latencyMs: 0 });
    }
    const order = status.services.find((s) => s.service === "order")?.instances[0];
    expect(order?.downstreams.map((d) => d.name)).toEqual(["inventory", "payment"]);
  });

  it("is for admins only; setting faults needs FAULT_INJECTION", async () => {
    const op = operatorOf(gw.url);
    await expect(op.getSystemStatus({}, { headers: await headers("alice", ["customer"]) })).rejects.toMatchObject({
      code: Code.PermissionDenied,
    });
    await expect(
      op.setServiceFaults(
        { service: "payment", faults: { down: true } },
        { headers: await headers("alice", ["customer"]) },
      ),
    ).rejects.toMatchObject({ code: Code.PermissionDenied });
    const other = await headers("ops", ["admin"]);
    const lockedOp = operatorOf(locked.url);
    const lockedHeaders = {
      authorization: `Bearer ${await signDevToken({ ...claims, JWT_SECRET: "another-secret-of-at-least-32-characters!" }, "ops", ["admin"])}`,
    };
    expect((await lockedOp.getSystemStatus({}, { headers: lockedHeaders })).faultsEnabled).toBe(false);
    await expect(
      lockedOp.setServiceFaults({ service: "payment", faults: { down: true } }, { headers: lockedHeaders }),
    ).rejects.toMatchObject({
      code: Code.Unimplemented,
    });
    await expect(op.setServiceFaults({ service: "nope", faults: {} }, { headers: other })).rejects.toMatchObject({
      code: Code.InvalidArgument,
      rawMessage: expect.stringContaining("service"),
    });
    const bad = await op
      .setServiceFaults({ service: "payment", faults: { errorRate: 2 } }, { headers: other })
      .catch((e: unknown) => e);
    expect(ConnectError.from(bad).code).toBe(Code.InvalidArgument);
    // The services' own BadRequest passes through, naming the field, as on every other route.
    const violations = ConnectError.from(bad)
      .findDetails(BadRequestSchema)
      .flatMap((d) => d.fieldViolations.map((v) => v.field));
    expect(violations).toEqual(["faults.error_rate"]);
  });

  it("payment down: every payment instance takes it, the order's breaker for payment opens, and closes once restored", async () => {
    const op = operatorOf(gw.url);
    const h = await headers("ops", ["admin"]);
    expect(await op.setServiceFaults({ service: "payment", faults: { down: true } }, { headers: h })).toMatchObject({
      faults: { down: true },
      instances: 1,
    });
    const breaker = async () =>
      (await op.getSystemStatus({}, { headers: h })).services
        .find((s) => s.service === "order")
        ?.instances[0]?.downstreams.find((d) => d.name === "payment")?.breaker;
    try {
      const status = await op.getSystemStatus({}, { headers: h });
      expect(status.services.find((s) => s.service === "payment")?.instances[0]?.faults?.down).toBe(true);
      // Orders whose charge fails open the order service's breaker for payment. Open is
      // watched for, not sampled once: past its 300 ms pause the breaker lets one call
      // through (a background refund retry, say) and is half-open while that probe runs.
      const seen = new Set<BreakerState | undefined>();
      for (let i = 0; i < 3 && !seen.has(BreakerState.OPEN); i++) {
        await sys.orders.placeOrder(
          {
            idempotencyKey: `op-${i}-${Date.now()}`,
            items: [{ productId: "coffee-beans", quantity: 1 }],
            cardToken: "tok_visa",
          },
          sys.as("carol"),
        );
        for (const until = Date.now() + 2_000; Date.now() < until && !seen.has(BreakerState.OPEN); ) {
          seen.add(await breaker());
          await new Promise((r) => setTimeout(r, 25));
        }
      }
      expect(seen).toContain(BreakerState.OPEN);
    } finally {
      await op.setServiceFaults({ service: "payment", faults: {} }, { headers: h });
    }
    await new Promise((r) => setTimeout(r, 400)); // past the breaker's pause: the next call is its probe
    const placed = await sys.orders.placeOrder(
      {
        idempotencyKey: `op-after-${Date.now()}`,
        items: [{ productId: "coffee-beans", quantity: 1 }],
        cardToken: "tok_visa",
      },
      sys.as("carol"),
    );
    // The breaker lets a probe through after its pause; the order completes and the breaker closes.
    const done = await sys.settle(placed.order?.id ?? "", "carol", 20_000);
    expect(done.status).toBe(OrderStatus.CONFIRMED);
    expect(await breaker()).toBe(BreakerState.CLOSED);
  }, 40_000);
});

describe("development sign-in", () => {
  const signIn = (url: string, body: string, method = "POST") =>
    fetch(`${url}/dev/token`, {
      method,
      headers: { "content-type": "application/json" },
      ...(method === "POST" ? { body } : {}),
    });

  it("hands out a token for alice, bob or operator that the gateway accepts", async () => {
    const res = await signIn(gw.url, JSON.stringify({ user: "operator" }));
    expect(res.status).toBe(200);
    expect(res.headers.get("cache-control")).toBe("no-store");
    const body = (await res.json()) as { token: string; subject: string; roles: string[]; expiresInSeconds: number };
    expect(body).toMatchObject({ subject: "operator", roles: ["admin"], expiresInSeconds: 3600 });
    const status = await operatorOf(gw.url).getSystemStatus({}, { headers: { authorization: `Bearer ${body.token}` } });
    expect(status.services).toHaveLength(UPSTREAMS.length);
  });

  it.each([
    ['{"user":"mallory"}', 400],
    ['{"user":"__proto__"}', 400],
    ['{"user":"toString"}', 400],
    ["{bad", 400],
    [JSON.stringify({ user: "alice", pad: "x".repeat(2000) }), 413],
  ])("refuses the bad body %# with the status given", async (body, status) => {
    const res = await signIn(gw.url, body);
    expect(res.status).toBe(status);
    expect(((await res.json()) as { message: string }).message).toBeTruthy();
  });

  it("takes POST only, and does not exist where tokens are verified with another key", async () => {
    expect((await signIn(gw.url, "", "GET")).status).toBe(405);
    expect((await signIn(locked.url, JSON.stringify({ user: "alice" }))).status).toBe(404);
  });
});

describe("the web page", () => {
  it("is found built (dist/web with a manifest), never the sources", () => {
    using dir = tempDir();
    mkdirSync(join(dir.path, "web", "src"), { recursive: true });
    writeFileSync(join(dir.path, "web", "index.html"), "<!-- source -->");
    mkdirSync(join(dir.path, "gateway"));
    expect(findWebDirectory(join(dir.path, "gateway", "web.js"))).toBeUndefined();
    mkdirSync(join(dir.path, "dist", "web"), { recursive: true });
    writeFileSync(join(dir.path, "dist", "web", "manifest.json"), "{}");
    expect(findWebDirectory(join(dir.path, "gateway", "web.js"))).toBe(join(dir.path, "dist", "web"));
    expect(findWebDirectory(join(dir.path, "dist", "gateway", "web.js"))).toBe(join(dir.path, "dist", "web"));
  });

  it("serves its files by exact path from memory: the page revalidated, hashed assets immutable, a strict CSP", async () => {
    using dir = tempDir();
    mkdirSync(join(dir.path, "assets"));
    writeFileSync(join(dir.path, "manifest.json"), "{}");
    writeFileSync(join(dir.path, "index.html"), "<!doctype html><title>shop</title>");
    writeFileSync(join(dir.path, "assets", "app-ABC123.js"), "console.log(1)");
    const serve = webEndpoint(dir.path, silentLogger());
    const http = await import("node:http");
    const server = http.createServer((req, res) => {
      if (serve.owns(req)) serve.serve(req, res);
      else {
        res.writeHead(404);
        res.end("rpc pipeline");
      }
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    const url = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
    try {
      const page = await fetch(`${url}/`);
      expect(page.status).toBe(200);
      expect(page.headers.get("content-type")).toBe("text/html; charset=utf-8");
      expect(page.headers.get("cache-control")).toBe("no-cache");
      expect(page.headers.get("content-security-policy")).toContain("script-src 'self'");
      expect(await page.text()).toContain("<title>shop</title>");
      const js = await fetch(`${url}/assets/app-ABC123.js`);
      expect(js.headers.get("content-type")).toBe("text/javascript; charset=utf-8");
      expect(js.headers.get("cache-control")).toContain("immutable");
      const again = await fetch(`${url}/assets/app-ABC123.js`, {
        headers: { "if-none-match": js.headers.get("etag") ?? "" },
      });
      expect(again.status).toBe(304);
      for (const path of [
        "/assets/../index.html",
        "/%2e%2e/package.json",
        "/assets/app-ABC123.js/",
        "/web.ts",
        "/INDEX.HTML",
      ]) {
        // Sent as written (fetch would normalise the dots away).
        const status = await new Promise<number>((resolve, reject) => {
          const port = (server.address() as { port: number }).port;
          http.get({ host: "127.0.0.1", port, path }, (res) => resolve(res.statusCode ?? 0)).once("error", reject);
        });
        expect(status, path).toBe(404);
      }
      expect((await fetch(`${url}/`, { method: "POST" })).status).toBe(404);
    } finally {
      server.close();
    }
  });
});
