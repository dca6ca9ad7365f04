/**
 * A hostile client at the HTTP/2 frame level, against the gateway's port and a service's: hand-written
 * frames on a raw socket, as the known attacks send them (rapid reset, CONTINUATION and PING/SETTINGS
 * floods, a table-size bomb, streams past the advertised limit, frames the spec forbids). For each:
 * the process lives, the attacker's connection is closed or its excess refused within a bound, a
 * client on another connection is answered meanwhile, and the attacked process's memory stays bounded.
 */
import { readFileSync } from "node:fs";
import type http2 from "node:http2";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { signDevToken } from "../gateway/auth.js";
import { DEV_JWT_SECRET, targetVariable } from "../gateway/config.js";
import { UPSTREAMS } from "../gateway/routes.js";
import { CONNECTION_LIMITS } from "../platform/grpc-port.js";
import { silentLogger } from "../platform/log.js";
import { startGrpcServer } from "../platform/server.js";
import { TestDatabases } from "./db.js";
import { type ServiceProcess, spawnGateway, spawnService, tempDir } from "./fixtures.js";
import {
  envelope,
  H2_PREFACE,
  h2Frame,
  h2Request,
  h2Session,
  hpackLiteral,
  type RawConnection,
  rawConnect,
  readFrames,
} from "./raw.js";

/** Resident memory of `pid`, in MB. */
const rssMb = (pid: number) => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1]) / 1024;

const u32 = (n: number) => {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n >>> 0, 0);
  return b;
};
/** A SETTINGS frame with `[id, value]` pairs. */
const settings = (...pairs: [number, number][]) =>
  h2Frame(4, 0, 0, Buffer.concat(pairs.map(([id, v]) => Buffer.concat([Buffer.from([0, id]), u32(v)]))));

const FRAME = {
  DATA: 0,
  HEADERS: 1,
  RST_STREAM: 3,
  SETTINGS: 4,
  PING: 6,
  GOAWAY: 7,
  WINDOW_UPDATE: 8,
  CONTINUATION: 9,
};
const ERR = { PROTOCOL: 1, FLOW_CONTROL: 3, FRAME_SIZE: 6, REFUSED_STREAM: 7, CANCEL: 8, COMPRESSION: 9, CALM: 11 };

/** What the attacker's connection saw: the GOAWAY's error code (if one came), resets by code, closure. */
interface Attacker {
  readonly c: RawConnection;
  /** ms from the preface to the GOAWAY, or to the close when none came first. */
  endedAfter(): number | undefined;
  goaway(): number | undefined;
  resets(code: number): number;
  closed(): boolean;
}

/** Opens an attacker's connection from 127.0.0.2 (its own rate limits), preface sent. */
async function attacker(port: number): Promise<Attacker> {
  const c = await rawConnect(port, "127.0.0.1", "127.0.0.2");
  let goaway: number | undefined;
  let endedAt: number | undefined;
  const started = Date.now();
  c.socket.once("close", () => {
    endedAt ??= Date.now();
  });
  const resets = new Map<number, number>();
  readFrames(c.socket, (type, _flags, _id, payload) => {
    if (type === FRAME.GOAWAY) {
      goaway ??= payload.readUInt32BE(4);
      endedAt ??= Date.now();
    }
    if (type === FRAME.RST_STREAM) resets.set(payload.readUInt32BE(0), (resets.get(payload.readUInt32BE(0)) ?? 0) + 1);
  });
  await c.write(H2_PREFACE);
  return {
    c,
    endedAfter: () => (endedAt === undefined ? undefined : endedAt - started),
    goaway: () => goaway,
    resets: (code) => resets.get(code) ?? 0,
    closed: () => c.socket.destroyed || c.socket.readableEnded,
  };
}

/** Resolves once `cond` holds, or after `ms` (then with false). */
async function within(ms: number, cond: () => boolean): Promise<boolean> {
  const until = Date.now() + ms;
  while (!cond() && Date.now() < until) await new Promise((r) => setTimeout(r, 20));
  return cond();
}

