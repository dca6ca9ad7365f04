/**
 * The three protocols on the wire, as far as the gateway must know them
 * beyond what connect-es does for it: which protocol a request speaks, how an
 * error is framed in each (for answers given before any handler runs), and
 * the final status of a response — read, and corrected where connect-es
 * blames the server for the client's request (an undecodable message is
 * INTERNAL there; here it is INVALID_ARGUMENT, because a 5xx for bad input
 * is a lie that also gets healthy gateways ejected by the mesh).
 *
 * Framing: Connect unary errors are a JSON body with an HTTP status; Connect
 * streams end with an envelope flagged 0x02 holding JSON; gRPC carries the
 * status in trailers (or in the headers of a trailers-only answer); gRPC-Web
 * in a final envelope flagged 0x80 holding HTTP/1-style header lines.
 */
import { brotliDecompressSync, gunzipSync } from "node:zlib";
import { Code, ConnectError } from "@connectrpc/connect";
import { type Compression, createAsyncIterable, type UniversalServerResponse } from "@connectrpc/connect/protocol";
import {
  codeFromString,
  codeToHttpStatus,
  codeToString,
  endStreamFromJson,
  errorToJson,
  errorToJsonBytes,
} from "@connectrpc/connect/protocol-connect";
import { findTrailerError, setTrailerStatus } from "@connectrpc/connect/protocol-grpc";
import { trailerParse, trailerSerialize } from "@connectrpc/connect/protocol-grpc-web";
import { compressionBrotli, compressionGzip } from "@connectrpc/connect-node";
import { clipText } from "../platform/validate.js";

/** Everything after the first "?" of a request target. */
export function queryOf(url: string | undefined): string {
  const at = (url ?? "").indexOf("?");
  return at < 0 ? "" : (url ?? "").slice(at + 1);
}

/** The protocol a request speaks, from its content type. */
export type Protocol = "connect" | "grpc" | "grpc-web";

/** How a call ended, as its client sees it. */
export interface Outcome {
  readonly code: Code | 0;
  readonly message: string;
}

const OK: Outcome = { code: 0, message: "" };

/** The protocol of a request with this content type (anything not gRPC is answered as Connect). */
export function protocolOf(contentType: string | undefined): Protocol {
  if (contentType?.startsWith("application/grpc-web")) return "grpc-web";
  if (contentType?.startsWith("application/grpc")) return "grpc";
  return "connect";
}

/** True for a Connect streaming content type (`application/connect+json`, `+proto`). */
export function isConnectStream(contentType: string | undefined): boolean {
  return contentType?.startsWith("application/connect+") ?? false;
}

/**
 * The code the client should get for an error connect-es raised itself. It
 * reports a few malformed requests as server faults; those become
 * INVALID_ARGUMENT. Everything else keeps its code.
 */
export function reclassify(code: Code, message: string): Code {
  if (code === Code.Internal && /^(parse binary: |decompression failed$|received compressed envelope)/.test(message)) {
    return Code.InvalidArgument;
  }
  if (code === Code.Unimplemented && /^protocol error: (missing|received extra) input message/.test(message)) {
    return Code.InvalidArgument;
  }
  return code;
}

/**
 * The HTTP status of a Connect-protocol error: Connect's table, except that
 * RESOURCE_EXHAUSTED without a Retry-After (the request itself is too big,
 * waiting will not help) is 413, and an unknown request compression is 415
 * (RFC 9110 §15.5.16) rather than a 5xx.
 */
export function connectHttpStatus(code: Code, message: string, retryAfter: boolean): number {
  if (code === Code.ResourceExhausted && !retryAfter) return 413;
  if (code === Code.Unimplemented && message.startsWith("unknown compression")) return 415;
  return codeToHttpStatus(code);
}

/** A gRPC / gRPC-Web / Connect-stream envelope. */
export function envelope(flags: number, data: Uint8Array): Uint8Array {
  const out = new Uint8Array(5 + data.byteLength);
  out[0] = flags;
  new DataView(out.buffer).setUint32(1, data.byteLength);
  out.set(data, 5);
  return out;
}

/** A complete answer given without running a handler (unknown procedure, refused before dispatch). */
export interface ErrorAnswer {
  readonly status: number;
  readonly headers: Record<string, string>;
  readonly body: Uint8Array;
}

/**
 * The codec a request's content type names: json for `application/json`, `application/connect+json`,
 * `application/grpc+json`, `application/grpc-web+json` (parameters aside, any case); proto otherwise.
 */
function codecOf(contentType: string | undefined): "json" | "proto" {
  return /^application\/(?:[a-z-]+\+)?json\s*(?:;|$)/i.test(contentType ?? "") ? "json" : "proto";
}

/**
 * `err` framed for a client speaking `protocol` with a request of `contentType`.
 * `httpStatus` overrides the status of a Connect unary answer (404 for an
 * unknown procedure, as the Connect protocol says).
 */
