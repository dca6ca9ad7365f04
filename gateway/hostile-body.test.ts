/**
 * A hostile client's body in one-byte pieces (a hostile tester's findings, body.ts): within the
 * byte limit, each piece was kept as a Buffer of its own until the body ended (hundreds of MB for
 * one 1 MB call), and connect-es's envelope decoder summed every held piece's length on each new
 * one — a tokenless reflection stream stalled the whole gateway.
 */
import { monitorEventLoopDelay } from "node:perf_hooks";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { H2_PREFACE, h2Frame, hpackLiteral, type RawConnection, rawConnect, readFrames } from "../test/raw.js";
import { type System, startSystem, startTestGateway } from "../test/system.js";
import type { GatewayApp } from "./app.js";
import { signDevToken } from "./auth.js";
import { loadConfig } from "./config.js";

/** The gateway's body limit here: 1 MiB, as large as a deployment might raise it (the default is 64 KiB). */
const BODY_LIMIT = 1_048_576;
/** Bytes of the body: a valid GetProduct request followed by whitespace, within the limit. */
const BODY_BYTES = 1_000_000;
const JSON_HEAD = '{"productId":"coffee-beans"}';

let sys: System;
let gw: GatewayApp;
let token: string;

beforeAll(async () => {
  sys = await startSystem();
  gw = await startTestGateway(sys, { MAX_BODY_BYTES: String(BODY_LIMIT) });
  token = await signDevToken(loadConfig({}), "alice", ["customer"]);
});
afterAll(async () => {
  await gw.stop();
  await sys[Symbol.asyncDispose]();
});

/** The most this process's heap and RSS grew above where they started while `run` ran, in MB (sampled). */
async function peakGrowth(run: () => Promise<void>): Promise<{ heapMb: number; rssMb: number }> {
  (globalThis as { gc?: () => void }).gc?.();
  const start = process.memoryUsage();
  let heap = 0;
  let rss = 0;
  const sample = () => {
    const m = process.memoryUsage();
    heap = Math.max(heap, m.heapUsed - start.heapUsed);
    rss = Math.max(rss, m.rss - start.rss);
  };
  const timer = setInterval(sample, 20);
  try {
    await run();
  } finally {
    clearInterval(timer);
    sample();
  }
  return { heapMb: heap / 1e6, rssMb: rss / 1e6 };
}

async function writeAll(c: RawConnection, pieces: Iterable<Buffer>): Promise<void> {
  for (const p of pieces) await c.write(p);
}

/** Waits until the connection holds an HTTP/1.1 status line, or `ms` pass; the status. */
async function h1Status(c: RawConnection, ms: number): Promise<number> {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    const m = /^HTTP\/1\.1 (\d{3})/.exec(c.received().toString("latin1"));
    if (m) return Number(m[1]);
    await new Promise((r) => setTimeout(r, 20));
  }
  return 0;
}

describe("a body within the limit sent in one-byte pieces", () => {
  it("HTTP/1.1 chunked, 1-byte chunks: a 1 MB Connect body costs the gateway a few MB, not hundreds", async () => {
    const growth = await peakGrowth(async () => {
      await using c = await rawConnect(gw.port);
      await c.write(
        "POST /shopmesh.inventory.v1.InventoryService/GetProduct HTTP/1.1\r\nHost: localhost\r\n" +
          `Authorization: Bearer ${token}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n`,
      );
      const body = Buffer.concat([Buffer.from(JSON_HEAD), Buffer.alloc(BODY_BYTES - JSON_HEAD.length, 0x20)]);
      // Each byte its own chunk ("1\r\nX\r\n"), written 10,000 chunks at a time.
      function* pieces() {
        for (let at = 0; at < body.length; at += 10_000) {
          const part = body.subarray(at, at + 10_000);
          const out = Buffer.alloc(part.length * 6);
          for (let i = 0; i < part.length; i++)
            out.write(`1\r\n${String.fromCharCode(part[i] as number)}\r\n`, i * 6, "latin1");
          yield out;
        }
        yield Buffer.from("0\r\n\r\n");
      }
      await writeAll(c, pieces());
      expect(await h1Status(c, 20_000)).toBe(200);
    });
    // Node's HTTP/1.1 parser hands each chunk over as a Buffer of its own, and every path that reads a
    // body (passthrough.ts readBody, rest-serve.ts, connect-es via dispatch.ts limited()) keeps them
    // all in an array until the end: ~1,000,000 Buffers for one call (measured: ~200 MB of heap,
    // ~450 MB RSS) — the gateway's pod has a 256 MiB memory limit.
    expect(growth.heapMb, `heap grew ${growth.heapMb.toFixed(0)} MB, RSS ${growth.rssMb.toFixed(0)} MB`).toBeLessThan(
      50,
    );
  }, 60_000);

  it("HTTP/2, 1-byte DATA frames: the same body costs the gateway a few MB, not hundreds", async () => {
    const growth = await peakGrowth(async () => {
      await using c = await rawConnect(gw.port);
      const body = Buffer.concat([Buffer.from(JSON_HEAD), Buffer.alloc(BODY_BYTES - JSON_HEAD.length, 0x20)]);
      const path = "/shopmesh.inventory.v1.InventoryService/GetProduct";
      const call = await onePerFrame(c, path, { "content-type": "application/json", authorization: `Bearer ${token}` });
      await call.send(body, true);
      const deadline = Date.now() + 20_000;
      while (!call.answered() && Date.now() < deadline && !c.socket.destroyed)
        await new Promise((r) => setTimeout(r, 20));
      expect(call.answered(), "the call was answered").toBe(true);
    });
    expect(growth.heapMb, `heap grew ${growth.heapMb.toFixed(0)} MB, RSS ${growth.rssMb.toFixed(0)} MB`).toBeLessThan(
      50,
    );
  }, 60_000);
});

