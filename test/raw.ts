/**
 * Raw protocol clients for hostile tests: bytes on a socket, HTTP/2 frames
 * from node:http2, gRPC and gRPC-Web envelopes built by hand — nothing that
 * would politely refuse to send a malformed request.
 */
import http from "node:http";
import http2 from "node:http2";
import net from "node:net";

/** A gRPC / gRPC-Web / Connect-streaming envelope: flags, 4-byte big-endian length, payload. */
export function envelope(payload: Uint8Array, flags = 0): Buffer {
  const head = Buffer.alloc(5);
  head.writeUInt8(flags, 0);
  head.writeUInt32BE(payload.byteLength, 1);
  return Buffer.concat([head, payload]);
}

/** What came back from an HTTP/2 request. */
export interface H2Response {
  readonly status: number;
  readonly headers: http2.IncomingHttpHeaders;
  readonly trailers: http2.IncomingHttpHeaders;
  readonly body: Buffer;
  /** grpc-status from the trailers, or from the headers of a trailers-only response; undefined if absent. */
  readonly grpcStatus: number | undefined;
  readonly grpcMessage: string;
  /** The answer was one HEADERS frame that ended the stream (gRPC's Trailers-Only). */
  readonly trailersOnly: boolean;
}

/** One request over an existing HTTP/2 session. */
export function h2Request(
  session: http2.ClientHttp2Session,
  headers: http2.OutgoingHttpHeaders,
  body?: Uint8Array,
  timeoutMs = 10_000,
): Promise<H2Response> {
  return new Promise((resolve, reject) => {
    const req = session.request({ ":method": "POST", ...headers }, { endStream: body === undefined });
    let status = 0;
    let trailersOnly = false;
    let resHeaders: http2.IncomingHttpHeaders = {};
    let trailers: http2.IncomingHttpHeaders = {};
    const chunks: Buffer[] = [];
    const timer = setTimeout(() => {
      req.close(http2.constants.NGHTTP2_CANCEL);
      reject(new Error(`no answer within ${timeoutMs} ms`));
    }, timeoutMs);
    req.on("response", (h, flags) => {
      status = Number(h[":status"]);
      resHeaders = h;
      trailersOnly = (flags & http2.constants.NGHTTP2_FLAG_END_STREAM) !== 0;
    });
    req.on("trailers", (t) => {
      trailers = t;
    });
    req.on("data", (d: Buffer) => chunks.push(d));
    req.on("error", (err) => {
      clearTimeout(timer);
      reject(err);
    });
    req.on("close", () => {
      clearTimeout(timer);
      const raw = trailers["grpc-status"] ?? resHeaders["grpc-status"];
      resolve({
        status,
        headers: resHeaders,
        trailers,
        body: Buffer.concat(chunks),
        grpcStatus: raw === undefined ? undefined : Number(raw),
        grpcMessage: decodeURIComponent(String(trailers["grpc-message"] ?? resHeaders["grpc-message"] ?? "")),
        trailersOnly,
      });
    });
    if (body !== undefined) req.end(Buffer.from(body));
  });
}

/** An HTTP/2 cleartext session (prior knowledge) to `url`, closed on dispose. */
export async function h2Session(url: string): Promise<http2.ClientHttp2Session & AsyncDisposable> {
  const session = http2.connect(url);
  await new Promise<void>((resolve, reject) => {
    session.once("connect", () => resolve());
    session.once("error", reject);
  });
  session.on("error", () => {}); // a GOAWAY from the server under test is an outcome, not a crash of the test
  return Object.assign(session, {
    [Symbol.asyncDispose]: async () => {
      // A destroyed session (a GOAWAY for the peer's error) is not always `closed` (Node 24): close() never calls back.
      if (!session.closed && !session.destroyed) await new Promise<void>((r) => session.close(() => r()));
    },
  });
}

/** The trailer block of a gRPC-Web body (the envelope flagged 0x80), as lower-case name -> value. */
export function grpcWebTrailers(body: Buffer): Record<string, string> {
  let at = 0;
  while (at + 5 <= body.length) {
    const flags = body.readUInt8(at);
    const len = body.readUInt32BE(at + 1);
    const data = body.subarray(at + 5, at + 5 + len);
    at += 5 + len;
    if (flags & 0x80) {
      const out: Record<string, string> = {};
      for (const line of data.toString("latin1").split("\r\n")) {
        const i = line.indexOf(":");
        if (i > 0) out[line.slice(0, i).trim().toLowerCase()] = line.slice(i + 1).trim();
      }
      return out;
    }
  }
  return {};
}

/** The end-stream JSON of a Connect streaming body (the envelope flagged 0x02). */
export function connectEndStream(body: Buffer): { error?: { code: string; message?: string } } | undefined {
  let at = 0;
  while (at + 5 <= body.length) {
    const flags = body.readUInt8(at);
    const len = body.readUInt32BE(at + 1);
    const data = body.subarray(at + 5, at + 5 + len);
    at += 5 + len;
    if (flags & 0x02) return JSON.parse(data.toString("utf8")) as { error?: { code: string; message?: string } };
  }
  return undefined;
}

/** A raw TCP connection: write bytes when you like, read what comes back. */
export interface RawConnection extends AsyncDisposable {
  readonly socket: net.Socket;
  /** Everything received so far. */
  received(): Buffer;
  /** Resolves when the server closes the connection (or resets it), with the ms since connect. */
  readonly closed: Promise<number>;
  write(data: string | Buffer): Promise<void>;
}