export function errorAnswer(
  protocol: Protocol,
  contentType: string | undefined,
  err: ConnectError,
  httpStatus?: number,
): ErrorAnswer {
  const meta: Record<string, string> = {};
  err.metadata.forEach((v, k) => {
    meta[k] = v;
  });
  // A streaming answer names the request's codec: a client refuses any other as INTERNAL, whatever the
  // status inside (connectrpc/conformance's unexpected-codec and unexpected-stream-codec cases).
  const codec = codecOf(contentType);
  if (protocol !== "connect") {
    // Trailers-only: the status (and the error's metadata) travel in the headers of an empty 200 answer.
    const status = setTrailerStatus(new Headers(), err);
    const headers: Record<string, string> = { "content-type": `application/${protocol}+${codec}` };
    status.forEach((v, k) => {
      headers[k] = v;
    });
    return { status: 200, headers, body: new Uint8Array() };
  }
  if (isConnectStream(contentType)) {
    // The end-stream message is JSON whatever the codec (Connect protocol: EndStreamResponse).
    const end = new TextEncoder().encode(JSON.stringify({ error: errorToJson(err, undefined), metadata: {} }));
    return {
      status: 200,
      headers: { ...meta, "content-type": `application/connect+${codec}` },
      body: envelope(2, end),
    };
  }
  const status = httpStatus ?? connectHttpStatus(err.code, err.rawMessage, "retry-after" in meta);
  return { status, headers: { ...meta, "content-type": "application/json" }, body: errorToJsonBytes(err, undefined) };
}

/** A flagged envelope's payload, decompressed with the response's encoding when flag 0x01 says so. */
function payloadOf(chunk: Uint8Array, encoding: string | null): Uint8Array {
  const data = chunk.subarray(5);
  if ((chunk[0] ?? 0) & 1) {
    if (encoding === "gzip") return gunzipSync(data);
    if (encoding === "br") return brotliDecompressSync(data);
  }
  return data;
}

/** Reads a Connect unary error body, corrects its code and HTTP status, and re-frames it. */
async function connectUnary(
  uRes: UniversalServerResponse,
  body: AsyncIterable<Uint8Array>,
  report: (o: Outcome) => void,
  describe: Describe,
): Promise<UniversalServerResponse> {
  const header = new Headers(uRes.header);
  const chunks: Uint8Array[] = [];
  for await (const c of body) chunks.push(c);
  // An error answer of 1 KiB or more is compressed when the client accepts it: read as sent.
  const encoding = header.get("content-encoding");
  const compression = ERROR_COMPRESSIONS.find((c) => c.name === encoding);
  const text = await errorText(Buffer.concat(chunks), encoding, compression);
  if (text === undefined) {
    report({ code: codeOfStatus(uRes.status), message: `HTTP ${uRes.status}` });
    return { ...uRes, body: createAsyncIterable(chunks) };
  }
  const json = JSON.parse(text) as { code?: string; message?: string; details?: unknown };
  const code = reclassify(codeFromString(json.code ?? "") ?? Code.Unknown, json.message ?? "");
  const told = code === Code.InvalidArgument ? describe(json.message ?? "") : undefined;
  const message = told?.rawMessage ?? clipText(json.message ?? "", MAX_MESSAGE);
  json.code = codeToString(code);
  if (json.message !== undefined) json.message = message;
  // The field it names, in a BadRequest detail as the fast path (connect-unary.ts) writes it.
  if (told && told.details.length > 0 && json.details === undefined)
    json.details = errorToJson(told, undefined).details;
  let fixed = new TextEncoder().encode(JSON.stringify(json));
  if (compression && fixed.byteLength >= COMPRESS_MIN_BYTES) fixed = await compression.compress(fixed);
  else header.delete("content-encoding");
  header.set("content-length", String(fixed.byteLength));
  report({ code, message });
  const status = connectHttpStatus(code, message, header.has("retry-after"));
  return { ...uRes, status, header, body: createAsyncIterable([fixed]) };
}

/** An error answer's JSON text, or undefined when it has none or cannot be read (left as it is). */
async function errorText(bytes: Buffer, encoding: string | null, compression: Compression | undefined) {
  if (bytes.byteLength === 0 || (encoding !== null && !compression)) return undefined;
  if (!compression) return bytes.toString("utf8");
  try {
    return Buffer.from(await compression.decompress(bytes, MAX_ERROR_BYTES)).toString("utf8");
  } catch {
    return undefined;
  }
}

/** What connect-node compresses an answer with (routerOptions) and from what size (its default). */
const ERROR_COMPRESSIONS = [compressionGzip, compressionBrotli];
const COMPRESS_MIN_BYTES = 1024;
/** Past any error answer of a default configuration (one larger is passed on as it is). */
const MAX_ERROR_BYTES = 64 * 1_048_576;

/** Passes a stream through, correcting the error in its last frame and reporting the outcome. */
function streamBody(
  body: AsyncIterable<Uint8Array>,
  fix: (chunk: Uint8Array) => { chunk: Uint8Array; outcome?: Outcome },
  report: (o: Outcome) => void,
  atEnd?: () => Outcome | undefined,
): AsyncIterable<Uint8Array> {
  return (async function* () {
    let outcome: Outcome | undefined;
    for await (const chunk of body) {
      const fixed = fix(chunk);
      outcome = fixed.outcome ?? outcome;
      yield fixed.chunk;
    }
    report(atEnd?.() ?? outcome ?? OK);
  })();
}

