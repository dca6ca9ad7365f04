/**
 * The gateway's request pipeline in front of connect-es's protocol handlers
 * (it replaces connectNodeAdapter, which is a thin version of the same).
 * Everything that needs no decoded message happens here, before any body is
 * read, and is answered in the client's own protocol framing:
 *
 *   the per-IP limits (calls in progress, then rate) — first, so that no
 *   kind of request escapes them — then route lookup (unknown and internal
 *   procedures are UNIMPLEMENTED), the request's shape (Host, declared body
 *   size, Connect GET query), authentication and the per-principal rate
 *   limit, absurd deadlines clamped — then the handler, with the body
 *   counted as it streams in, and its final status corrected and observed.
 *
 * Every request gets one span, one RED sample and one access log line,
 * whichever way it ends. The span starts a trace of its own: a client's
 * `traceparent` is only linked (a client may not switch tracing off with
 * its sampled flag, or write into someone else's trace), unless
 * `trustTraceparent` says the client is a tracer you run.
 */
import type http from "node:http";
import type http2 from "node:http2";
import { base64Decode } from "@bufbuild/protobuf/wire";
import { Code, ConnectError, type ConnectRouter, createConnectRouter, createContextValues } from "@connectrpc/connect";
import type { UniversalHandler } from "@connectrpc/connect/protocol";
import { universalResponseToNodeResponse } from "@connectrpc/connect-node";
import { context } from "@opentelemetry/api";
import { MAX_TIMER_MS } from "../platform/deadline.js";
import type { Logger } from "../platform/log.js";
import type { Telemetry } from "../platform/telemetry.js";
import { clampGrpcTimeout } from "../platform/timeout-header.js";
import { dropUnreadBody, universalRequest } from "./answer-end.js";
import { AuthError, type Authenticator, authorizationOf } from "./auth.js";
import { limitedBody } from "./body.js";
import { connectFastEncoding, createConnectUnary, routerOptions } from "./connect-unary.js";
import { type Caller, type ClientInfo, hostProblem, kClient, kIdentity } from "./context.js";
import { bodyLimit, webText } from "./grpc-web-text.js";
import { jsonError } from "./json-errors.js";
import { admitAddress, admitPrincipal, type ConcurrencyLimiter, type RateLimiter } from "./limits.js";
import { observe } from "./observe.js";
import { type PassthroughMethod, passthrough, takesPassthrough } from "./passthrough.js";
import { type RestMatch, RestRouter } from "./rest.js";
import { restErrorAnswer, serveRest, serveRestUnary } from "./rest-serve.js";
import { echoed, errorAnswer, finish, isConnectStream, type Outcome, protocolOf, queryOf } from "./wire.js";

type NodeRequest = http.IncomingMessage | http2.Http2ServerRequest;
type NodeResponse = http.ServerResponse | http2.Http2ServerResponse;

/** What the pipeline needs. */
export interface DispatchOptions {
  readonly routes: (router: ConnectRouter) => void;
  readonly log: Logger;
  readonly telemetry: Telemetry;
  readonly authenticate: Authenticator;
  readonly perPrincipal: RateLimiter;
  readonly perIp: RateLimiter;
  /** Calls in progress per client address and in all; streams (WatchOrder) per principal, unbounded when absent. */
  readonly inFlight: ConcurrencyLimiter;
  readonly streamsPerPrincipal?: ConcurrencyLimiter;
  /** Continue the client's `traceparent` instead of only linking it (the client is a tracer you run). */
  readonly trustTraceparent: boolean;
  /** Refuse a Host that is not a loopback name (with the public development key: a DNS-rebinding page). */
  readonly loopbackHostsOnly?: boolean;
  /** Largest request body, in bytes, as sent and after decompression. */
  readonly maxBodyBytes: number;
  /** Take the client IP from the last X-Forwarded-For hop (only behind a proxy that appends it). */
  readonly trustProxy: boolean;
  /** Services callable without a token (the reflection service: it reveals only the public contract). */
  readonly tokenFree: ReadonlySet<string>;
  /** Routed unary methods by path, for gRPC calls forwarded as bytes (passthrough.ts). */
  readonly passthrough?: ReadonlyMap<string, PassthroughMethod>;
}

/** Handles one request; `requestId` is already settled by the caller. */
export type Dispatch = (req: NodeRequest, res: NodeResponse, requestId: string) => void;

