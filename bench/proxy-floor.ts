/**
 * The floor under the gateway's gRPC fast path: what a bare node:http2
 * proxy — no auth, no limits, no telemetry, no logic at all: each call's
 * frames passed to the inventory service over one HTTP/2 session and its
 * answer passed back — makes of the same call on this machine, beside
 * direct gRPC and the gateway, in one run, each from a load generator in a
 * process of its own (bench/load.ts).
 *
 *   npx tsx bench/proxy-floor.ts                (make build first: it runs dist/)
 *   FLOOR_SECONDS=6  FLOOR_RATES=200,1000
 *
 * Two proxies, each a process of its own with the gateway's node flags:
 * one on node:http2's core API (`stream` events: the least Node offers),
 * one on its compatibility API (request/response objects, which the
 * gateway's front uses). Closed loop (64 in flight) for throughput, and
 * open loop at FLOOR_RATES for the latency a hop adds at a given load.
 * Telemetry is off everywhere (the proxies have none). The proxies bind
 * as the system's processes do (platform/async-bind.ts).
 *
 * Run as `proxy-floor.js proxy <core|compat> <host:port>`, it is one proxy.
 */
import { spawn } from "node:child_process";
import http2 from "node:http2";
import net from "node:net";
import { createInterface } from "node:readline";
import { signDevToken } from "../gateway/auth.js";
import { DEV_JWT_SECRET } from "../gateway/config.js";
import { installLeanAsyncBind } from "../platform/async-bind.js";
import { configOrExit, EXIT_REFUSED, num, parseEnv, str } from "../platform/config.js";
import { nodeCommand, SYSTEM_ENV, systemNodeFlags } from "../scripts/layout.js";
import type { LoadSpec } from "./load.js";
import { cpuSeconds, load, restock, startSystem } from "./system.js";

const c = http2.constants;

/** One HTTP/2 session to `target`, reopened when it closes. */
function upstream(target: string): () => http2.ClientHttp2Session {
  const sep = target.lastIndexOf(":");
  const [host, port] = [target.slice(0, sep), Number(target.slice(sep + 1))];
  let session: http2.ClientHttp2Session | undefined;
  return () => {
    if (session && !session.closed && !session.destroyed) return session;
    const s = http2.connect(`http://${target}`, { createConnection: () => net.connect({ host, port, noDelay: true }) });
    s.on("error", () => {});
    s.on("close", () => {
      if (session === s) session = undefined;
    });
    session = s;
    return s;
  };
}

/** Request headers worth forwarding: the method, path and the gRPC ones; the session sets the rest. */
function forwardHeaders(h: http2.IncomingHttpHeaders): http2.OutgoingHttpHeaders {
  const out: http2.OutgoingHttpHeaders = { ":method": "POST", ":path": h[":path"], te: "trailers" };
  for (const k of ["content-type", "grpc-timeout", "authorization"]) if (h[k] !== undefined) out[k] = h[k];
  return out;
}

/** The proxy on node:http2's core API. */
function coreProxy(target: string): http2.Http2Server {
  const session = upstream(target);
  return http2.createServer().on("stream", (stream, headers) => {
    const up = session().request(forwardHeaders(headers));
    let trailers: http2.OutgoingHttpHeaders = { "grpc-status": "13" };
    up.on("response", (h) => {
      const { ":status": status, ...rest } = h;
      if (h["grpc-status"] !== undefined) stream.respond({ ":status": status, ...rest }, { endStream: true });
      else stream.respond({ ":status": status, ...rest }, { waitForTrailers: true });
    });
    up.on("trailers", (t) => {
      trailers = t;
    });
    up.on("data", (d: Buffer) => stream.write(d));
    up.on("end", () => {
      if (!stream.closed && stream.headersSent) stream.end();
    });
    up.on("error", () => stream.close(c.NGHTTP2_INTERNAL_ERROR));
    stream.on("wantTrailers", () => stream.sendTrailers(trailers));
    stream.on("data", (d: Buffer) => up.write(d));
    stream.on("end", () => up.end());
    stream.on("error", () => {});
    stream.on("close", () => {
      if (!up.closed) up.close(c.NGHTTP2_CANCEL);
    });
  });
}

/** The proxy on node:http2's compatibility API, as the gateway's front receives calls. */
function compatProxy(target: string): http2.Http2Server {
  const session = upstream(target);
  return http2.createServer((req, res) => {
    const up = session().request(forwardHeaders(req.headers));
    up.on("response", (h) => {
      res.statusCode = Number(h[":status"]);
      for (const [k, v] of Object.entries(h)) if (!k.startsWith(":") && v !== undefined) res.setHeader(k, v);
      if (h["grpc-status"] !== undefined) res.end();
    });
    up.on("trailers", (t) => res.addTrailers(t as Record<string, string>));
    up.on("data", (d: Buffer) => res.write(d));
    up.on("end", () => {
      if (!res.writableEnded) res.end();
    });
    up.on("error", () => res.stream.close(c.NGHTTP2_INTERNAL_ERROR));
    req.on("data", (d: Buffer) => up.write(d));
    req.on("end", () => up.end());
    res.on("close", () => {
      if (!up.closed) up.close(c.NGHTTP2_CANCEL);
    });
  });
}

