/**
 * A hostile round against the bus as a compromised service would use it (2026-12-04): one service's
 * NATS user, with exactly the rights `BUS_USERS` gives it, against a real nats-server configured as
 * `make run` configures it, and a real gateway that follows that service through the registry
 * (`registry:///inventory`, as `make run` starts it). Each `describe` is one finding; every test fails
 * on the code it was written against.
 */
import http2 from "node:http2";
import type net from "node:net";
import { monitorEventLoopDelay } from "node:perf_hooks";
import { connect, headers, type NatsConnection } from "@nats-io/transport-node";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BUS_USERS, EVENTS } from "../contracts/events.js";
import { type GatewayApp, startGateway } from "../gateway/app.js";
import { signDevToken } from "../gateway/auth.js";
import { DEV_JWT_SECRET, loadConfig } from "../gateway/config.js";
import { inboxPrefixOf } from "../platform/bus.js";
import { BUS_ADMIN, natsAuthorization, provisionBus } from "../platform/bus-access.js";
import { silentLogger } from "../platform/log.js";
import { REGISTRY_SUBJECT_PREFIX } from "../platform/registry.js";
import { startNats, type TestNats } from "./nats.js";

const password = (user: string) => `hostile3-${user}-password`;
/** Registry entries the compromised service writes under its own name. */
const ENTRIES = 1_500;

let nats: TestNats;
let gw: GatewayApp;
/** inventory's NATS user, as a compromised inventory process holds it. */
let inventory: NatsConnection;
/** What the gateway logged about inventory's instances, in bytes, and the instances its lines say it has. */
const seen = { registryLogBytes: 0, endpoints: -1, addresses: [] as string[], synced: false };

beforeAll(async () => {
  nats = await startNats(natsAuthorization(BUS_USERS, password));
  await provisionBus(nats.url, EVENTS, silentLogger(), { auth: { user: BUS_ADMIN, pass: password(BUS_ADMIN) } });
  const log = pino(
    { level: "info" },
    {
      write: (line: string) => {
        if (!line.includes('"registryWatch":"inventory"') && !line.includes('"downstream":"inventory"')) return;
        const entry = JSON.parse(line) as { msg?: string; instances?: number; added?: string[]; removed?: string[] };
        if (entry.msg === "registry: live instances changed") seen.synced = true;
        seen.registryLogBytes += line.length;
        if (entry.msg === "endpoints changed") {
          seen.endpoints = entry.instances ?? -1;
          const gone = new Set(entry.removed ?? []);
          seen.addresses = [...seen.addresses.filter((a) => !gone.has(a)), ...(entry.added ?? [])];
        }
      },
    },
  );
  gw = await startGateway(
    loadConfig({
      HTTP_HOST: "127.0.0.1",
      HTTP_PORT: "0",
      NATS_URL: nats.url,
      NATS_USER: "gateway",
      NATS_PASSWORD: password("gateway"),
      INVENTORY_TARGET: "registry:///inventory",
      FAULT_INJECTION: "true",
      COMPOSITION_TIMEOUT_MS: "500",
    }),
    log,
  );
  inventory = await connect({
    servers: nats.url,
    user: "inventory",
    pass: password("inventory"),
    inboxPrefix: inboxPrefixOf("inventory"),
  });
  // The gateway has read the (empty) registry: from here on every write is a change it follows live.
  for (let i = 0; i < 100 && !seen.synced; i++) await new Promise((r) => setTimeout(r, 100));
  if (!seen.synced) throw new Error("the gateway never read the registry");
}, 60_000);

afterAll(async () => {
  await inventory?.close();
  await gw?.stop();
  await nats?.[Symbol.asyncDispose]();
});

/** A registry entry as registerInstance writes it, at an address of the writer's choosing. */
const entry = (id: string, address: string) =>
  JSON.stringify({ service: "inventory", address, instanceId: id, startedAt: new Date().toISOString() });
/** The header of a registry delete, as registerInstance's stop writes it. */
const kvDelete = () => {
  const h = headers();
  h.set("KV-Operation", "DEL");
  return h;
};
/** Distinct addresses nobody listens on (loopback, closed ports). */
const address = (i: number) => `127.0.0.${2 + (i % 200)}:${20_000 + Math.floor(i / 200)}`;

/** A gRPC server that answers every call UNIMPLEMENTED, counting the HTTP/2 connections open to it. */
async function fakeInstance() {
  const server = http2.createServer();
  const state = { open: 0 };
  const sessions = new Set<http2.ServerHttp2Session>();
  server.on("session", (s) => {
    state.open++;
    sessions.add(s);
    s.once("close", () => {
      state.open--;
      sessions.delete(s);
    });
  });
  server.on("stream", (stream) =>
    stream.respond({ ":status": 200, "content-type": "application/grpc", "grpc-status": "12" }, { endStream: true }),
  );
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return {
    address: `127.0.0.1:${(server.address() as net.AddressInfo).port}`,
    state,
    close: () => {
      for (const s of sessions) s.destroy();
      return new Promise((r) => server.close(r));
    },
  };
}