/** A request's header block: literals without indexing (RFC 7541 §6.2.2), as many times as an attacker likes. */
function requestBlock(path: string, extra: [string, string][] = []): Buffer {
  return Buffer.concat([
    Buffer.from([0x83, 0x86]), // :method POST, :scheme http (static table)
    hpackLiteral(":path", path),
    hpackLiteral(":authority", "localhost"),
    hpackLiteral("content-type", "application/grpc"),
    hpackLiteral("te", "trailers"),
    ...extra.map(([k, v]) => hpackLiteral(k, v)),
  ]);
}

const LIST = "/shopmesh.inventory.v1.InventoryService/ListProducts";

/** How long a legitimate call may take during an attack: generous, on a loaded 2-core machine. */
const LEGIT_MS = 3_000;

interface Target {
  readonly name: string;
  proc(): ServiceProcess;
  /** One legitimate call on `session` (another connection than the attacker's): true when answered well. */
  call(session: http2.ClientHttp2Session): Promise<boolean>;
}

// Not `using`: disposed as the module's body ends, before any test, and the service made it again (left
// behind after every run).
const dir = tempDir();
let svc: ServiceProcess;
let gw: ServiceProcess;
let token = "";

beforeAll(async () => {
  svc = await spawnService("inventory", { ...(await new TestDatabases(dir.path).env("inventory")), NATS_URL: "off" });
  const targets = Object.fromEntries(UPSTREAMS.map((u) => [targetVariable(u), svc.address]));
  gw = await spawnGateway({ HTTP_HOST: "127.0.0.1", ...targets, NATS_URL: "off", METRICS_PORT: "0" });
  const auth = { JWT_SECRET: DEV_JWT_SECRET, JWT_ISSUER: "shopmesh-dev", JWT_AUDIENCE: "shopmesh" };
  token = await signDevToken(auth, "alice", ["customer"], 600);
}, 60_000);
afterAll(async () => {
  await gw?.[Symbol.asyncDispose]();
  await svc?.[Symbol.asyncDispose]();
  dir[Symbol.dispose]();
});

const TARGETS: Target[] = [
  {
    name: "the gateway",
    proc: () => gw,
    // A routed call, through the gateway's pipeline to the service: Connect JSON over HTTP/2.
    call: async (session) => {
      const r = await h2Request(
        session,
        { ":path": LIST, "content-type": "application/json", authorization: `Bearer ${token}` },
        Buffer.from("{}"),
        LEGIT_MS,
      );
      return r.status === 200;
    },
  },
  {
    name: "a service",
    proc: () => svc,
    call: async (session) => {
      const r = await h2Request(
        session,
        { ":path": "/grpc.health.v1.Health/Check", "content-type": "application/grpc", te: "trailers" },
        envelope(new Uint8Array(0)),
        LEGIT_MS,
      );
      return r.grpcStatus === 0;
    },
  },
];

/**
 * Runs `attack` against `t` while a legitimate client calls on its own connection every 100 ms; returns
 * the slowest legitimate call (ms), whether all were answered, and the attacked process's RSS growth (MB,
 * its peak during the attack over its value before).
 */
async function underAttack(t: Target, attack: () => Promise<void>) {
  const pid = t.proc().child.pid ?? 0;
  await using legit = await h2Session(`http://127.0.0.1:${t.proc().port}`);
  expect(await t.call(legit)).toBe(true); // warm: the connection, the route, the upstream
  const before = rssMb(pid);
  let peak = before;
  let slowest = 0;
  let failed = 0;
  let calls = 0;
  let done = false;
  const sampler = (async () => {
    while (!done) {
      peak = Math.max(peak, rssMb(pid));
      const started = Date.now();
      const ok = await t.call(legit).catch(() => false);
      slowest = Math.max(slowest, Date.now() - started);
      calls++;
      if (!ok) failed++;
      await new Promise((r) => setTimeout(r, 100));
    }
  })();
  await attack();
  done = true;
  await sampler;
  peak = Math.max(peak, rssMb(pid));
  // And a new connection afterwards.
  await using after = await h2Session(`http://127.0.0.1:${t.proc().port}`);
  const servedAfter = await t.call(after);
  return { slowest, calls, failed, grownMb: Math.round(peak - before), servedAfter };
}