/** Starts one proxy process; resolves with its port. */
function startProxy(kind: "core" | "compat", target: string): Promise<{ port: number; pid: number; stop(): void }> {
  const [cmd, args] = nodeCommand("bench/proxy-floor.ts", systemNodeFlags("gateway/main.ts"));
  const child = spawn(cmd, [...args, "proxy", kind, target], {
    env: { ...process.env, ...SYSTEM_ENV },
    stdio: ["ignore", "pipe", "inherit"],
  });
  return new Promise((resolve, reject) => {
    child.once("exit", (code) => reject(new Error(`proxy exited ${code}`)));
    createInterface({ input: child.stdout }).once("line", (line) =>
      resolve({ port: Number(JSON.parse(line).port), pid: child.pid ?? 0, stop: () => child.kill() }),
    );
  });
}

async function measure(): Promise<void> {
  const { FLOOR_SECONDS: seconds, FLOOR_RATES } = configOrExit(() =>
    parseEnv({ FLOOR_SECONDS: num(6, { min: 0.1, max: 3_600 }), FLOOR_RATES: str("200,1000") }, process.env),
  );
  const rates = FLOOR_RATES.split(",").map(Number);
  if (rates.some((r) => !Number.isFinite(r) || r <= 0)) {
    process.stderr.write(`FLOOR_RATES: "${FLOOR_RATES}" is not a list of calls per second (e.g. 200,1000)\n`);
    process.exit(EXIT_REFUSED);
  }
  const token = await signDevToken(
    { JWT_SECRET: DEV_JWT_SECRET, JWT_ISSUER: "shopmesh-dev", JWT_AUDIENCE: "shopmesh" },
    "bench",
    ["customer"],
  );
  const sys = await startSystem({ telemetry: false, token });
  const core = await startProxy("core", sys.addressOf("inventory"));
  const compat = await startProxy("compat", sys.addressOf("inventory"));
  try {
    await restock(sys);
    const gw = sys.procs.find((p) => p.name === "gateway");
    const inv = sys.procs.find((p) => p.name === "inventory");
    const targets: Array<[string, string, string | undefined, number | undefined]> = [
      ["direct gRPC", sys.addressOf("inventory"), undefined, undefined],
      ["bare proxy, core API", `127.0.0.1:${core.port}`, undefined, core.pid],
      ["bare proxy, compat API", `127.0.0.1:${compat.port}`, undefined, compat.pid],
      ["gateway gRPC", sys.addressOf("gateway"), token, gw?.child.pid],
    ];
    const base = { client: "grpc" as const, seconds, warmupSeconds: Math.min(2, seconds / 4) };
    const shapes: Array<[string, Partial<LoadSpec>]> = [
      ["64 in flight", { concurrency: 64 }],
      ...rates.map((r): [string, Partial<LoadSpec>] => [`${r}/s`, { rate: r }]),
    ];
    process.stdout.write(
      `${"path".padEnd(24)} ${"load".padEnd(13)} ${"call/s".padStart(6)} ${"p50 ms".padStart(7)} ${"p99 ms".padStart(7)} ${"direct".padStart(6)} ${"hop CPU ms".padStart(10)} ${"inv CPU ms".padStart(10)}\n`,
    );
    for (const [shape, extra] of shapes) {
      let direct = 0;
      for (const [path, target, tok, pid] of targets) {
        const before = [cpuSeconds(pid), cpuSeconds(inv?.child.pid)];
        const r = await load({ ...base, ...extra, target, ...(tok ? { token: tok } : {}) } as LoadSpec);
        const used = [cpuSeconds(pid) - (before[0] ?? 0), cpuSeconds(inv?.child.pid) - (before[1] ?? 0)];
        const share = seconds / (seconds + base.warmupSeconds);
        const per = (s: number) => (r.calls ? ((s * share * 1000) / r.calls).toFixed(2) : "-");
        if (path === "direct gRPC") direct = r.rps;
        const ratio = extra.concurrency && direct ? `${Math.round((r.rps / direct) * 100)}%` : "";
        process.stdout.write(
          `${path.padEnd(24)} ${shape.padEnd(13)} ${String(r.rps).padStart(6)} ${r.p50_ms.toFixed(2).padStart(7)} ${r.p99_ms.toFixed(1).padStart(7)} ${ratio.padStart(6)} ${(pid ? per(used[0] ?? 0) : "").padStart(10)} ${per(used[1] ?? 0).padStart(10)}${r.failures ? `  ${r.failures} failed: ${r.firstError}` : ""}\n`,
        );
      }
    }
  } finally {
    core.stop();
    compat.stop();
    await sys.stop();
  }
}

if (process.argv[2] === "proxy") {
  installLeanAsyncBind(); // as every system process runs: the floor pays for no more of Node than the gateway does
  const server = process.argv[3] === "core" ? coreProxy(process.argv[4] ?? "") : compatProxy(process.argv[4] ?? "");
  server.on("connection", (s: net.Socket) => s.setNoDelay(true));
  server.listen(0, "127.0.0.1", () => {
    const addr = server.address();
    process.stdout.write(`${JSON.stringify({ port: typeof addr === "object" && addr ? addr.port : 0 })}\n`);
  });
  process.on("SIGTERM", () => process.exit(0));
} else {
  await measure();
  process.exit(0);
}
