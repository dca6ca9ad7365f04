/**
 * Reading request bodies, bounded in bytes and in the pieces they arrive in. Node hands each
 * HTTP/1.1 chunk and each HTTP/2 DATA frame over as a Buffer of its own, and a client chooses how
 * small they are: a 1 MB body sent one byte a piece was a million Buffers kept until its end
 * (~200 MB of heap for one call), and connect-es's envelope decoder sums the lengths of every piece
 * it holds each time one arrives — a million pieces, ~5·10¹¹ additions, one stalled gateway, from
 * a client without a token (reflection needs none). Here the pieces are copied into one buffer as
 * they arrive, and connect-es is handed whole messages: one piece per envelope, or per body.
 */
import type http from "node:http";
import type http2 from "node:http2";
import { Code, ConnectError } from "@connectrpc/connect";
import type { Compression } from "@connectrpc/connect/protocol";

const EMPTY = Buffer.alloc(0);
/** An enveloped message's prefix: a flags byte and a 32-bit big-endian length. */
const PREFIX_BYTES = 5;

/** Bytes arriving in pieces, held as one buffer of at most `max` bytes (one piece alone is not copied). */
export class Gathered {
  /** The only piece so far, not copied; or undefined once a second one came (then `buf`). */
  private one: Buffer | undefined;
  private buf: Buffer = EMPTY;
  private n = 0;

  constructor(private readonly max: number) {}

  get length(): number {
    return this.n;
  }

  /** Adds `piece` (the caller keeps the total within `max`). */
  push(piece: Uint8Array): void {
    const chunk = Buffer.isBuffer(piece) ? piece : Buffer.from(piece.buffer, piece.byteOffset, piece.byteLength);
    if (this.n === 0) {
      this.one = chunk;
      this.n = chunk.length;
      return;
    }
    const need = this.n + chunk.length;
    if (this.one || need > this.buf.length) {
      const grown = Buffer.allocUnsafe(Math.min(this.max, Math.max(2 * need, 16 * 1024)));
      (this.one ?? this.buf).copy(grown, 0, 0, this.n);
      this.one = undefined;
      this.buf = grown;
    }
    chunk.copy(this.buf, this.n);
    this.n = need;
  }

  /** Removes and returns the first `k` bytes (all of them: without a copy). */
  take(k: number): Buffer {
    const held = this.one ?? this.buf;
    if (k === this.n) {
      this.one = undefined;
      this.buf = EMPTY;
      this.n = 0;
      return held.subarray(0, k);
    }
    // A piece not copied is never written to: its start can go as it is; the buffer's is overwritten next.
    const out = this.one ? held.subarray(0, k) : Buffer.from(held.subarray(0, k));
    if (this.one) this.one = this.one.subarray(k);
    else this.buf.copyWithin(0, k, this.n);
    this.n -= k;
    return out;
  }

  /** Removes and returns the complete enveloped messages at the start, or undefined if there is none. */
  takeEnvelopes(): Buffer | undefined {
    const held = this.one ?? this.buf;
    let end = 0;
    while (this.n - end >= PREFIX_BYTES) {
      const next = end + PREFIX_BYTES + held.readUInt32BE(end + 1);
      if (next > this.n) break;
      end = next;
    }
    return end > 0 ? this.take(end) : undefined;
  }
}

const tooLarge = (max: number) =>
  new ConnectError(`request body exceeds the limit of ${max} bytes`, Code.ResourceExhausted);
const bodyBroken = (err?: Error) =>
  new ConnectError("the request body ended early or malformed", Code.Canceled, undefined, undefined, err);

/**
 * The refusal of a request message flagged `flags`, over 1: gRPC's Compressed-Flag is 0 or 1
 * (PROTOCOL-HTTP2.md; grpc-go and grpc-java refuse the rest), and a Connect request has no other
 * (end of stream is the server's). connect-es took any flag without bit 0 for 0.
 */
export const flaggedWrong = (flags: number): ConnectError =>
  new ConnectError(
    `protocol error: the request body holds a message flagged 0x${flags.toString(16).padStart(2, "0")}, not 0 or 1`,
    Code.InvalidArgument,
  );

