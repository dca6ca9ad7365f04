/**
 * Serving a REST request (rest.ts matched it; dispatch.ts admitted it): the
 * request message is built from path, query and body and checked, then
 * either sent upstream by the fast path (`serveRestUnary`: a unary method
 * routed to a service) or handed to the method's Connect handler as a
 * Connect JSON request (`serveRest`: server streams, and the gateway's own
 * composed method) — the same upstream call, deadline, errors and access
 * log either way. The answer is reshaped for HTTP: the response (or its
 * `response_body` field) as JSON, an error as google.rpc.Status JSON with
 * its HTTP status, a server stream as newline-delimited JSON (`{"result":
 * ...}` per message, `{"error": ...}` if it fails after the first), as
 * grpc-gateway streams.
 */
import type http from "node:http";
import { brotliDecompressSync, gunzipSync } from "node:zlib";
import { fromJsonString, type JsonObject, type JsonValue, toBinary, toJson } from "@bufbuild/protobuf";
import { EmptySchema } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type ContextValues } from "@connectrpc/connect";
import type { UniversalHandler, UniversalServerRequest } from "@connectrpc/connect/protocol";
import { errorToJson, parseTimeout } from "@connectrpc/connect/protocol-connect";
import type { Identity } from "../platform/identity-rule.js";
import { dropUnreadBody, universalRequest } from "./answer-end.js";
import { inflationLimit, readBody } from "./body.js";
import { decodeAnswer } from "./connect-unary.js";
import type { ClientInfo } from "./context.js";
import type { Req, Res } from "./endpoint.js";
import { invalidFields, notJson } from "./json-errors.js";
import { callLifetime, type PassthroughMethod } from "./passthrough.js";
import { type RestMatch, responseJson, statusJson } from "./rest.js";
import { checkRequest, requestJson } from "./rest-request.js";
import {
  connectHttpStatus,
  type ErrorAnswer,
  envelope,
  finish,
  isConnectStream,
  type Outcome,
  queryOf,
} from "./wire.js";

const JSON_TYPE = "application/json";

/** `err` as a REST answer: google.rpc.Status JSON with the code's HTTP status (or `httpStatus`). */
export function restErrorAnswer(err: ConnectError, httpStatus?: number): ErrorAnswer {
  const { status } = statusJson(errorToJson(err, undefined) as JsonObject);
  const headers: Record<string, string> = { "content-type": JSON_TYPE };
  err.metadata.forEach((v, k) => {
    headers[k] = v;
  });
  const code = httpStatus ?? connectHttpStatus(err.code, err.rawMessage, err.metadata.has("retry-after"));
  return { status: code, headers, body: Buffer.from(JSON.stringify(status)) };
}

/** Reads the whole body (already limited in size as sent by the caller's iterable) as JSON (see {@link bodyJson}). */
async function jsonBody(
  body: AsyncIterable<Uint8Array>,
  encoding: string | undefined,
  maxBytes: number,
): Promise<JsonValue | undefined> {
  const chunks: Uint8Array[] = [];
  for await (const c of body) chunks.push(c);
  return bodyJson(Buffer.concat(chunks), encoding, maxBytes);
}

/**
 * A whole request body as JSON; undefined when empty. gzip and br bodies are decompressed up to
 * `maxBytes` and {@link inflationLimit}, as Connect's are.
 */
function bodyJson(body: Buffer, encoding: string | undefined, maxBytes: number): JsonValue | undefined {
  let bytes = body;
  const coding = (encoding ?? "identity").trim().toLowerCase();
  if (coding !== "identity" && bytes.length > 0) {
    const inflate = coding === "gzip" ? gunzipSync : coding === "br" ? brotliDecompressSync : undefined;
    if (!inflate) throw new ConnectError(`unknown compression "${coding}": gzip or br`, Code.Unimplemented);
    const limit = inflationLimit(bytes.length, maxBytes);
    try {
      bytes = inflate(bytes, { maxOutputLength: limit });
    } catch (err) {
      if (err instanceof RangeError) {
        // The limit it passed: a 20 KB body may be refused at 320 KB, not at the 64 KiB the client knows of.
        throw new ConnectError(`request body exceeds the limit of ${limit} bytes decompressed`, Code.ResourceExhausted);
      }
      throw new ConnectError(`the request body is not valid ${coding}`, Code.InvalidArgument);
    }
  }
  let text: string;
  try {
    // JSON is UTF-8 (RFC 8259): a body that is not is refused, not stored with replacement characters.
    text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    throw new ConnectError("the request body is not valid UTF-8", Code.InvalidArgument);
  }
  if (text.trim() === "") return undefined;
  let json: JsonValue;
  try {
    json = JSON.parse(text) as JsonValue;
  } catch (err) {
    // Any content type is read as JSON (curl -d sends form-urlencoded), as grpc-gateway does.
    throw new ConnectError(notJson((err as Error).message), Code.InvalidArgument);
  }
  // JSON.parse keeps the last of two equal keys, where a proxy in front may have read the first; the
  // Connect path refuses them (protobuf-es checks), and so does this one, with protobuf-es's check.
  try {
    // Its scan for duplicates runs before decoding; decoded as Empty, the body builds nothing more.
    fromJsonString(EmptySchema, text, { ignoreUnknownFields: true });
  } catch (err) {
    // Anything else it finds in JSON that JSON.parse accepted is for the message's own decoding to judge.
    const duplicate = /duplicate object key "([\s\S]*)"$/.exec(String((err as Error).message))?.[1];
    if (duplicate !== undefined) {
      const why = `the request body has the object key "${duplicate}" twice`;
      throw invalidFields([duplicate], why, why);
    }
  }
  return json;
}

