/**
 * A fourth hostile round (2026-12-04): what a compromised service can put in front of an operator
 * through the operator panel, and time.
 */
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import * as grpc from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type GatewayApp, startGateway } from "../gateway/app.js";
import { createAuthenticator, signDevToken } from "../gateway/auth.js";
import { DEV_JWT_SECRET, loadConfig as gatewayConfig, targetVariable } from "../gateway/config.js";
import { UPSTREAMS } from "../gateway/routes.js";
import { OperatorService } from "../gen/shopmesh/gateway/v1/gateway_pb.js";
import { silentLogger } from "../platform/log.js";
import { built, runToEnd, tempDir } from "./fixtures.js";

const claims = { JWT_SECRET: DEV_JWT_SECRET, JWT_ISSUER: "shopmesh-dev", JWT_AUDIENCE: "shopmesh" };

/** A "service" that answers the panel's three reads with whatever bytes it likes (no schema of its own). */
async function hostileInstance(answers: { check: Buffer; faults: Buffer; resilience: Buffer }) {
  const raw = (path: string) => ({
    path,
    requestStream: false,
    responseStream: false,
    requestSerialize: (b: Buffer) => b,
    requestDeserialize: (b: Buffer) => b,
    responseSerialize: (b: Buffer) => b,
    responseDeserialize: (b: Buffer) => b,
  });
  const server = new grpc.Server();
  const answer =
    (b: Buffer): grpc.handleUnaryCall<Buffer, Buffer> =>
    (_call, cb) =>
      cb(null, b);
  server.addService({ Check: raw("/grpc.health.v1.Health/Check") }, { Check: answer(answers.check) });
  server.addService(
    {
      GetFaults: raw("/shopmesh.chaos.v1.ChaosService/GetFaults"),
      GetResilience: raw("/shopmesh.chaos.v1.ChaosService/GetResilience"),
    },
    { GetFaults: answer(answers.faults), GetResilience: answer(answers.resilience) },
  );
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (err, p) =>
      err ? reject(err) : resolve(p),
    ),
  );
  return { address: `127.0.0.1:${port}`, close: () => new Promise<void>((r) => server.tryShutdown(() => r())) };
}

describe("a compromised service answering the operator panel's reads", () => {
  let hostile: Awaited<ReturnType<typeof hostileInstance>>;
  let gw: GatewayApp;
  beforeAll(async () => {
    // GetResilienceResponse: 2,000,000 empty Downstream messages (field 1, length 0), 4,000,000 bytes —
    // within grpc-js's default 4 MiB receive limit, which is the only bound on it.
    const resilience = Buffer.alloc(4_000_000);
    for (let i = 0; i < resilience.length; i += 2) resilience[i] = 0x0a;
    hostile = await hostileInstance({ check: Buffer.from([0x08, 0x01]), faults: Buffer.alloc(0), resilience });
    const targets = Object.fromEntries(
      UPSTREAMS.map((u) => [targetVariable(u), u === "inventory" ? hostile.address : "127.0.0.1:1"]),
    );
    gw = await startGateway(gatewayConfig({ HTTP_HOST: "127.0.0.1", HTTP_PORT: "0", ...targets }), silentLogger());
  });
  afterAll(async () => {
    await gw?.stop();
    await hostile?.close();
  });

  it("cannot make one status read cost the gateway seconds and hundreds of MB, or send the panel megabytes", async () => {
    const token = await signDevToken(claims, "ops", ["admin"]);
    const headers = { authorization: `Bearer ${token}` };
    // What the web panel does every second while it is open (connect-web, JSON).
    const read = () =>
      fetch(`${gw.url}/${OperatorService.typeName}/${OperatorService.method.getSystemStatus.name}`, {
        method: "POST",
        headers: { ...headers, "content-type": "application/json" },
        body: "{}",
      });
    // A bystander's probe while the panel reads: the event loop is the gateway's only one.
    let worstProbeMs = 0;
    let probing = true;
    const probe = (async () => {
      while (probing) {
        const t = performance.now();
        await fetch(`${gw.url}/healthz`);
        worstProbeMs = Math.max(worstProbeMs, performance.now() - t);
        await new Promise((r) => setTimeout(r, 20));
      }
    })();
    const heapBefore = process.memoryUsage().heapUsed;
    let heapPeak = heapBefore;
    const sampler = setInterval(() => {
      heapPeak = Math.max(heapPeak, process.memoryUsage().heapUsed);
    }, 5);
    const started = performance.now();
    const res = await read();
    const body = await res.text();
    const ms = performance.now() - started;
    const bytes = body.length;
    clearInterval(sampler);
    heapPeak = Math.max(heapPeak, process.memoryUsage().heapUsed);
    probing = false;
    await probe;
    expect(res.status).toBe(200);
    const status = JSON.parse(body) as {
      services: { service: string; instances: { downstreams?: unknown[] }[] }[];
    };
    const inventory = status.services.find((s) => s.service === "inventory");
    const downstreams = inventory?.instances[0]?.downstreams?.length ?? 0;
    // What one instance says is bounded before it is decoded (a status is a few hundred bytes; a
    // service calls two others): one read costs the gateway neither seconds nor hundreds of MB —
    // the gateway's pod has 256 MiB — and sends the panel no megabytes, every second.
    const cost = { ms: Math.round(ms), heapGrowthMb: Math.round((heapPeak - heapBefore) / 1e6) };
    // Bounds wide enough for a loaded 2-core machine (the read takes a few ms on a quiet one).
    expect(cost.ms, JSON.stringify(cost)).toBeLessThan(2_500);
    expect(cost.heapGrowthMb, JSON.stringify(cost)).toBeLessThan(64);
    expect(downstreams).toBeLessThanOrEqual(64);
    expect(bytes).toBeLessThan(256 * 1024);
    expect(worstProbeMs).toBeLessThan(1_500);
  }, 60_000);
});