/** Opens a TCP connection to `host:port`, optionally from a chosen local (loopback) address. */
export async function rawConnect(port: number, host = "127.0.0.1", localAddress?: string): Promise<RawConnection> {
  const socket = net.connect({ port, host, ...(localAddress ? { localAddress } : {}) });
  socket.setNoDelay(true);
  const started = Date.now();
  const chunks: Buffer[] = [];
  socket.on("data", (d: Buffer) => chunks.push(d));
  const closed = new Promise<number>((resolve) => socket.once("close", () => resolve(Date.now() - started)));
  socket.on("error", () => {});
  await new Promise<void>((resolve, reject) => {
    socket.once("connect", () => resolve());
    socket.once("error", reject);
  });
  return {
    socket,
    received: () => Buffer.concat(chunks),
    closed,
    write: (data) =>
      new Promise<void>((resolve, reject) => {
        if (socket.destroyed) {
          reject(new Error("socket closed"));
          return;
        }
        socket.write(data, (err) => (err ? reject(err) : resolve()));
      }),
    [Symbol.asyncDispose]: async () => {
      socket.destroy();
      await closed;
    },
  };
}

/** Sends one raw HTTP/1.x request and returns the status code and the raw response (until close or `waitMs`). */
export async function h1Raw(
  port: number,
  request: string | Buffer,
  waitMs = 3_000,
): Promise<{ status: number; raw: string }> {
  await using c = await rawConnect(port);
  await c.write(request);
  await Promise.race([c.closed, new Promise((r) => setTimeout(r, waitMs))]);
  const raw = c.received().toString("latin1");
  const m = /^HTTP\/1\.[01] (\d{3})/.exec(raw);
  return { status: m ? Number(m[1]) : 0, raw };
}

/** A raw HTTP/2 frame (RFC 9113 §4.1). */
export function h2Frame(type: number, flags: number, streamId: number, payload: Buffer = Buffer.alloc(0)): Buffer {
  const h = Buffer.alloc(9);
  h.writeUIntBE(payload.length, 0, 3);
  h[3] = type;
  h[4] = flags;
  h.writeUInt32BE(streamId & 0x7fffffff, 5);
  return Buffer.concat([h, payload]);
}

/** An HPACK integer with an `prefix`-bit prefix (RFC 7541 §5.1), first byte or'ed with `first`. */
function hpackInt(n: number, prefix: number, first = 0): Buffer {
  const max = (1 << prefix) - 1;
  if (n < max) return Buffer.from([first | n]);
  const out = [first | max];
  let rest = n - max;
  while (rest >= 128) {
    out.push((rest % 128) + 128);
    rest = Math.floor(rest / 128);
  }
  out.push(rest);
  return Buffer.from(out);
}

/** An HPACK header field literal with a new name; `index` adds it to the dynamic table (RFC 7541 §6.2). */
export function hpackLiteral(name: string, value: string | Buffer, index = false): Buffer {
  const n = Buffer.from(name);
  const v = Buffer.isBuffer(value) ? value : Buffer.from(value);
  return Buffer.concat([Buffer.from([index ? 0x40 : 0]), hpackInt(n.length, 7), n, hpackInt(v.length, 7), v]);
}

/** An HPACK reference to the `i`-th entry of the tables (62 = the newest dynamic entry). */
export const hpackIndexed = (i: number): Buffer => hpackInt(i, 7, 0x80);

/** The client connection preface with an empty SETTINGS frame. */
export const H2_PREFACE = Buffer.concat([Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), h2Frame(4, 0, 0)]);

/** Calls `onFrame` for every frame read from `socket`. */
export function readFrames(
  socket: net.Socket,
  onFrame: (type: number, flags: number, streamId: number, payload: Buffer) => void,
): void {
  let buf = Buffer.alloc(0);
  socket.on("data", (d: Buffer) => {
    buf = Buffer.concat([buf, d]);
    while (buf.length >= 9) {
      const len = buf.readUIntBE(0, 3);
      if (buf.length < 9 + len) break;
      onFrame(buf[3] ?? 0, buf[4] ?? 0, buf.readUInt32BE(5) & 0x7fffffff, buf.subarray(9, 9 + len));
      buf = buf.subarray(9 + len);
    }
  });
}

/** What came back from an HTTP/1.1 request: its body as text, and as JSON (undefined when it is not). */
export interface H1Answer {
  status: number;
  headers: http.IncomingHttpHeaders;
  text: string;
  // biome-ignore lint/suspicious/noExplicitAny: JSON answers are checked field by field
  json: any;
}

/** One HTTP/1.1 request to `url` on a connection of its own, `path` sent verbatim (fetch would normalise `..`, `%2E` and friends). */
export function h1Request(
  url: string,
  method: string,
  path: string,
  opts: { headers?: Record<string, string | string[]>; body?: string | Buffer } = {},
): Promise<H1Answer> {
  return new Promise((resolve, reject) => {
    // Node sends a GET's or DELETE's body without a length unless told it.
    const length = opts.body === undefined ? {} : { "content-length": String(Buffer.byteLength(opts.body)) };
    const headers = { ...length, ...opts.headers };
    const req = http.request(url, { method, path, headers, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () => {
        const text = Buffer.concat(chunks).toString("utf8");
        let json: unknown;
        try {
          json = JSON.parse(text);
        } catch {
          json = undefined;
        }
        resolve({ status: res.statusCode ?? 0, headers: res.headers, text, json });
      });
      res.on("error", reject);
    });
    req.on("error", reject);
    req.end(opts.body);
  });
}