/** The longest message an error answer quotes: connect-es quotes a Connect GET's `compression` whole (30 KB). */
const MAX_MESSAGE = 1_000;

function corrected(err: ConnectError | undefined, describe: Describe): ConnectError | undefined {
  if (!err) return undefined;
  const code = reclassify(err.code, err.rawMessage);
  if (code === Code.InvalidArgument) {
    const told = describe(err.rawMessage);
    return code === err.code && told.rawMessage === err.rawMessage && told.details.length === 0 ? err : told;
  }
  const message = clipText(err.rawMessage, MAX_MESSAGE);
  return code === err.code && message === err.rawMessage ? err : new ConnectError(message, code);
}

/** An INVALID_ARGUMENT told in the client's terms, its field in a BadRequest detail (json-errors.ts), or as it was. */
export type Describe = (message: string) => ConnectError;

/** The code a bare HTTP refusal stands for: the client's mistake unless the status says otherwise. */
export function codeOfStatus(status: number): Code {
  return status === 404 ? Code.Unimplemented : status < 500 ? Code.InvalidArgument : Code.Unknown;
}

/**
 * Wraps a handler's response so that its final status is corrected (see
 * {@link reclassify}) and reported to `report` once the client has it all.
 *
 * connect-es refuses some requests in every protocol with a bare HTTP status
 * and no body: a method or content type the protocol does not take (405,
 * 415), a streaming call over HTTP/1.1 (505, "HTTP Version Not Supported").
 * The last is the client's choice of transport, so it becomes 400 here: a
 * 5xx for client input would also count against the gateway in the mesh's
 * outlier detection.
 */
export async function finish(
  uRes: UniversalServerResponse,
  protocol: Protocol,
  report: (o: Outcome) => void,
  describe: Describe = (message) => new ConnectError(message, Code.InvalidArgument),
): Promise<UniversalServerResponse> {
  const header = new Headers(uRes.header);
  if (uRes.status !== 200 && !header.has("content-type")) {
    report({ code: codeOfStatus(uRes.status === 505 ? 400 : uRes.status), message: `HTTP ${uRes.status}` });
    return uRes.status === 505 ? { ...uRes, status: 400 } : uRes;
  }
  const body = uRes.body ?? createAsyncIterable<Uint8Array>([]);
  if (protocol === "grpc") {
    const trailer = uRes.trailer ?? new Headers();
    return {
      ...uRes,
      trailer,
      body: streamBody(
        body,
        (chunk) => ({ chunk }),
        report,
        () => {
          const err = findTrailerError(trailer);
          const fixed = corrected(err, describe);
          if (fixed && fixed !== err) {
            trailer.delete("grpc-status-details-bin");
            setTrailerStatus(trailer, fixed);
          }
          return fixed ? { code: fixed.code, message: fixed.rawMessage } : OK;
        },
      ),
    };
  }
  if (protocol === "grpc-web") {
    const encoding = header.get("grpc-encoding");
    return {
      ...uRes,
      body: streamBody(
        body,
        (chunk) => {
          if (!((chunk[0] ?? 0) & 0x80)) return { chunk };
          const trailer = trailerParse(payloadOf(chunk, encoding));
          const err = findTrailerError(trailer);
          const fixed = corrected(err, describe);
          if (!fixed) return { chunk, outcome: OK };
          if (fixed === err) return { chunk, outcome: { code: err.code, message: err.rawMessage } };
          trailer.delete("grpc-status-details-bin");
          setTrailerStatus(trailer, fixed);
          return {
            chunk: envelope(0x80, trailerSerialize(trailer)),
            outcome: { code: fixed.code, message: fixed.rawMessage },
          };
        },
        report,
      ),
    };
  }
  if (!isConnectStream(header.get("content-type") ?? undefined)) {
    if (uRes.status === 200) return { ...uRes, body: streamBody(body, (chunk) => ({ chunk }), report) };
    return connectUnary(uRes, body, report, describe);
  }
  const encoding = header.get("connect-content-encoding");
  return {
    ...uRes,
    body: streamBody(
      body,
      (chunk) => {
        if (!((chunk[0] ?? 0) & 0x02)) return { chunk };
        const end = endStreamFromJson(payloadOf(chunk, encoding));
        const fixed = corrected(end.error, describe);
        if (!fixed) return { chunk, outcome: OK };
        const outcome = { code: fixed.code, message: fixed.rawMessage };
        if (fixed === end.error) return { chunk, outcome };
        const json = JSON.stringify({ error: errorToJson(fixed, undefined), metadata: {} });
        return { chunk: envelope(0x02, new TextEncoder().encode(json)), outcome };
      },
      report,
    ),
  };
}

/** A request path or method as an error echoes it: its first 200 characters (a path may be 60 KB, and gRPC's status is a header). */
export const echoed = (path: string) => clipText(path, 200);