describe("make trace with hostile span content", () => {
  it("prints a span's trace id, service, name and error with their control characters escaped, as make events does", async () => {
    using dir = tempDir();
    const file = join(dir.path, "traces.jsonl");
    const span = (id: string, parent: string, extra: Record<string, unknown>) => ({
      // The trace id too is whatever a process wrote, and make trace prints the order's.
      trace_id: "t\x1b]0;retitled\x07\x1b[2J",
      span_id: id,
      parent_id: parent,
      service: "order",
      name: "shopmesh.order.v1.OrderService/PlaceOrder",
      kind: "server",
      start_ms: 1000,
      duration_ms: 5,
      error: "",
      attributes: { "order.id": "ord_hostile" },
      ...extra,
    });
    // A consumer span's error is its handler's message, which may quote the event it failed on; a
    // span's name and service are whatever the process that wrote the shared file said.
    const lines = [
      span("a", "", {}),
      span("b", "a", {
        service: "history\x1b]0;owned\x07",
        name: "process x\n[12:00:00] forged line",
        error: "bad event: \x1b[2J\x1b[31mcleared\u202e",
      }),
    ];
    writeFileSync(file, `${lines.map((l) => JSON.stringify(l)).join("\n")}\n`);
    const run = await runToEnd(process.execPath, built("scripts/trace.ts"), {
      env: { ...process.env, TRACE_FILE: file, ORDER: "ord_hostile" },
    });
    const out = { stdout: run.out };
    expect(run.code).toBe(0);
    expect(out.stdout).toContain("PlaceOrder");
    // Two spans, two lines after the header: no line of the span's own making, no escape reaching the terminal.
    const raw = [...out.stdout].filter((c) => {
      const code = c.codePointAt(0) ?? 0;
      return (code < 0x20 && c !== "\n") || code === 0x7f || code === 0x202e;
    });
    expect(raw.map((c) => `U+${(c.codePointAt(0) ?? 0).toString(16).padStart(4, "0")}`)).toEqual([]);
    expect(out.stdout.split("\n").filter((l) => l.includes("forged line") && !l.includes("process x"))).toEqual([]);
  });
});

describe("the gateway's cache of verified tokens across a clock step", () => {
  const config = {
    JWT_SECRET: DEV_JWT_SECRET,
    JWT_PUBLIC_KEY: "",
    JWT_PUBLIC_KEY_ALG: "RS256" as const,
    JWT_JWKS_URL: "",
    JWT_ISSUER: "shopmesh-dev",
    JWT_AUDIENCE: "shopmesh",
    JWT_MAX_LIFETIME_S: 86_400,
    JWT_CLOCK_SKEW_S: 30,
  };

  it("remembers a token at most a minute of elapsed time, not until the wall clock catches up again", async () => {
    // The wall clock the gateway reads: real time, then stepped back an hour (an NTP correction, a VM
    // restored from a snapshot) — what Date.now() does; elapsed time goes on forward meanwhile.
    let offsetMs = 0;
    const clock = () => Date.now() + offsetMs;
    const authenticate = await createAuthenticator(config, clock);
    const token = await signDevToken(claims, "alice", ["customer"], 3600);
    await expect(authenticate(`Bearer ${token}`)).resolves.toMatchObject({ subject: "alice" });
    offsetMs = -3_600_000;
    // Verified afresh, the token is refused at this clock: issued an hour in its future.
    const fresh = await createAuthenticator(config, clock);
    await expect(fresh(`Bearer ${token}`)).rejects.toThrow();
    // The cache said "at most a minute"; two minutes of elapsed time later it still answers from it
    // (the minute counted on the wall clock, which now has an hour to catch up).
    offsetMs = -3_600_000 + 120_000;
    await expect(authenticate(`Bearer ${token}`)).rejects.toThrow();
  });
});
