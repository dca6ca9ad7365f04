/**
 * A hostile round against the observability surface (2026-12-04): what a client of the gateway, in
 * any of its protocols, can do to the traces, metrics and logs an operator reads, and what a process's
 * own log entry becomes in `make run`'s readable output. Each `describe` is one finding; each of its tests
 * fails on the code it was written against.
 */
import { writeFileSync } from "node:fs";
import http2 from "node:http2";
import { join } from "node:path";
import * as grpc from "@grpc/grpc-js";
import { SpanKind } from "@opentelemetry/api";
import { InMemorySpanExporter, SimpleSpanProcessor } from "@opentelemetry/sdk-trace-base";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type GatewayApp, startGateway } from "../gateway/app.js";
import { signDevToken } from "../gateway/auth.js";
import { DEV_JWT_SECRET, loadConfig as gatewayConfig, targetVariable } from "../gateway/config.js";
import { UPSTREAMS } from "../gateway/routes.js";
import { silentLogger } from "../platform/log.js";
import { startTracing } from "../platform/tracing.js";
import { jsonLine, readableLines } from "../scripts/log-lines.js";
import { built, ROOT, runToEnd, tempDir } from "./fixtures.js";

const claims = { JWT_SECRET: DEV_JWT_SECRET, JWT_ISSUER: "shopmesh-dev", JWT_AUDIENCE: "shopmesh" };

describe("requests refused before a handler runs (no procedure, no or a forged token, a limit) are sampled as what they are: nothing done", () => {
  const spans = new InMemorySpanExporter();
  let stopTracing: () => Promise<void>;
  let gw: GatewayApp;
  beforeAll(async () => {
    // Writes kept whole, reads (and so what does nothing at all) not at all: the operator's setting
    // for a busy shop, TRACE_READ_SAMPLE_RATIO turned down.
    stopTracing = await startTracing({
      service: "gateway",
      otlpEndpoint: "",
      traceFile: "",
      sampleRatio: 1,
      readSampleRatio: 0,
      extra: [new SimpleSpanProcessor(spans)],
    });
    // No upstream is ever reached: every request here is refused before one would be called.
    const targets = Object.fromEntries(UPSTREAMS.map((u) => [targetVariable(u), "127.0.0.1:1"]));
    const limits = { RATE_LIMIT_RPS: "1", RATE_LIMIT_BURST: "5" };
    const config = gatewayConfig({ HTTP_HOST: "127.0.0.1", HTTP_PORT: "0", ...targets, ...limits });
    gw = await startGateway(config, silentLogger());
  });
  afterAll(async () => {
    await gw?.stop();
    await stopTracing?.();
  });

  it("a scanner's unknown paths, in every protocol, do not each record a trace", async () => {
    // Before: each one a new trace at TRACE_SAMPLE_RATIO (1), as if it were an order — a client probing
    // paths wrote a span per request to the span file and the collector, and its rotation pushed the
    // orders' traces out of what `make trace` reads, while the shop's real reads were kept at 10%.
    const probes: { path: string; method: string; type?: string }[] = [];
    for (let i = 0; i < 10; i++) {
      probes.push({ path: `/shopmesh.x${i}.v1.S/M${i}`, method: "POST", type: "application/json" });
      probes.push({ path: `/v1/nothing-${i}`, method: "GET" });
      probes.push({ path: `/shopmesh.x${i}.v1.S/M`, method: "POST", type: "application/grpc-web+proto" });
      probes.push({ path: `/shopmesh.x${i}.v1.S/M`, method: "POST", type: "application/grpc" });
    }
    const session = http2.connect(gw.url);
    try {
      for (const p of probes) {
        const status = await new Promise<number>((resolve, reject) => {
          const s = session.request({
            ":method": p.method,
            ":path": p.path,
            ...(p.type ? { "content-type": p.type } : {}),
          });
          let st = 0;
          s.on("response", (h) => {
            st = Number(h[":status"]);
          });
          s.on("error", reject);
          s.on("close", () => resolve(st));
          s.resume();
          s.end(p.method === "POST" ? "{}" : undefined);
        });
        expect(status).toBeGreaterThan(0);
      }
    } finally {
      session.close();
    }
    // Nor do tokenless writes, nor writes with a forged token (refused 401), nor a customer's writes over
    // the rate limit (refused 429): none did anything, and a flood of each wrote a span per request.
    const place = (headers: Record<string, string>) =>
      fetch(`${gw.url}/shopmesh.order.v1.OrderService/PlaceOrder`, {
        method: "POST",
        headers: { "content-type": "application/json", ...headers },
        body: "{}",
      }).then((r) => r.status);
    for (let i = 0; i < 10; i++) expect(await place({})).toBe(401);
    for (let i = 0; i < 10; i++) expect(await place({ authorization: "Bearer not-a-token" })).toBe(401);
    const mallory = { authorization: `Bearer ${await signDevToken(claims, "mallory", ["customer"])}` };
    const statuses = await Promise.all(Array.from({ length: 12 }, () => place(mallory)));
    // Admitted (the upstream is unreachable: 503) until the customer's burst of 5 is spent, then refused.
    expect(statuses.filter((s) => s === 429).length).toBeGreaterThan(0);
    const admitted = statuses.filter((s) => s !== 429).length;
    expect(admitted).toBeGreaterThan(0);
    // What was admitted is a write, whatever became of it: a new trace each, kept.
    const traced = () =>
      spans.getFinishedSpans().filter((s) => s.kind === SpanKind.SERVER && s.name.endsWith("/PlaceOrder")).length;
    await expect.poll(traced).toBe(admitted);
    await new Promise((r) => setTimeout(r, 200)); // and no more after it
    expect(traced()).toBe(admitted);
    expect(spans.getFinishedSpans().filter((s) => s.name === "unknown").length).toBe(0);
  });
});

