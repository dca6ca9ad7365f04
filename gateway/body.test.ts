/** Bodies gathered from pieces (body.ts): whatever the pieces, the same bytes, in whole messages. */
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { Code, ConnectError } from "@connectrpc/connect";
import { compressionGzip } from "@connectrpc/connect-node";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { envelope } from "../test/raw.js";
import { boundedInflation, Gathered, inflationLimit, limitedBody, readBody } from "./body.js";

/** `bytes` cut at `cuts` (offsets, any order). */
function* pieces(bytes: Buffer, cuts: number[]): Generator<Buffer> {
  let at = 0;
  for (const cut of [...new Set(cuts)].sort((a, b) => a - b)) {
    if (cut <= at || cut >= bytes.length) continue;
    yield bytes.subarray(at, cut);
    at = cut;
  }
  if (at < bytes.length) yield bytes.subarray(at);
}

async function* source(parts: Iterable<Buffer>) {
  for (const p of parts) yield p;
}

const collect = async (body: AsyncIterable<Uint8Array>) => {
  const out: Buffer[] = [];
  for await (const p of body) out.push(Buffer.from(p));
  return out;
};

describe("limitedBody", () => {
  it("refuses a message flagged other than 0 or 1 (compressed) as the client's error, wherever it stands", async () => {
    for (const flags of [0x02, 0x80, 0xff]) {
      const body = Buffer.concat([envelope(Buffer.from("a")), envelope(Buffer.from("b"), flags)]);
      const err = await collect(limitedBody(source([body]), 1 << 20, true)).catch((e: unknown) => e);
      expect(err).toMatchObject({ code: Code.InvalidArgument });
    }
    const ok = Buffer.concat([envelope(Buffer.from("a")), envelope(Buffer.from("b"), 1)]);
    expect(Buffer.concat(await collect(limitedBody(source([ok]), 1 << 20, true)))).toEqual(ok);
    // A Connect unary body is no envelope: its first byte is the message's own.
    expect(await collect(limitedBody(source([Buffer.from([0xff, 0, 0, 0, 0])]), 1 << 20, false))).toHaveLength(1);
  });
  it("hands on whole enveloped messages, however the body was cut, and a message cut short at the end", async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.uint8Array({ maxLength: 300 }), { maxLength: 8 }),
        fc.array(fc.nat(3_000), { maxLength: 40 }),
        fc.nat(4),
        async (messages, cuts, cutShort) => {
          const whole = Buffer.concat(messages.map((m) => envelope(m)));
          const sent = whole.subarray(0, Math.max(0, whole.length - cutShort));
          const got = await collect(limitedBody(source(pieces(sent, cuts)), 1 << 20, true));
          expect(Buffer.concat(got).equals(sent)).toBe(true);
          // Every piece but a last one cut short starts a message and ends one.
          const complete = cutShort === 0 || messages.length === 0 ? got : got.slice(0, -1);
          for (const p of complete) {
            let end = 0;
            while (end < p.length) end += 5 + p.readUInt32BE(end + 1);
            expect(end).toBe(p.length);
          }
        },
      ),
    );
  });

  it("hands on an unenveloped body whole, once, and refuses one past the limit", async () => {
    const body = Buffer.from("x".repeat(1000));
    const got = await collect(limitedBody(source(pieces(body, [1, 2, 3, 500])), 1000, false));
    expect(got).toHaveLength(1);
    expect(got[0]?.equals(body)).toBe(true);
    await expect(collect(limitedBody(source(pieces(body, [10])), 999, false))).rejects.toThrow(
      /request body exceeds the limit of 999 bytes/,
    );
  });
});

describe("Gathered", () => {
  it("keeps a million one-byte pieces as one buffer no larger than the limit", () => {
    const held = new Gathered(1_000_000);
    const one = Buffer.from("a");
    for (let i = 0; i < 1_000_000; i++) held.push(one);
    const all = held.take(held.length);
    expect(all.length).toBe(1_000_000);
    expect(all.buffer.byteLength).toBeLessThanOrEqual(1_000_000 + 8192); // Node's pool slack at most
    expect(held.length).toBe(0);
  });
});

describe("inflationLimit and boundedInflation", () => {
  const MiB = 1024 * 1024;
  it("lets a body grow 16 times its size, or to 16 KiB, within the body limit", () => {
    expect(inflationLimit(100, MiB)).toBe(16 * 1024);
    expect(inflationLimit(10_000, MiB)).toBe(160_000);
    expect(inflationLimit(100_000, MiB)).toBe(MiB);
    expect(inflationLimit(100, 4_096)).toBe(4_096);
  });

  // The largest order a client may place (50 lines, product ids of 128 characters, pretty-printed
  // JSON) is ~10 KB: under the 16 KiB floor, however well it compresses (these ids: 39 times).
  it("takes the largest honest order however well it compresses, and refuses 1 KB that expands to 1 MB", async () => {
    const gzip = boundedInflation(compressionGzip);
    const items = Array.from({ length: 50 }, (_, i) => ({
      productId: `p${String(i).padStart(127, "0")}`,
      quantity: 1,
    }));
    const order = Buffer.from(JSON.stringify({ idempotencyKey: "k".repeat(128), items }, null, 4));
    const packed = await compressionGzip.compress(order);
    expect(order.length / packed.length).toBeGreaterThan(16);
    expect(Buffer.from(await gzip.decompress(packed, MiB)).equals(order)).toBe(true);
    const bomb = await compressionGzip.compress(new Uint8Array(MiB));
    await expect(gzip.decompress(bomb, MiB)).rejects.toMatchObject({ code: Code.ResourceExhausted });
  });
});

describe("readBody", () => {
  it("reads a body of exactly the limit, and refuses one byte more as RESOURCE_EXHAUSTED", async () => {
    const server = createServer((req, res) => {
      readBody(req, 100, new AbortController().signal).then(
        (body) => res.end(`read ${body.length}`),
        (err: unknown) => res.end(`refused ${ConnectError.from(err).code}`),
      );
    });
    await new Promise<void>((listening) => server.listen(0, "127.0.0.1", listening));
    try {
      const { port } = server.address() as AddressInfo;
      const post = async (bytes: number) =>
        (await fetch(`http://127.0.0.1:${port}/`, { method: "POST", body: "x".repeat(bytes) })).text();
      expect(await post(100)).toBe("read 100");
      expect(await post(101)).toBe(`refused ${Code.ResourceExhausted}`);
    } finally {
      server.closeAllConnections();
      server.close();
    }
  });
});