/** Rewrites `grpc-timeout` / `connect-timeout-ms` values beyond what a Node timer holds (~24.8 days) to that maximum. */
function clampTimeouts(headers: http.IncomingHttpHeaders): void {
  const g = headers["grpc-timeout"];
  if (typeof g === "string") headers["grpc-timeout"] = clampGrpcTimeout(g); // as the services read it
  const c = headers["connect-timeout-ms"];
  if (typeof c === "string" && /^\d{1,10}$/.test(c) && Number(c) > MAX_TIMER_MS) {
    headers["connect-timeout-ms"] = String(MAX_TIMER_MS);
  }
}

/**
 * The headers connect-es (and the fast paths, as it) quotes whole in the error when it cannot read
 * them: a compression or a timeout. None is valid past a few characters; one past 200 is cut to its
 * first 200 and "...", as {@link echoed} cuts a path (and as invalid: no value ends so), so that the
 * error quoting it stays small (a 60 KB one came back as a 60 KB `grpc-message`, a header list a gRPC
 * client or a proxy refuses). Not with echoed's "…": connect-es reads the headers into a fetch
 * `Headers`, which throws on a character past U+00FF (a 500).
 */
const QUOTED = ["grpc-encoding", "grpc-timeout", "content-encoding", "connect-content-encoding", "connect-timeout-ms"];
function clipQuoted(headers: http.IncomingHttpHeaders): void {
  for (const name of QUOTED) {
    const v = headers[name];
    if (typeof v === "string" && v.length > 200) headers[name] = `${v.slice(0, 200)}...`;
  }
}

/**
 * gRPC-Web's trailer percent-encodes an error's message, and connect-es's encodeURIComponent throws on
 * a lone surrogate, which a client's JSON puts there (a key or an enum value written `"\ud800"`, quoted
 * in the INVALID_ARGUMENT): it was answered INTERNAL, counted Unknown, and logged a warning with a stack.
 */
const UNENCODABLE = new ConnectError("the request holds a lone surrogate (U+D800 to U+DFFF)", Code.InvalidArgument);

/** The client's address: the socket peer, or the last X-Forwarded-For hop when a trusted proxy appended it. */
export function clientIp(req: NodeRequest, trustProxy: boolean): string {
  if (trustProxy) {
    const hops = String(req.headers["x-forwarded-for"] ?? "").split(",");
    const last = hops[hops.length - 1]?.trim();
    if (last) return last;
  }
  return req.socket?.remoteAddress ?? "";
}

/** Why a request cannot be dispatched at all, or undefined. */
function refusal(req: NodeRequest, o: DispatchOptions, rest: boolean): ConnectError | undefined {
  // connect-es needs an authority, and builds a URL from it; HTTP/1.0 may omit Host.
  const badHost = hostProblem(req, o.loopbackHostsOnly);
  if (badHost) return new ConnectError(badHost, Code.InvalidArgument);
  const length = Number(req.headers["content-length"] ?? 0);
  const limit = bodyLimit(req.headers["content-type"], o.maxBodyBytes);
  if (length > limit) {
    return new ConnectError(`request body of ${length} bytes exceeds the limit of ${limit}`, Code.ResourceExhausted);
  }
  // HEAD is served as the GET (below), so refused as it: connect-es answered its bad base64 500.
  if ((req.method === "GET" || req.method === "HEAD") && !rest) {
    const query = new URLSearchParams(queryOf(req.url));
    if (query.get("base64") === "1") {
      try {
        base64Decode(query.get("message") ?? "");
      } catch {
        return new ConnectError("the message query parameter is not valid base64", Code.InvalidArgument);
      }
    }
  }
  return undefined;
}

export function answer(
  res: NodeResponse,
  a: { status: number; headers: Record<string, string>; body: Uint8Array },
): void {
  res.statusCode = a.status;
  for (const [k, v] of Object.entries({ ...a.headers, "content-length": String(a.body.byteLength) }))
    res.setHeader(k, v);
  // Without writeHead, HTTP/2 sends headers and end of stream in one HEADERS frame: a gRPC Trailers-Only answer.
  if (a.body.byteLength === 0) res.end();
  else res.end(a.body);
}

interface Admitted {
  readonly handler: UniversalHandler;
  readonly identity: Caller | undefined;
}
type Admission =
  | Admitted
  | { readonly refused: ConnectError; readonly httpStatus?: number; readonly unreadBody?: boolean };

/**
 * What is decided before a handler runs (the per-IP limits were taken
 * first), cheapest first: the route, the request's shape, the token and the
 * per-principal limits.
 */