describe("instances that come and go while the operator panel is open", () => {
  it("leave the gateway holding no connection to an instance the registry no longer lists", async () => {
    const claims = { JWT_SECRET: DEV_JWT_SECRET, JWT_ISSUER: "shopmesh-dev", JWT_AUDIENCE: "shopmesh" };
    const admin = await signDevToken(claims, "operator", ["admin"]);
    const status = async () => {
      const res = await fetch(`${gw.url}/shopmesh.gateway.v1.OperatorService/GetSystemStatus`, {
        method: "POST",
        headers: { "content-type": "application/json", authorization: `Bearer ${admin}` },
        body: "{}",
      });
      expect(res.status).toBe(200);
      await res.arrayBuffer();
    };
    const instances = await Promise.all(Array.from({ length: 15 }, () => fakeInstance()));
    try {
      // One key, re-pointed 15 times (a pod rescheduled, or a compromised inventory rotating its address),
      // the panel polling GetSystemStatus (the web page does every second) in between.
      for (const [i, instance] of instances.entries()) {
        inventory.publish(
          `${REGISTRY_SUBJECT_PREFIX}inventory.inst_rotating`,
          entry("inst_rotating", instance.address),
        );
        for (let t = 0; t < 50 && seen.addresses[0] !== instance.address; t++)
          await new Promise((r) => setTimeout(r, 100));
        expect(seen.addresses, `step ${i}`).toEqual([instance.address]);
        await status();
      }
      // Last, the instance leaves too.
      inventory.publish(`${REGISTRY_SUBJECT_PREFIX}inventory.inst_rotating`, "", { headers: kvDelete() });
      for (let t = 0; t < 50 && seen.endpoints !== 0; t++) await new Promise((r) => setTimeout(r, 100));
      expect(seen.endpoints).toBe(0);
      await status();
      // Before: 15 — the operator keeps a channel per address it ever asked (gateway/operator.ts), each
      // connected (grpc-js keeps an idle connection up to 30 minutes), and never closed.
      await expect
        .poll(() => instances.filter((i) => i.state.open > 0).length, {
          timeout: 10_000,
          message: "connections held to departed instances",
        })
        .toBe(0);
    } finally {
      await Promise.all(instances.map((i) => i.close()));
    }
  });
});

describe("one service's NATS user writing many registry entries under its own name", () => {
  const flood = { ms: 0, maxLoopDelayMs: 0 };
  beforeAll(async () => {
    seen.registryLogBytes = 0;
    const delay = monitorEventLoopDelay({ resolution: 10 });
    delay.enable();
    const started = performance.now();
    // Each a plain publish on inventory's own keys, which its user may write (BUS_USERS): ~150 bytes.
    for (let i = 0; i < ENTRIES; i++) {
      inventory.publish(`${REGISTRY_SUBJECT_PREFIX}inventory.inst_hostile${i}`, entry(`inst_hostile${i}`, address(i)));
      if (i % 100 === 99) await inventory.flush();
    }
    await inventory.flush();
    // Until the gateway has taken them all in (or stopped at some bound of its own).
    let last = -1;
    for (let still = 0; still < 10; ) {
      await new Promise((r) => setTimeout(r, 200));
      still = seen.endpoints === last ? still + 1 : 0;
      last = seen.endpoints;
    }
    flood.ms = performance.now() - started;
    delay.disable();
    flood.maxLoopDelayMs = delay.max / 1e6;
  }, 120_000);

  it("costs the gateway's log a line or so per write, not every address on every write (quadratic)", () => {
    // Before: each write past the first snapshot logged the whole list of addresses twice ("registry:
    // live instances changed" and "endpoints changed"): 1,500 entries, ~45 MB of log lines; 10,000, ~2 GB.
    // Every line the gateway writes about inventory's instances counts here, warnings included.
    const what = `${(seen.registryLogBytes / 1e6).toFixed(1)} MB logged in ${Math.round(flood.ms)} ms (event loop held up to ${Math.round(flood.maxLoopDelayMs)} ms)`;
    expect(seen.registryLogBytes, what).toBeLessThan(5e6);
  });

  it("gives the gateway a bounded number of instances (each its own channel, HTTP/2 client and breaker)", () => {
    // Before: 1,500 endpoints, each a grpc-js channel and an HTTP/2 session to an address inventory's
    // user chose (any host:port), and GetSystemStatus fanned out 3 calls to each of them.
    expect(seen.endpoints).toBeGreaterThan(0);
    expect(seen.endpoints).toBeLessThanOrEqual(256);
  });
});