/** Splits a Connect stream body into its envelopes (flags, payload), whatever the chunking. */
async function* envelopes(body: AsyncIterable<Uint8Array>): AsyncGenerator<{ flags: number; data: Uint8Array }> {
  let buf = Buffer.alloc(0);
  for await (const chunk of body) {
    buf = buf.length ? Buffer.concat([buf, chunk]) : Buffer.from(chunk);
    while (buf.length >= 5) {
      const len = buf.readUInt32BE(1);
      if (buf.length < 5 + len) break;
      yield { flags: buf[0] ?? 0, data: buf.subarray(5, 5 + len) };
      buf = buf.subarray(5 + len);
    }
  }
}

function send(res: Res, status: number, headers: Record<string, string>, body: string | Uint8Array) {
  res.writeHead(status, { ...headers, "content-length": String(Buffer.byteLength(body)) });
  res.end(body);
}

/**
 * Serves `req` as `match` says through `handler`; `body` is the request body
 * as it streams in (size-limited). Reports the outcome once through `done`.
 */
export async function serveRest(
  req: http.IncomingMessage,
  res: http.ServerResponse,
  match: RestMatch,
  handler: UniversalHandler,
  opts: {
    /** The body as it streams in, size-limited. */
    readonly body: (raw: AsyncIterable<Uint8Array>) => AsyncIterable<Uint8Array>;
    readonly maxBodyBytes: number;
    readonly values: ContextValues;
    readonly idempotencyKey: string | undefined;
  },
  done: (o: Outcome) => void,
): Promise<void> {
  const { route } = match;
  const uReq = universalRequest(req, res, opts.values);
  const refuse = (err: ConnectError) => {
    const a = restErrorAnswer(err);
    dropUnreadBody(req, res); // refused mid-body (413): the connection ends, and says so
    send(res, a.status, a.headers, a.body);
    done({ code: err.code, message: err.rawMessage });
  };
  let json: JsonObject;
  try {
    const encoding = req.headers["content-encoding"];
    json = requestJson(match, {
      query: queryOf(req.url),
      body: await jsonBody(opts.body(uReq.body as AsyncIterable<Uint8Array>), encoding, opts.maxBodyBytes),
      idempotencyKey: opts.idempotencyKey,
    });
    checkRequest(route, json);
  } catch (err) {
    if (!(err instanceof ConnectError)) throw err;
    refuse(err);
    return;
  }

  const streaming = route.method.methodKind === "server_streaming";
  const header = new Headers(uReq.header);
  for (const h of ["content-length", "content-encoding", "accept-encoding", "connect-accept-encoding"])
    header.delete(h);
  header.set("content-type", streaming ? "application/connect+json" : JSON_TYPE);
  const rpcReq: UniversalServerRequest = {
    ...uReq,
    method: "POST",
    url: new URL(handler.requestPath, uReq.url).toString(),
    header,
    body: streaming
      ? (async function* () {
          yield envelope(0, Buffer.from(JSON.stringify(json)));
        })()
      : json,
  };
  const answer = await finish(await handler(rpcReq), "connect", done);
  const answerBody = answer.body ?? (async function* () {})();
  const extra: Record<string, string> = {};
  answer.header?.forEach((v, k) => {
    if (k === "retry-after") extra[k] = v;
  });

  if (!isConnectStream(answer.header?.get("content-type") ?? undefined)) {
    const chunks: Uint8Array[] = [];
    for await (const c of answerBody) chunks.push(c);
    const text = Buffer.concat(chunks).toString("utf8");
    const parsed = (text ? JSON.parse(text) : {}) as JsonObject;
    if (answer.status === 200) {
      send(res, 200, { "content-type": JSON_TYPE }, JSON.stringify(responseJson(route, parsed)));
    } else {
      send(res, answer.status, { ...extra, "content-type": JSON_TYPE }, JSON.stringify(statusJson(parsed).status));
    }
    return;
  }
  // A server stream: newline-delimited JSON; an error before the first message is an ordinary error
  // answer. The stream is read to its end whatever is written, so its outcome is reported.
  const ndjson = { "content-type": "application/x-ndjson", "cache-control": "no-store" };
  for await (const { flags, data } of envelopes(answerBody)) {
    if (res.writableEnded) continue;
    const frame = JSON.parse(Buffer.from(data).toString("utf8") || "{}") as JsonObject;
    if (!(flags & 0x02)) {
      if (!res.headersSent) res.writeHead(200, ndjson);
      res.write(`${JSON.stringify({ result: responseJson(route, frame) })}\n`);
      continue;
    }
    const error = frame.error as JsonObject | undefined;
    if (error && !res.headersSent) {
      const { status, code } = statusJson(error);
      const meta = (frame.metadata ?? {}) as Record<string, string[] | undefined>;
      const retryAfter = meta["retry-after"]?.[0];
      const headers = { "content-type": JSON_TYPE, ...(retryAfter ? { "retry-after": retryAfter } : {}) };
      send(
        res,
        connectHttpStatus(code, String(status.message), retryAfter !== undefined),
        headers,
        JSON.stringify(status),
      );
      continue;
    }
    if (error) res.write(`${JSON.stringify({ error: statusJson(error).status })}\n`);
    if (!res.headersSent) res.writeHead(200, ndjson);
    res.end();
  }
  if (!res.headersSent) res.writeHead(200, ndjson);
  if (!res.writableEnded) res.end();
}