/**
 * Opens stream 1 on `c` (POST `path` with `fields`); `send` then sends bytes one per DATA frame
 * (END_STREAM on the last with `end`), 5,000 frames per write, within the flow-control windows
 * (64 KiB) the gateway's WINDOW_UPDATEs refill. The client itself makes next to no garbage.
 */
async function onePerFrame(c: RawConnection, path: string, fields: Record<string, string>) {
  let answered = false;
  let updates = 0;
  readFrames(c.socket, (type, _flags, streamId) => {
    if (type === 1 && streamId === 1) answered = true;
    if (type === 8) updates++;
  });
  const head = [
    [":method", "POST"],
    [":scheme", "http"],
    [":authority", "localhost"],
    [":path", path],
  ];
  const block = Buffer.concat(
    [...head, ...Object.entries(fields)].map(([k, v]) => hpackLiteral(k as string, v as string)),
  );
  await c.write(Buffer.concat([H2_PREFACE, h2Frame(1, 0x4, 1, block)]));
  let inWindow = 0;
  const send = async (bytes: Buffer, end: boolean) => {
    for (let at = 0; at < bytes.length; at += 5_000) {
      const n = Math.min(5_000, bytes.length - at);
      const out = Buffer.alloc(n * 10);
      for (let i = 0; i < n; i++) {
        out[i * 10 + 2] = 1; // length 1, type DATA
        out[i * 10 + 4] = end && at + i === bytes.length - 1 ? 0x1 : 0; // END_STREAM
        out.writeUInt32BE(1, i * 10 + 5);
        out[i * 10 + 9] = bytes[at + i] as number;
      }
      await c.write(out);
      inWindow += n; // flow control counts the payload: a byte a frame
      while (inWindow > 55_000 && !c.socket.destroyed) {
        const before = updates;
        await new Promise((r) => setTimeout(r, 5));
        if (updates > before) inWindow = 0;
      }
    }
  };
  return { send, answered: () => answered };
}

describe("an enveloped message (gRPC, gRPC-Web, Connect streaming) sent in one-byte pieces", () => {
  it("does not stall the gateway: a tokenless reflection stream of 50,000 one-byte DATA frames (500 KB)", async () => {
    await using c = await rawConnect(gw.port);
    // Reflection needs no token (dispatch.ts tokenFree). Its one message declares 1,000,000 bytes:
    // within MAX_BODY_BYTES, so connect-es waits for it, piece by piece.
    const path = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo";
    const call = await onePerFrame(c, path, { "content-type": "application/grpc", te: "trailers" });
    await c.write(h2Frame(0, 0, 1, Buffer.from([0, 0x00, 0x0f, 0x42, 0x40])));
    const delay = monitorEventLoopDelay({ resolution: 10 });
    delay.enable();
    const cpuBefore = process.cpuUsage();
    await call.send(Buffer.alloc(50_000, 0x20), false);
    const asked = Date.now();
    const probe = await fetch(`${gw.url}/healthz`);
    const probeMs = Date.now() - asked;
    const cpu = process.cpuUsage(cpuBefore);
    const cpuMs = (cpu.user + cpu.system) / 1000;
    delay.disable();
    expect(probe.status).toBe(200);
    // connect-es's envelope decoder (EnvelopeDecoderImpl in @connectrpc/connect protocol/envelope.js)
    // keeps every piece in an array and sums the array's lengths on every piece that arrives: O(n²)
    // in the number of pieces. Measured here: 50,000 pieces held the probe ~5 s; 80,000 pieces held the
    // event loop 10 s at a stretch and the probe 22 s. No token, ~0.5 MB on the wire, any number of streams.
    // Bounded in CPU time (this process's, the gateway's and the client's), not the probe's wall time:
    // ~0.4 s gathered, ~4 s handed to connect-es piece by piece; with the machine busy (load 19 on
    // two cores) the probe took 1.6 s for the same 0.4 s of work.
    const maxDelayMs = delay.max / 1e6;
    expect(
      cpuMs,
      `${cpuMs.toFixed(0)} ms of CPU; health probe answered after ${probeMs} ms; event loop held up to ${maxDelayMs.toFixed(0)} ms`,
    ).toBeLessThan(1_500);
  }, 120_000);
});

describe("the default body limit, 64 KiB", () => {
  it("takes the largest valid order and a 64 KiB body, and refuses one byte more with 413", async () => {
    const plain = await startTestGateway(sys);
    try {
      const line = (i: number) => ({ productId: `${"p".repeat(124)}${String(i).padStart(4, "0")}`, quantity: 10_000 });
      const order = { items: Array.from({ length: 50 }, (_, i) => line(i)), cardToken: "c".repeat(64) };
      const headers = { authorization: `Bearer ${token}`, "content-type": "application/json" };
      const placed = await fetch(`${plain.url}/v1/orders`, {
        method: "POST",
        headers: { ...headers, "idempotency-key": "k".repeat(128) },
        body: JSON.stringify(order),
      });
      expect(placed.status, await placed.clone().text()).toBe(200);
      const padded = (bytes: number) =>
        Buffer.concat([Buffer.from(JSON_HEAD), Buffer.alloc(bytes - JSON_HEAD.length, 0x20)]);
      const get = (bytes: number) =>
        fetch(`${plain.url}/shopmesh.inventory.v1.InventoryService/GetProduct`, {
          method: "POST",
          headers,
          body: padded(bytes),
        });
      expect((await get(65_536)).status).toBe(200);
      expect((await get(65_537)).status).toBe(413);
    } finally {
      await plain.stop();
    }
  });
});