async function admit(
  o: DispatchOptions,
  [req, res]: [NodeRequest, NodeResponse],
  handler: UniversalHandler | undefined,
  path: string,
  client: ClientInfo,
  rest: boolean,
): Promise<Admission> {
  if (!handler)
    return {
      refused: new ConnectError(`no public procedure ${echoed(path)}`, Code.Unimplemented),
      httpStatus: 404,
    };
  const refused = refusal(req, o, rest);
  // A declared length over the limit: the body is never read (the connection ends, and says so).
  if (refused) return { refused, unreadBody: refused.code === Code.ResourceExhausted };
  if (o.tokenFree.has(handler.service.typeName)) return { handler, identity: undefined };
  let identity: Caller;
  let authorization: string | null = null;
  try {
    authorization = authorizationOf(req.rawHeaders);
    identity = await o.authenticate(authorization);
  } catch (err) {
    if (!(err instanceof AuthError)) throw err;
    o.log.debug({ reason: err.message, ip: client.ip, request_id: client.requestId }, "authentication failed");
    // One generic answer for every failure: no hint which check failed. The challenge a 401 must carry
    // (RFC 9110 §11.6.1), with RFC 6750's error code only when a bearer token was sent.
    const challenge = `Bearer realm="shopmesh"${authorization?.startsWith("Bearer ") ? ', error="invalid_token"' : ""}`;
    return {
      refused: new ConnectError("authentication required: a valid bearer token", Code.Unauthenticated, {
        "www-authenticate": challenge,
      }),
    };
  }
  const byPrincipal = admitPrincipal(o, identity.subject, handler.method.methodKind !== "unary", req, res);
  return byPrincipal ? { refused: byPrincipal } : { handler, identity };
}