describe("make run's readable lines: one line per entry, whatever its text", () => {
  // What a process writes (pino JSON: its own line, escaped) with text another wrote inside: an
  // error's message from a peer, a reason, a NATS or PostgreSQL line quoting a value.
  const ESC = "\x1b";
  const forged = `\ngateway        | [12:00:00.000] INFO: access {"principal":"admin"}${ESC}]0;owned${ESC}\\${ESC}[2J`;
  const entry = (fields: Record<string, unknown>) =>
    JSON.stringify({ level: 40, time: Date.UTC(2026, 0, 1), service: "gateway", ...fields });
  const lines = [
    entry({
      err: { type: "Error", message: `boom${forged}`, stack: `Error: boom${forged}\n    at f (x.js:1:1)` },
      msg: "request failed",
    }),
    entry({ msg: `handler failed${forged}` }),
    entry({ reason: `a\u009b2J\u202eb\u200bc\x7f`, msg: "rpc" }),
    entry({ name: `n${forged}`, caller: `c${forged}`, msg: "x" }),
    `2026-01-01 00:00:00 UTC [7] ERROR:  invalid input syntax for type uuid: "x${ESC}[2J\ry"`,
  ];
  /** The terminal's own colours pino-pretty adds (SGR), which are no text of anyone's. */
  const sgr = new RegExp(`${ESC}\\[[0-9;]*m`, "g");
  /** What must never reach the terminal raw: a line break, an escape, DEL and C1, a direction override, a zero-width space. */
  // biome-ignore lint/suspicious/noControlCharactersInRegex: they are what is looked for
  const unsafe = /[\n\r\x1b\x7f-\x9f\u202e\u200b]/;

  it("an error's stack, a message, a field or a plain line holds no line break, escape sequence or hidden character", async () => {
    for (const colorize of [false, true]) {
      const readable = await readableLines(colorize);
      for (const line of lines) {
        const out = readable(line).replace(sgr, "");
        // Before: an err printed over 8 lines, the forged one among them unprefixed and looking like the
        // gateway's; the terminal retitled and cleared by the stack and the message; C1's CSI and a
        // right-to-left override raw in a field (JSON leaves them).
        expect(out).not.toMatch(unsafe);
        expect(out).toMatch(/\\(x1b|u001b|u\{9b\}|x0d)/);
      }
    }
  });

  it("a field pino-pretty prints raw holds no line break or escape when it is no string (review hR)", async () => {
    // Found by review: only a string name, caller, time or msg was escaped; as an array pino-pretty printed
    // it raw (String()), so `"name":["x\\ngateway | ..."]` still started a forged line.
    for (const colorize of [false, true]) {
      const readable = await readableLines(colorize);
      for (const key of ["name", "caller", "time", "msg"]) {
        const out = readable(entry({ msg: "x", [key]: [`v${forged}`], extra: { k: [`w${forged}`] } })).replace(sgr, "");
        expect(out).not.toMatch(unsafe);
      }
    }
  });

  it("still reads as pino-pretty's line, the error's message and stack in it", async () => {
    const readable = await readableLines(false);
    const out = readable(lines[0] as string);
    expect(out).toMatch(/^\[\d\d:\d\d:\d\d\.\d{3}\] WARN: request failed \{"err":\{"type":"Error","message":"boom/);
    expect(out).toContain("at f (x.js:1:1)");
    expect(readable(entry({ procedure: "p", code: "OK", msg: "access" }))).toMatch(
      /\] WARN: access \{"procedure":"p","code":"OK"\}$/,
    );
    expect(readable("STATEMENT:  SELECT 1\tFROM x")).toBe("STATEMENT:  SELECT 1\tFROM x");
    expect(readable("[42] 2026/11/30 05:41:54.772416 [INF] Server is ready")).toBe(
      "[42] 2026/11/30 05:41:54.772416 [INF] Server is ready",
    );
  });
});

describe("a process started on its own with LOG_FORMAT=pretty prints as make run does", () => {
  // platform/log.ts rendered with pino-pretty's own stream: an err over many lines, its stack and the
  // message raw (a line break forged a line, an escape sequence drove the terminal).
  it("one line per entry, the error's text escaped", async () => {
    const script = `const { createLogger } = await import(${JSON.stringify(join(ROOT, "platform", "log.ts"))});
      const log = await createLogger({ service: "x", level: "info", format: "pretty" });
      log.error({ err: new Error("boom\\nforged | line\\x1b[2J") }, "failed\\nsecond \\x1b[31mred");`;
    const { code, out } = await runToEnd(process.execPath, ["--import", "tsx", "--input-type=module", "-e", script], {
      env: process.env,
    });
    expect(code, out).toBe(0);
    expect(out.trimEnd().split("\n"), out).toHaveLength(1);
    // biome-ignore lint/suspicious/noControlCharactersInRegex: it is what must not be there
    expect(out).not.toMatch(/\x1b/);
    expect(out).toMatch(/ERROR: failed\\x0asecond \\x1b\[31mred \{"err":\{"type":"Error","message":"boom\\nforged/);
  });
});

describe("LOG_FORMAT=json: a process's line names that process, and no other", () => {
  it("a JSON line that says it is another process's is kept as this one's text", () => {
    // What a compromised payment prints (or any process logs with a `proc` field): before, the runner
    // put `"proc":"payment"` in front and kept the rest, and jq, like most readers, took the last key —
    // the gateway's line, an admin's call in it.
    const forged = '{"level":30,"time":"2026-01-01T00:00:00.000Z","proc":"gateway","msg":"access","principal":"admin"}';
    for (const line of [forged, '{"pr\\u006fc":"gateway","msg":"access"}']) {
      const out = JSON.parse(jsonLine("payment", line, false)) as Record<string, unknown>;
      expect(out).toMatchObject({ proc: "payment", level: 30, msg: line });
    }
    // A line without one is still kept as written.
    expect(jsonLine("payment", '{"level":30,"msg":"x"}', false)).toBe('{"proc":"payment","level":30,"msg":"x"}');
  });
});

describe("make trace ORDER=<id> of an order in several traces", () => {
  it("echoes the id escaped in its 'appears in' line, as in every other", async () => {
    using dir = tempDir();
    const file = join(dir.path, "traces.jsonl");
    // The span file is whatever the processes wrote (a foreign one too); the id as the operator
    // pasted it from another tool's raw output.
    const id = "ord_\x1b]0;owned\x07\x1b[2J";
    const span = (trace: string) => ({
      trace_id: trace,
      span_id: `s${trace}`,
      parent_id: "",
      service: "order",
      name: "PlaceOrder",
      kind: "SERVER",
      start_ms: 1,
      duration_ms: 2,
      error: "",
      attributes: { "order.id": id },
    });
    writeFileSync(file, `${[span("t1"), span("t2")].map((s) => JSON.stringify(s)).join("\n")}\n`);
    const run = await runToEnd(process.execPath, built("scripts/trace.ts"), {
      env: { ...process.env, TRACE_FILE: file, ORDER: id },
    });
    expect(run.code, run.out).toBe(0);
    expect(run.out).toContain("order ord_\\x1b]0;owned\\x07\\x1b[2J appears in 2 traces; showing t1");
    expect(run.out).not.toContain("\x1b");
  });
});

describe("make trace with a span that ends before it starts", () => {
  it("draws the trace, leaving out the span that is none, instead of ending in a RangeError", async () => {
    using dir = tempDir();
    const file = join(dir.path, "traces.jsonl");
    const span = (id: string, start: number, duration: number) => ({
      trace_id: "t1",
      span_id: id,
      parent_id: "",
      service: "order",
      name: `step ${id}`,
      kind: "SERVER",
      start_ms: start,
      duration_ms: duration,
      error: "",
      attributes: { "order.id": "ord_1" },
    });
    // Any process may write the shared span file: one line with a negative duration took the whole
    // trace's waterfall away, a stack trace in its place.
    const lines = [span("a", 0, 10), span("b", 100, -200), span("c", 5, 2)];
    writeFileSync(file, `${lines.map((s) => JSON.stringify(s)).join("\n")}\n`);
    const run = await runToEnd(process.execPath, built("scripts/trace.ts"), {
      env: { ...process.env, TRACE_FILE: file, ORDER: "ord_1" },
    });
    expect(run.code, run.out).toBe(0);
    expect(run.out).toContain("trace t1  2 spans  10.0 ms");
    expect(run.out).toContain("order: step c");
    expect(run.out).not.toContain("RangeError");
  });
});

describe("TRUST_TRACEPARENT continues a client's trace context, and nothing more", () => {
  it("sends upstream its traceparent and tracestate, not the baggage it came with", async () => {
    const stopTracing = await startTracing({ service: "gateway", otlpEndpoint: "", traceFile: "", sampleRatio: 1 });
    // The upstream: what metadata a service receives from the gateway.
    const seen: grpc.MetadataValue[][] = [];
    const traced: string[] = [];
    const server = new grpc.Server();
    const bytes = (b: Buffer) => b;
    const path = "/shopmesh.inventory.v1.InventoryService/GetProduct";
    const method = {
      path,
      requestStream: false,
      responseStream: false,
      requestSerialize: bytes,
      requestDeserialize: bytes,
      responseSerialize: bytes,
      responseDeserialize: bytes,
    };
    server.addService(
      { GetProduct: method },
      {
        GetProduct: (call: grpc.ServerUnaryCall<Buffer, Buffer>, cb: grpc.sendUnaryData<Buffer>) => {
          seen.push(call.metadata.get("baggage"));
          traced.push(
            String(call.metadata.get("traceparent")[0] ?? ""),
            String(call.metadata.get("tracestate")[0] ?? ""),
          );
          cb(null, Buffer.alloc(0));
        },
      },
    );
    const port = await new Promise<number>((resolve, reject) =>
      server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (e, p) => (e ? reject(e) : resolve(p))),
    );
    const targets = Object.fromEntries(UPSTREAMS.map((u) => [targetVariable(u), `127.0.0.1:${port}`]));
    const config = gatewayConfig({ HTTP_HOST: "127.0.0.1", HTTP_PORT: "0", TRUST_TRACEPARENT: "true", ...targets });
    const gw = await startGateway(config, silentLogger());
    try {
      const token = await signDevToken(claims, "alice", ["customer"]);
      const res = await fetch(`${gw.url}${path}`, {
        method: "POST",
        headers: {
          "content-type": "application/json",
          authorization: `Bearer ${token}`,
          traceparent: `00-${"a".repeat(32)}-${"b".repeat(16)}-01`,
          tracestate: "vendor=v1",
          // Before: every byte of it went, as gRPC metadata, on every call to every service the call
          // reached (and on from there): 4 KB of a client's key-values, `user=admin` among them.
          baggage: `user=admin,pad=${"y".repeat(4000)}`,
        },
        body: '{"productId":"p1"}',
      });
      expect(res.status).toBe(200);
      expect(seen).toEqual([[]]);
      expect(traced[0]).toMatch(new RegExp(`^00-${"a".repeat(32)}-[0-9a-f]{16}-01$`));
      expect(traced[1]).toBe("vendor=v1");
    } finally {
      await gw.stop();
      server.forceShutdown();
      await stopTracing();
    }
  });
});