/** `envelopes`, once each of its messages is flagged 0 or 1. */
function checkFlags(envelopes: Buffer): Buffer {
  for (let at = 0; at < envelopes.length; at += PREFIX_BYTES + envelopes.readUInt32BE(at + 1)) {
    const flags = envelopes[at] ?? 0;
    if (flags > 1) throw flaggedWrong(flags);
  }
  return envelopes;
}

/**
 * The body as it streams in, for connect-es: whole enveloped messages as they complete
 * (`enveloped`: gRPC, gRPC-Web, Connect streaming), else the whole body once it ended; failing
 * RESOURCE_EXHAUSTED once it passes `max` bytes. A body that cannot be read is the client's doing —
 * malformed chunked framing (Node's parser has answered 400 and closed the connection) or a client
 * that went away — and is CANCELED, instead of reaching connect-es as an unknown error it would
 * count as INTERNAL. What is left at the end (a message cut short) goes on for connect-es to name.
 */
export async function* limitedBody(
  body: AsyncIterable<Uint8Array>,
  max: number,
  enveloped: boolean,
): AsyncIterable<Uint8Array> {
  const held = new Gathered(max);
  let seen = 0;
  try {
    for await (const chunk of body) {
      seen += chunk.byteLength;
      if (seen > max) throw tooLarge(max);
      held.push(chunk);
      const whole = enveloped ? held.takeEnvelopes() : undefined;
      if (whole) yield checkFlags(whole);
    }
  } catch (err) {
    if (err instanceof ConnectError) throw err;
    throw bodyBroken(err as Error);
  }
  if (held.length > 0) yield held.take(held.length);
}

/**
 * Reads the whole body: RESOURCE_EXHAUSTED past `max` bytes, CANCELED if it breaks off, and the
 * reason of `signal` as soon as that aborts (the client's deadline or cancel). With listeners, not
 * an async iterator: one promise per body rather than a few per chunk.
 */
export function readBody(
  req: http.IncomingMessage | http2.Http2ServerRequest,
  max: number,
  signal: AbortSignal,
): Promise<Buffer> {
  if (signal.aborted) return Promise.reject(signal.reason);
  // Gone before this was called (a body Node's parser refused while the call was being admitted):
  // its 'close' has been and gone, and would be waited for without end. (A reset HTTP/2 stream is
  // not destroyed: the call's signal, aborted then, says so.)
  if (req.destroyed) return Promise.reject(bodyBroken());
  return new Promise((resolve, reject) => {
    const held = new Gathered(max);
    const settle = (err: unknown) => {
      req.off("data", onData);
      req.off("end", onEnd);
      req.off("error", onBroken);
      req.off("close", onBroken);
      signal.removeEventListener("abort", onAbort);
      if (err !== undefined) reject(err);
      else resolve(held.take(held.length));
    };
    const onData = (chunk: Buffer) => {
      // Past the limit, the rest is dropped as it arrives; the answer closes the stream (on HTTP/1.1, the connection).
      if (held.length + chunk.byteLength > max) settle(tooLarge(max));
      else held.push(chunk);
    };
    const onEnd = () => settle(undefined);
    // An error, or a close before the end (a reset stream, a connection gone).
    const onBroken = (err?: Error) => settle(bodyBroken(err));
    const onAbort = () => settle(signal.reason);
    signal.addEventListener("abort", onAbort, { once: true });
    req.on("data", onData);
    req.on("end", onEnd);
    req.on("error", onBroken);
    req.on("close", onBroken);
  });
}

/**
 * The most a compressed request body of `compressed` bytes may expand to: 16 KiB (a 50-line order is
 * ~5 KB of JSON), or 16 times its size, within the body limit `max`. Decoding is what a body costs,
 * ~0.5 µs a byte of small fields: 1 KB of gzip expanding to 1 MiB (the body limit then) cost the gateway 0.5 s of
 * CPU and 80 MB, on every protocol; now a client pays for what it makes the gateway read, as
 * uncompressed, within 16 times.
 */
export function inflationLimit(compressed: number, max: number): number {
  return Math.min(max, Math.max(16 * 1024, 16 * compressed));
}

/** `c`, decompressing each message no further than {@link inflationLimit} allows (ResourceExhausted past it). */
export function boundedInflation(c: Compression): Compression {
  return {
    name: c.name,
    compress: (bytes) => c.compress(bytes),
    decompress: (bytes, max) => c.decompress(bytes, inflationLimit(bytes.byteLength, max)),
  };
}
