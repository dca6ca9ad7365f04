/**
 * The gateway's fast path for Connect unary calls (`application/json` or
 * `application/proto`, POST, over HTTP/1.1 or HTTP/2) to routed methods:
 * the message is parsed with connect-es's own serialization — the same
 * options the router uses, so a bad request fails with the same error —
 * then sent (a binary one as the bytes it came as, unknown fields and all;
 * a JSON one encoded once) through the byte-forwarding upstream client the
 * gRPC fast path uses (passthrough.ts); the answer is decoded and written
 * in the client's encoding. connect-es's router, its universal request and
 * response adapters, the per-call AbortSignals and async iterables, and
 * grpc-js are all skipped.
 *
 * What the general path does stays as it was (dispatch.ts decides before
 * this runs: limits, routing, the token, identity, span, RED sample and
 * access line). Here, in connect-es's order: the `connect-timeout-ms`
 * deadline (an invalid one is INVALID_ARGUMENT), which here runs from the
 * start, reading the body included (an answer before the body is whole ends
 * an HTTP/1.1 connection); the body counted against the size limit as it
 * streams in; the message parsed (INVALID_ARGUMENT naming the field);
 * the admin-only check; the upstream call with the gateway's identity and
 * deadline, cancelled when the client goes away; errors mapped as
 * forward.ts maps them and framed as wire.ts frames Connect errors (JSON
 * and an HTTP status); the answer compressed as connect-es would
 * (accept-encoding, at least `compressMinBytes`).
 *
 * Compressed requests, GET requests and streaming calls take the general path.
 */
import type http from "node:http";
import type http2 from "node:http2";
import { type DescMessage, fromBinary, toBinary } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  type Compression,
  compressionNegotiate,
  createMethodSerializationLookup,
  type MethodSerializationLookup,
  validateUniversalHandlerOptions,
} from "@connectrpc/connect/protocol";
import { codeToHttpStatus, errorToJsonBytes, parseTimeout } from "@connectrpc/connect/protocol-connect";
import { compressionBrotli, compressionGzip } from "@connectrpc/connect-node";
import { Metadata } from "@grpc/grpc-js";
import { Code as GrpcCode, RpcError } from "../platform/errors.js";
import type { Identity } from "../platform/identity-rule.js";
import { dropUnreadBody } from "./answer-end.js";
import { boundedInflation, readBody } from "./body.js";
import type { ClientInfo } from "./context.js";
import { toConnectError } from "./forward.js";
import { jsonError } from "./json-errors.js";
import { callLifetime, type PassthroughMethod } from "./passthrough.js";
import { codeOfStatus, errorAnswer, type Outcome, reclassify } from "./wire.js";

type NodeRequest = http.IncomingMessage | http2.Http2ServerRequest;
type NodeResponse = http.ServerResponse | http2.Http2ServerResponse;

/**
 * The options of the gateway's connect-es router (dispatch.ts), which this
 * path mirrors: proto3 JSON as the spec reads it (unknown fields and enum
 * names are errors, not silently dropped), gzip and brotli.
 */
export function routerOptions(maxBodyBytes: number) {
  return {
    readMaxBytes: maxBodyBytes,
    jsonOptions: { ignoreUnknownFields: false },
    acceptCompression: [compressionGzip, compressionBrotli].map(boundedInflation),
  };
}

/** Connect's unary content types, as connect-es matches them. */
const JSON_TYPE = /^application\/json(?:; ?charset=utf-?8)?$/i;
const PROTO_TYPE = /^application\/proto$/i;

/** The encoding of a request the fast path can take (POST, Connect unary, uncompressed), or undefined. */
export function connectFastEncoding(req: NodeRequest): "json" | "proto" | undefined {
  if (req.method !== "POST") return undefined;
  const encoding = req.headers["content-encoding"];
  if (encoding !== undefined && encoding !== "identity") return undefined;
  const type = req.headers["content-type"];
  if (type === undefined) return undefined;
  if (JSON_TYPE.test(type)) return "json";
  if (PROTO_TYPE.test(type)) return "proto";
  return undefined;
}

/** Answers one fast-path Connect call; `done` reports how it ended. */
export type ConnectUnary = (
  req: NodeRequest,
  res: NodeResponse,
  method: PassthroughMethod,
  encoding: "json" | "proto",
  identity: Identity | undefined,
  client: ClientInfo,
  done: (outcome: Outcome) => void,
) => Promise<void>;