/** Writes `frames()` again and again for `ms` or until the connection closes; the frames written. */
async function flood(a: Attacker, ms: number, frames: () => Buffer): Promise<number> {
  const until = Date.now() + ms;
  let n = 0;
  while (Date.now() < until && !a.closed()) {
    const ok = a.c.socket.write(frames());
    n++;
    // The kernel's buffer full: wait for it to drain, as long as the flood lasts.
    if (!ok)
      await Promise.race([new Promise((r) => a.c.socket.once("drain", r)), within(until - Date.now(), a.closed)]);
    else if (n % 8 === 0) await new Promise((r) => setImmediate(r));
  }
  return n;
}

/**
 * What every attack must leave: the process alive, the legitimate client answered throughout and on a
 * new connection after, and the attacked process's memory grown by less than `mb` — a quarter of a
 * pod's 256 MiB limit (deploy/kubernetes/base) unless the test says why more.
 */
function survived(t: Target, r: Awaited<ReturnType<typeof underAttack>>, mb = 64): void {
  expect(t.proc().child.exitCode, "the attacked process exited").toBe(null);
  expect(r.failed, `legitimate calls not answered within ${LEGIT_MS} ms`).toBe(0);
  expect(r.calls).toBeGreaterThan(0);
  expect(r.servedAfter, "a new connection served after the attack").toBe(true);
  expect(r.grownMb, `RSS grew ${r.grownMb} MB`).toBeLessThan(mb);
}