/**
 * The fast path of a REST call to a routed unary method: the message is
 * built and checked as {@link serveRest} builds it, sent as bytes through
 * the upstream client of the gRPC fast path (passthrough.ts), and the
 * answer written as JSON in one piece — instead of a Connect JSON request
 * handed to connect-es's handler and its answer parsed back from text.
 * The same answers, the same order of checks (the body, then the
 * `connect-timeout-ms` deadline, then the admin role), the same errors
 * (rest-fast.test.ts sends each call both ways); the deadline runs from
 * the message's check, as the handler's did, and a client that goes away
 * cancels the upstream call.
 */
export async function serveRestUnary(
  req: Req,
  res: Res,
  match: RestMatch,
  method: PassthroughMethod,
  opts: {
    readonly identity: Identity | undefined;
    readonly client: ClientInfo;
    readonly maxBodyBytes: number;
    readonly idempotencyKey: string | undefined;
  },
  done: (o: Outcome) => void,
): Promise<void> {
  const call = callLifetime(req, res);
  try {
    const body = await readBody(req, opts.maxBodyBytes, call.signal);
    const json = requestJson(match, {
      query: queryOf(req.url),
      body: bodyJson(body, req.headers["content-encoding"], opts.maxBodyBytes),
      idempotencyKey: opts.idempotencyKey,
    });
    const input = checkRequest(match.route, json);
    const timeout = parseTimeout(
      (req.headers["connect-timeout-ms"] as string | undefined) ?? null,
      Number.MAX_SAFE_INTEGER,
    );
    if (timeout.error) throw timeout.error;
    if (timeout.timeoutMs !== undefined) {
      call.deadline(timeout.timeoutMs, new ConnectError("the operation timed out", Code.DeadlineExceeded));
    }
    const answer = await call.upstream(
      method,
      toBinary(method.method.input, input),
      opts.identity,
      opts.client.requestId,
    );
    const output = toJson(method.method.output, decodeAnswer(method, answer)) as JsonObject;
    call.succeeding();
    send(res, 200, { "content-type": JSON_TYPE }, JSON.stringify(responseJson(match.route, output)));
    done({ code: 0, message: "" });
  } catch (err) {
    call.answering();
    // Answered before the whole body arrived (a limit, a deadline): the rest is never read.
    dropUnreadBody(req, res);
    const e =
      err instanceof ConnectError ? err : new ConnectError("internal error", Code.Internal, undefined, undefined, err);
    const a = restErrorAnswer(e);
    if (!res.headersSent && !res.destroyed) send(res, a.status, a.headers, a.body);
    done({ code: e.code, message: e.rawMessage });
  } finally {
    call.end();
  }
}