/** Builds the pipeline over the routes `o.routes` registers. */
export function createDispatch(o: DispatchOptions): Dispatch {
  const router = createConnectRouter(routerOptions(o.maxBodyBytes));
  o.routes(router);
  const connectUnary = createConnectUnary(o.passthrough ?? new Map(), o.maxBodyBytes);
  const handlers = new Map(router.handlers.map((h) => [h.requestPath, h]));
  const byMethod = new Map(router.handlers.map((h) => [h.method, h]));
  const rest = new RestRouter(byMethod.keys());

  return (req, res, requestId) => {
    const contentType = req.headers["content-type"];
    const path = (req.url ?? "").split("?", 1)[0] ?? "";
    let handler = handlers.get(path);
    // A path of the REST namespace (/v1/...): routed by the google.api.http annotations.
    let restMatch: RestMatch | undefined;
    let restMissing: { err: ConnectError; status: number } | undefined;
    if (!handler && rest.owns(path)) {
      const m = rest.match(req.method ?? "", path);
      if (m && "route" in m) {
        restMatch = m;
        handler = byMethod.get(m.route.method);
      } else {
        // What the client sent, echoed at most 200 characters long (wire.ts).
        const what = `${echoed(req.method ?? "")} ${echoed(path)}`;
        restMissing = m
          ? {
              err: new ConnectError(`method not allowed: ${what}`, Code.Unimplemented, { allow: m.allowed.join(", ") }),
              status: 405,
            }
          : { err: new ConnectError(`no route ${what}`, Code.NotFound), status: 404 };
      }
    }
    const isRest = restMatch !== undefined || restMissing !== undefined;
    const wire = protocolOf(contentType);
    // gRPC names no media-type parameters; grpc-js takes `application/grpc; charset=utf-8` as gRPC, and
    // connect-es would refuse it with a bare 415: served as the services would serve it.
    if (wire === "grpc" && contentType?.includes(";")) req.headers["content-type"] = contentType.split(";")[0]?.trim();
    const protocol = isRest ? "rest" : wire;
    const web = webText(req.headers); // gRPC-Web text served as binary (grpc-web-text.ts)
    const frame = (err: ConnectError, httpStatus?: number) =>
      isRest ? restErrorAnswer(err, httpStatus) : web.refusal(errorAnswer(wire, contentType, err, httpStatus));
    const client: ClientInfo = { ip: clientIp(req, o.trustProxy), requestId };
    const { admitted, report, procedure } = observe(o, req, handler, protocol, client);
    let principal = "";

    const refuse = (err: ConnectError, httpStatus?: number) => {
      answer(res, frame(err, httpStatus));
      report({ code: err.code, message: err.rawMessage }, principal);
    };
    // Per client address, before anything else: calls in progress, then the rate.
    const byAddress = admitAddress(o, client.ip, req, res);
    if (byAddress) {
      refuse(byAddress);
      return;
    }

    const run = async () => {
      if (restMissing) {
        refuse(restMissing.err, restMissing.status);
        return;
      }
      const admission = await admit(o, [req, res], handler, path, client, isRest);
      if ("refused" in admission) {
        if (admission.unreadBody) dropUnreadBody(req, res);
        refuse(admission.refused, admission.httpStatus);
        return;
      }
      await context.with(admitted(admission.identity === undefined), serve, undefined, admission);
    };

    const serve = async (admission: Admitted) => {
      principal = admission.identity?.subject ?? "";
      clipQuoted(req.headers);
      clampTimeouts(req.headers);
      const done = (outcome: Outcome) => report(outcome, principal);
      const { maxBodyBytes } = o;
      const fast = o.passthrough?.get(path);
      if (fast && takesPassthrough(req)) {
        const [h2req, h2res] = [req as http2.Http2ServerRequest, res as http2.Http2ServerResponse];
        await passthrough(h2req, h2res, fast, admission.identity, client, maxBodyBytes, done);
        return;
      }
      const encoding = fast && wire === "connect" ? connectFastEncoding(req) : undefined;
      if (fast && encoding) {
        await connectUnary(req, res, fast, encoding, admission.identity, client, done);
        return;
      }
      const values = createContextValues().set(kClient, client).set(kIdentity, admission.identity);
      const nodeReq = req as http.IncomingMessage;
      if (restMatch) {
        const key = req.headers["idempotency-key"];
        const idempotencyKey = restMatch.route.httpMethod === "POST" && typeof key === "string" ? key : undefined;
        const unary = o.passthrough?.get(admission.handler.requestPath);
        if (unary) {
          const { identity } = admission;
          await serveRestUnary(req, res, restMatch, unary, { identity, client, maxBodyBytes, idempotencyKey }, done);
          return;
        }
        const body = (raw: AsyncIterable<Uint8Array>) => limitedBody(raw, maxBodyBytes, false);
        const restRes = res as http.ServerResponse;
        const restOpts = { body, maxBodyBytes, values, idempotencyKey };
        await serveRest(nodeReq, restRes, restMatch, admission.handler, restOpts, done);
        return;
      }
      const { allowedMethods, method } = admission.handler;
      // GET is the Connect protocol's for unary calls only (connect-es lists it for streams too); HEAD
      // is GET without the content (RFC 9110 §9.3.2), which Node leaves out of a HEAD's answer itself.
      const getting = allowedMethods.includes("GET") && method.methodKind === "unary";
      const uReq = web.request(universalRequest(req, res, values), maxBodyBytes);
      const enveloped = wire !== "connect" || isConnectStream(contentType); // else a unary Connect body
      const uRes = await admission
        .handler({
          ...uReq,
          method: req.method === "HEAD" && getting ? "GET" : uReq.method,
          body: limitedBody(uReq.body as AsyncIterable<Uint8Array>, maxBodyBytes, enveloped),
        })
        .catch((err: unknown) => {
          if (err instanceof URIError) return undefined; // see UNENCODABLE
          throw err;
        });
      if (!uRes) return refuse(UNENCODABLE);
      dropUnreadBody(req, res); // answered before the whole body arrived (a limit): the connection ends, and says so
      const input = admission.handler.method.input;
      const answered = web.answer(await finish(uRes, wire, done, (message) => jsonError(input, message)));
      // A GET of a procedure that takes none is the method's fault: connect-es says 415, though a GET has no content.
      const reading = req.method === "GET" || req.method === "HEAD";
      const status = answered.status === 415 && reading && !getting ? 405 : answered.status;
      // RFC 9110 §15.5.6: a 405 names the methods the procedure takes (connect-es names none).
      if (status === 405) res.setHeader("allow", getting ? "POST, GET, HEAD" : "POST");
      await universalResponseToNodeResponse({ ...answered, status }, res as http.ServerResponse);
    };

    run().catch((err: unknown) => {
      // The client went away mid-answer (or a bug): nothing more can be sent on this request.
      const e = ConnectError.from(err);
      // connect-node names a write to a stream the client closed ABORTED, a conflict's code: it cancelled.
      const code = e.code === Code.Aborted && ("stream" in res ? res.stream : res).destroyed ? Code.Canceled : e.code;
      if (code !== Code.Aborted && code !== Code.Canceled) o.log.warn({ err, procedure }, "request failed");
      report({ code, message: e.rawMessage }, principal);
      if (!res.headersSent) answer(res, frame(new ConnectError("internal error", Code.Internal)));
      else if (!res.writableEnded) res.destroy();
    });
  };
}