/** The fast path for the methods of `table`, with the router's options for a body limit of `maxBodyBytes`. */
export function createConnectUnary(table: ReadonlyMap<string, PassthroughMethod>, maxBodyBytes: number): ConnectUnary {
  const opt = validateUniversalHandlerOptions(routerOptions(maxBodyBytes));
  const lookups = new Map(
    [...table.values()].map((m) => [
      m,
      // A binary request is decoded only to be checked (its bytes are sent on): unknown fields skipped, not kept.
      createMethodSerializationLookup(m.method, { readUnknownFields: false }, opt.jsonOptions, opt),
    ]),
  );

  return async (req, res, method, encoding, identity, client, done) => {
    const binary = encoding === "proto";
    const serialization = lookups.get(method);
    const call = callLifetime(req, res);
    try {
      if (!serialization) throw new ConnectError("internal error", Code.Internal);
      const timeout = parseTimeout((req.headers["connect-timeout-ms"] as string | undefined) ?? null, opt.maxTimeoutMs);
      if (timeout.error) throw timeout.error;
      if (timeout.timeoutMs !== undefined) {
        // The deadline runs from the start, reading the body included: a client that stops sending is
        // answered at its deadline (the general path waits for the body, or Node's request timeout).
        call.deadline(timeout.timeoutMs, new ConnectError("the operation timed out", Code.DeadlineExceeded));
      }
      const body = await readBody(req, maxBodyBytes, call.signal);
      const input = parse(serialization, binary, body, method);
      const message = binary ? body : toBinary(method.method.input, input);
      const answer = await call.upstream(method, message, identity, client.requestId);
      const output = decodeAnswer(method, answer);
      let out = serialization.getO(binary).serialize(output);
      const headers: Record<string, string> = { "content-type": binary ? "application/proto" : "application/json" };
      const accepted = req.headers["accept-encoding"];
      const compression = compressionNegotiate(opt.acceptCompression, null, accepted ?? null, "accept-encoding");
      if (compression.response && out.byteLength >= opt.compressMinBytes) {
        out = await compression.response.compress(out);
        headers["content-encoding"] = compression.response.name;
      }
      headers["content-length"] = String(out.byteLength);
      call.succeeding();
      res.writeHead(200, headers);
      res.end(out);
      done({ code: 0, message: "" });
    } catch (err) {
      call.answering();
      // Answered before the whole body arrived (a deadline, a limit): the rest is never read.
      dropUnreadBody(req, res);
      const accepted = req.headers["accept-encoding"] ?? null;
      const compression = compressionNegotiate(opt.acceptCompression, null, accepted, "accept-encoding").response;
      await fail(res, err, done, compression, opt.compressMinBytes);
    } finally {
      call.end();
    }
  };
}

/** The request's message; a JSON one that does not decode is named by its field (message and BadRequest detail), as REST names it. */
function parse(
  serialization: MethodSerializationLookup<DescMessage, DescMessage>,
  binary: boolean,
  body: Uint8Array,
  method: PassthroughMethod,
) {
  try {
    return serialization.getI(binary).parse(body);
  } catch (err) {
    const e = ConnectError.from(err);
    if (binary || e.code !== Code.InvalidArgument) throw e;
    throw jsonError(method.method.input, e.rawMessage);
  }
}

/** The upstream's answer as a message; one that does not decode fails as grpc-js fails it (INTERNAL). */
export function decodeAnswer(method: PassthroughMethod, answer: Uint8Array) {
  try {
    return fromBinary(method.method.output, answer);
  } catch {
    const err = new RpcError(GrpcCode.INTERNAL, "Failed to parse server response", new Metadata());
    throw toConnectError(err, method.upstream);
  }
}

/**
 * Answers `err` as a Connect unary error, its code corrected as wire.ts corrects connect-es's (unless
 * gone). An error body of `minBytes` or more goes out compressed when the client accepts it, as
 * connect-es sends it — and then, as on the general path (wire.ts passes a compressed error through),
 * uncorrected, with connect-es's own HTTP status.
 */
async function fail(
  res: NodeResponse,
  err: unknown,
  done: (outcome: Outcome) => void,
  compression: Compression | null,
  minBytes: number,
): Promise<void> {
  let e =
    err instanceof ConnectError ? err : new ConnectError("internal error", Code.Internal, undefined, undefined, err);
  // Corrected before either answer is built: a client's malformed message is INVALID_ARGUMENT, compressed or not.
  const code = reclassify(e.code, e.rawMessage);
  if (code !== e.code) e = new ConnectError(e.rawMessage, code);
  const raw = errorToJsonBytes(e, undefined);
  if (compression && raw.byteLength >= minBytes) {
    const body = await compression.compress(raw);
    const status = codeToHttpStatus(e.code);
    const headers: Record<string, string> = {};
    e.metadata.forEach((v, k) => {
      headers[k] = v;
    });
    Object.assign(headers, {
      "content-type": "application/json",
      "content-encoding": compression.name,
      "content-length": String(body.byteLength),
    });
    if (!res.headersSent && !res.destroyed) {
      res.writeHead(status, headers);
      res.end(body);
    }
    done({ code: codeOfStatus(status), message: `HTTP ${status}` });
    return;
  }
  const a = errorAnswer("connect", undefined, e);
  if (!res.headersSent && !res.destroyed) {
    res.writeHead(a.status, { ...a.headers, "content-length": String(a.body.byteLength) });
    res.end(a.body);
  }
  done({ code: e.code, message: e.rawMessage });
}