describe.each(TARGETS)("$name, against frames a hostile client writes", (t) => {
  // Node's HTTP/2 (nghttp2) sends GOAWAY once a peer has reset 1,000 streams beyond 33 a second, and reads
  // nothing more from it: here after ~0.3-0.6 s of a flood that opens and resets ~10,000 streams a second.
  it("rapid reset (CVE-2023-44487): streams opened and reset at once get a GOAWAY within the flood", async () => {
    let a: Attacker | undefined;
    const r = await underAttack(t, async () => {
      a = await attacker(t.proc().port);
      const block = requestBlock(LIST);
      let id = 1;
      await flood(a, 3_000, () => {
        const out: Buffer[] = [];
        for (let i = 0; i < 200; i++, id += 2) {
          out.push(h2Frame(FRAME.HEADERS, 0x4, id, block), h2Frame(FRAME.RST_STREAM, 0, id, u32(ERR.CANCEL)));
        }
        return Buffer.concat(out);
      });
    });
    await a?.c[Symbol.asyncDispose]();
    survived(t, r);
    expect(a?.goaway(), "GOAWAY").toBeDefined();
    expect(a?.endedAfter()).toBeLessThan(3_000);
  }, 30_000);

  it("CONTINUATION flood (CVE-2024-27316): a header block that never ends is cut at the header-list limit", async () => {
    let a: Attacker | undefined;
    const r = await underAttack(t, async () => {
      a = await attacker(t.proc().port);
      await a.c.write(h2Frame(FRAME.HEADERS, 0, 1, requestBlock(LIST))); // no END_HEADERS
      const pad = hpackLiteral("x-pad", "a".repeat(16_000));
      await flood(a, 3_000, () => h2Frame(FRAME.CONTINUATION, 0, 1, pad));
    });
    await a?.c[Symbol.asyncDispose]();
    survived(t, r);
    expect(a?.closed(), "the attacker's connection closed").toBe(true);
    expect(a?.endedAfter()).toBeLessThan(3_000);
  }, 30_000);

  it("CONTINUATION flood of empty frames is cut too (nothing accumulates to reach a size limit)", async () => {
    let a: Attacker | undefined;
    const r = await underAttack(t, async () => {
      a = await attacker(t.proc().port);
      await a.c.write(h2Frame(FRAME.HEADERS, 0, 1, requestBlock(LIST))); // no END_HEADERS
      const empty = Buffer.concat(Array.from({ length: 100 }, () => h2Frame(FRAME.CONTINUATION, 0, 1)));
      await flood(a, 3_000, () => empty);
    });
    await a?.c[Symbol.asyncDispose]();
    survived(t, r);
    expect(a?.closed(), "the attacker's connection closed").toBe(true);
    expect(a?.endedAfter()).toBeLessThan(3_000);
  }, 30_000);

  // Each PING and SETTINGS needs an ACK the server queues while its peer does not read; nghttp2 closes a
  // connection past 1,000 queued ACKs (its max outbound ack), before they take memory.
  it.each([
    ["PING", () => h2Frame(FRAME.PING, 0, 0, Buffer.alloc(8))],
    ["SETTINGS", () => settings([4, 65_535])],
  ])(
    "%s flood whose ACKs are never read: the connection is closed",
    async (_name, frame) => {
      let a: Attacker | undefined;
      const r = await underAttack(t, async () => {
        a = await attacker(t.proc().port);
        a.c.socket.pause();
        const many = Buffer.concat(Array.from({ length: 500 }, frame));
        await flood(a, 3_000, () => many);
      });
      await a?.c[Symbol.asyncDispose]();
      survived(t, r);
      expect(a?.closed(), "the attacker's connection closed").toBe(true);
      expect(a?.endedAfter()).toBeLessThan(3_000);
    },
    30_000,
  );

  it("an HPACK bomb: a table size update, one large field, then thousands of one-byte references to it", async () => {
    let a: Attacker | undefined;
    let refused = 0;
    let served = 0;
    const r = await underAttack(t, async () => {
      a = await attacker(t.proc().port);
      readFrames(a.c.socket, (type, flags, _id, p) => {
        if (type === FRAME.RST_STREAM) refused++;
        // A refusal: 431 (the gateway) or a trailers-only gRPC status (a service); a 200 with a body is served.
        if (type === FRAME.HEADERS && (flags & 0x1 || p.includes("431"))) refused++;
        if (type === FRAME.DATA && p.length > 0) served++;
      });
      // 0x3f e1 1f: a dynamic table size update to 4,096 (RFC 7541 §6.3), then a 4,000-byte field
      // added to the table and named 4,000 times: ~8 KB on the wire, 16 MB decoded, per call.
      const bomb = Buffer.concat([
        Buffer.from([0x3f, 0xe1, 0x1f]),
        requestBlock(LIST),
        hpackLiteral("x-a", Buffer.alloc(4_000, 0x61), true),
        Buffer.alloc(4_000, 0xbe), // indexed field 62: the newest entry of the dynamic table
      ]);
      for (let id = 1; id < 2 * 50 && !a.closed(); id += 2) {
        await a.c.write(h2Frame(FRAME.HEADERS, 0x4, id, bomb)).catch(() => {});
      }
      await within(3_000, () => refused >= 50 || (a?.closed() ?? true));
    });
    await a?.c[Symbol.asyncDispose]();
    survived(t, r);
    expect(served, "bombs served").toBe(0);
    expect(refused === 50 || a?.closed(), `${refused} of 50 refused`).toBe(true);
  }, 30_000);

  // The service's 10,000 calls a connection held open cost ~75 MB (test/hostile-resources.test.ts bounds
  // them at 120 MB, platform/server.ts says why 10,000); the gateway's 100, little.
  it("streams past SETTINGS_MAX_CONCURRENT_STREAMS are refused with REFUSED_STREAM, not queued", async () => {
    let a: Attacker | undefined;
    let advertised = 0;
    const r = await underAttack(t, async () => {
      a = await attacker(t.proc().port);
      readFrames(a.c.socket, (type, flags, _id, p) => {
        if (type !== FRAME.SETTINGS || flags & 1) return;
        for (let i = 0; i + 6 <= p.length; i += 6) if (p.readUInt16BE(i) === 3) advertised = p.readUInt32BE(i + 2);
      });
      await within(2_000, () => advertised > 0);
      const block = requestBlock(LIST);
      // Held open: END_HEADERS, no END_STREAM, no body.
      const frames = Array.from({ length: advertised + 300 }, (_, i) => h2Frame(FRAME.HEADERS, 0x4, 1 + 2 * i, block));
      for (let i = 0; i < frames.length && !a.closed(); i += 500) {
        await a.c.write(Buffer.concat(frames.slice(i, i + 500))).catch(() => {});
      }
      await within(3_000, () => (a?.resets(ERR.REFUSED_STREAM) ?? 0) >= 300 || (a?.closed() ?? true));
    });
    await a?.c[Symbol.asyncDispose]();
    survived(t, r, t.name === "a service" ? 120 : 64);
    expect(advertised).toBeGreaterThan(0);
    expect(a?.resets(ERR.REFUSED_STREAM), "streams past the limit refused").toBe(300);
  }, 60_000);

  const INVALID: [string, () => Buffer, number][] = [
    ["DATA on stream 0", () => h2Frame(FRAME.DATA, 0, 0, Buffer.from("x")), ERR.PROTOCOL],
    ["HEADERS on an even stream id", () => h2Frame(FRAME.HEADERS, 0x5, 2, requestBlock(LIST)), ERR.PROTOCOL],
    [
      "a frame larger than SETTINGS_MAX_FRAME_SIZE",
      () => h2Frame(FRAME.PING, 0, 0, Buffer.alloc(20_000)),
      ERR.FRAME_SIZE,
    ],
    ["a PING of 9 bytes", () => h2Frame(FRAME.PING, 0, 0, Buffer.alloc(9)), ERR.FRAME_SIZE],
    ["a WINDOW_UPDATE past 2^31-1", () => h2Frame(FRAME.WINDOW_UPDATE, 0, 0, u32(0x7fffffff)), ERR.FLOW_CONTROL],
    ["a WINDOW_UPDATE of 0", () => h2Frame(FRAME.WINDOW_UPDATE, 0, 0, u32(0)), ERR.PROTOCOL],
    [
      "CONTINUATION with no HEADERS before it",
      () => h2Frame(FRAME.CONTINUATION, 0x4, 1, requestBlock(LIST)),
      ERR.PROTOCOL,
    ],
    [
      "a table size update past SETTINGS_HEADER_TABLE_SIZE",
      () =>
        h2Frame(
          FRAME.HEADERS,
          0x5,
          1,
          Buffer.concat([Buffer.from([0x3f, 0xe1, 0xff, 0xff, 0x0f]), requestBlock(LIST)]),
        ),
      ERR.COMPRESSION,
    ],
    ["SETTINGS_INITIAL_WINDOW_SIZE past 2^31-1", () => settings([4, 0x80000000]), ERR.FLOW_CONTROL],
    ["SETTINGS_MAX_FRAME_SIZE below 16,384", () => settings([5, 100]), ERR.PROTOCOL],
  ];
  // Node destroyed the session for some of these with INTERNAL_ERROR, a server fault, whatever the client
  // did (platform/goaway-codes.ts). nghttp2 answers the others itself and reads nothing more, but Node
  // keeps the socket until the idle timeout: a new stream on it is not served.
  it.each(INVALID)(
    "%s: GOAWAY with its code, nothing served after it, the process lives",
    async (name, frame, code) => {
      let a: Attacker | undefined;
      let servedAfter = false;
      const r = await underAttack(t, async () => {
        a = await attacker(t.proc().port);
        readFrames(a.c.socket, (type, _flags, id) => {
          if (type === FRAME.HEADERS && id === 101) servedAfter = true;
        });
        await a.c.write(frame()).catch(() => {});
        await within(3_000, () => a?.goaway() !== undefined);
        const probe = h2Frame(FRAME.HEADERS, 0x5, 101, requestBlock("/grpc.health.v1.Health/Check"));
        await a.c.write(probe).catch(() => {});
        await within(500, () => servedAfter);
      });
      await a?.c[Symbol.asyncDispose]();
      expect(t.proc().child.exitCode, name).toBe(null);
      expect(r.failed).toBe(0);
      expect(r.servedAfter).toBe(true);
      expect(a?.goaway(), "GOAWAY error code").toBe(code);
      expect(servedAfter, "a stream opened after the GOAWAY was served").toBe(false);
    },
    30_000,
  );
});

/** A reflection request for the file declaring `symbol` and its imports (the inventory service's: ~22 KB). */
const REFLECTION = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo";
const askFiles = (name = "shopmesh.inventory.v1.InventoryService") => {
  const symbol = Buffer.from(name);
  return envelope(Buffer.concat([Buffer.from([0x22, symbol.length]), symbol])); // file_containing_symbol
};

/** Opens `calls` reflection calls on `a`, whose receive window it has set to 0 first: nothing can be answered. */
async function unreadCalls(a: Attacker, calls: number): Promise<void> {
  await a.c.write(settings([4, 0])); // SETTINGS_INITIAL_WINDOW_SIZE 0
  const block = requestBlock(REFLECTION);
  for (let i = 0; i < calls; i += 200) {
    const out: Buffer[] = [];
    for (let id = 1 + 2 * i; id < 1 + 2 * Math.min(calls, i + 200); id += 2) {
      out.push(h2Frame(FRAME.HEADERS, 0x4, id, block), h2Frame(FRAME.DATA, 0x1, id, askFiles()));
    }
    await a.c.write(Buffer.concat(out));
  }
}

// The gateway's side of this is gateway/hostile-2.test.ts ("cuts calls whose answer cannot move").
describe("a service, against a client that asks and never reads the answers (receive window 0)", () => {
  // 2,000 such calls held ~22-45 MB of the service for as long as the client answered its pings —
  // for ever — and a connection may have 10,000 (~110-225 MB, near a pod's 256 MiB limit).
  it("holds their answers in bounded memory meanwhile", async () => {
    const t = TARGETS[1] as Target;
    let a: Attacker | undefined;
    const r = await underAttack(t, async () => {
      a = await attacker(t.proc().port);
      await unreadCalls(a, 2_000);
      await new Promise((res) => setTimeout(res, 2_000));
    });
    await a?.c[Symbol.asyncDispose]();
    survived(t, r);
  }, 60_000);

  it("cuts every call whose answer has not moved for the port's stall limit, and not one read in time", async () => {
    const server = await startGrpcServer({
      host: "127.0.0.1",
      port: 0,
      services: [],
      log: silentLogger(),
      limits: { ...CONNECTION_LIMITS, stallMs: 500 },
    });
    try {
      const a = await attacker(server.port);
      const cut = new Set<number>();
      readFrames(a.c.socket, (type, _flags, id, p) => {
        if (type === FRAME.RST_STREAM && p.readUInt32BE(0) === ERR.CANCEL) cut.add(id);
      });
      const started = Date.now();
      await unreadCalls(a, 200);
      await within(5_000, () => cut.size === 200);
      const took = Date.now() - started;
      await a.c[Symbol.asyncDispose]();
      expect(cut.size, "calls cut").toBe(200);
      expect(took, "cut within the limit and its sweep, on a loaded machine").toBeLessThan(4_000);
      // A client that reads gets its whole answer.
      await using legit = await h2Session(`http://${server.address}`);
      const r = await h2Request(
        legit,
        { ":path": REFLECTION, "content-type": "application/grpc", te: "trailers" },
        askFiles("grpc.health.v1.Health"),
      );
      expect(r.grpcStatus).toBe(0);
      expect(r.body.toString("latin1")).toContain("HealthCheckRequest");
    } finally {
      await server.stop(0);
    }
  }, 30_000);
});
