/**
 * The gateway's fast path for the common case — a gRPC client calling a
 * routed unary method over HTTP/2: the message is forwarded as the bytes it
 * arrived as, and the answer's bytes go back the same way. Nothing is
 * decoded or re-encoded, and connect-es's handler machinery is skipped.
 *
 * Everything else stays as on the general path (dispatch.ts decides before
 * this runs): the per-IP and per-principal limits, routing, the token and
 * the identity the gateway sets itself (nothing the client sent is copied
 * downstream), the access log, span and RED sample. Here: the admin-only
 * check, the client's deadline (grpc-timeout) carried to the upstream call,
 * a client's cancel cancelling it, the same resilient client (bulkhead,
 * retries, per-instance breakers) on encoded messages, and errors mapped as
 * forward.ts maps them. A malformed request is the client's error
 * (INVALID_ARGUMENT); the upstream service decodes the message and refuses
 * what does not decode, as it does for any caller.
 *
 * Compressed requests (grpc-encoding) and every other protocol take the
 * general path.
 */
import type http2 from "node:http2";
import type { DescMethod } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { parseTimeout } from "@connectrpc/connect/protocol-grpc";
import { framePrefix, unframe } from "../platform/grpc.js";
import type { BytesClient } from "../platform/grpc-client.js";
import type { Identity } from "../platform/identity-rule.js";
import { onAnswerEnd } from "./answer-end.js";
import { flaggedWrong, readBody } from "./body.js";
import type { ClientInfo } from "./context.js";
import type { Req, Res } from "./endpoint.js";
import { callOptions, toConnectError } from "./forward.js";
import type { Route, Upstream } from "./routes.js";
import { errorAnswer, type Outcome } from "./wire.js";

/** One routed unary method as the fast path calls it. */
export interface PassthroughMethod {
  readonly method: DescMethod;
  readonly upstream: Upstream;
  readonly name: string;
  readonly adminOnly: boolean;
  readonly call: BytesClient[string];
}

/** The routed unary methods by request path (`/package.Service/Method`). */
export function passthroughTable(
  routes: readonly Route[],
  clients: Record<Upstream, { readonly bytes: BytesClient }>,
): ReadonlyMap<string, PassthroughMethod> {
  const table = new Map<string, PassthroughMethod>();
  for (const route of routes) {
    for (const name of route.methods) {
      const m = route.service.methods.find((x) => x.name === name);
      const call = m && clients[route.upstream].bytes[m.localName];
      if (m?.methodKind !== "unary" || !call) continue;
      table.set(`/${route.service.typeName}/${name}`, {
        method: m,
        upstream: route.upstream,
        name,
        adminOnly: route.adminOnly?.includes(name) ?? false,
        call,
      });
    }
  }
  return table;
}

/** True when a request can take the fast path: a gRPC (not gRPC-Web) POST over HTTP/2, uncompressed. */
export function takesPassthrough(req: {
  httpVersionMajor: number;
  method?: string | undefined;
  headers: http2.IncomingHttpHeaders;
}): boolean {
  const type = req.headers["content-type"];
  const encoding = req.headers["grpc-encoding"];
  // Any other method is the general path's to refuse (405, or 415 for GET), as connect-es does.
  return (
    req.httpVersionMajor === 2 &&
    req.method === "POST" &&
    (type === "application/grpc" || type === "application/grpc+proto") &&
    (encoding === undefined || encoding === "identity")
  );
}

const invalid = (message: string) => new ConnectError(message, Code.InvalidArgument);

/** The one message of a unary gRPC request body (a 5-byte prefix, then the message) of at most `max` bytes. */
function unaryMessage(body: Buffer, max: number): Buffer {
  // A prefix declaring more than the limit is refused as connect-es refuses it on the general path.
  const declared = body.byteLength >= 5 ? body.readUInt32BE(1) : 0;
  if (declared > max) {
    throw new ConnectError(
      `message size ${declared} is larger than configured readMaxBytes ${max}`,
      Code.ResourceExhausted,
    );
  }
  if (body.byteLength >= 5 && (body[0] ?? 0) > 1) throw flaggedWrong(body[0] ?? 0);
  const message = unframe(body);
  if (typeof message === "string") throw invalid(`protocol error: the request body ${message}`);
  return message;
}

/**
 * The life of one fast-path call: `signal` aborts when the client goes away (RST_STREAM, a closed
 * connection) before `answering()`, or at `deadline(ms, err)` (at once for 0 or less, as connect-es
 * does); `end()` lets go of both. (Node's compatibility layer reports a reset stream as finished
 * too: only the answering flag can tell.)
 */
export function callLifetime(req: Req, res: Res) {
  const ac = new AbortController();
  let timer: NodeJS.Timeout | undefined;
  let answering = false;
  let expiry: { at: number; err: ConnectError } | undefined;
  // Its answer's end, or its connection's: an HTTP/1.1 answer queued behind another never closes.
  const forget = onAnswerEnd(req, res, () => {
    if (!answering) ac.abort(new ConnectError("the client cancelled the call", Code.Canceled));
  });
  return {
    signal: ac.signal,
    deadline: (ms: number, err: ConnectError) => {
      expiry = { at: Date.now() + ms, err };
      if (ms <= 0) ac.abort(err);
      else timer = setTimeout(() => ac.abort(err), ms);
    },
    /**
     * Calls `method` upstream with `message`: the admin role checked first, then the gateway's
     * identity, the client's deadline and cancel carried; a failure mapped as forward.ts maps it.
     */
    upstream: async (method: PassthroughMethod, message: Uint8Array, identity: Identity | undefined, id: string) => {
      if (method.adminOnly && !identity?.roles.includes("admin")) {
        throw new ConnectError(`${method.name} needs the admin role`, Code.PermissionDenied);
      }
      const opts = callOptions(identity, id, ac.signal, undefined);
      try {
        return await method.call(message, expiry ? { ...opts, deadline: expiry.at } : opts);
      } catch (err) {
        // Timers may fire a millisecond before Date.now() says so.
        throw toConnectError(
          err,
          method.upstream,
          ac.signal,
          expiry && Date.now() >= expiry.at - 1 ? expiry.err : undefined,
        );
      }
    },
    /** An answer is about to be written: from here a closing response is its end, not a cancel. */
    answering: () => {
      answering = true;
    },
    /**
     * {@link answering} for a success — or the client's cancel or deadline error if either came while
     * the answer was on its way (on HTTP/2 `res.destroyed` never says so).
     */
    succeeding: () => {
      if (ac.signal.aborted) throw ac.signal.reason;
      answering = true;
    },
    end: () => {
      clearTimeout(timer);
      forget();
    },
  };
}

/** Answers one fast-path call; `done` reports how it ended. */
export async function passthrough(
  req: http2.Http2ServerRequest,
  res: http2.Http2ServerResponse,
  method: PassthroughMethod,
  identity: Identity | undefined,
  client: ClientInfo,
  maxBodyBytes: number,
  done: (outcome: Outcome) => void,
): Promise<void> {
  const call = callLifetime(req, res);
  const fail = (err: ConnectError) => {
    call.answering();
    const a = errorAnswer("grpc", undefined, err);
    if (!res.headersSent && !res.destroyed) {
      res.statusCode = a.status;
      for (const [k, v] of Object.entries(a.headers)) res.setHeader(k, v);
      res.end();
    }
    done({ code: err.code, message: err.rawMessage });
  };
  try {
    // An empty value is a malformed one, as connect-es reads it on the general path, not none.
    const raw = req.headers["grpc-timeout"];
    const timeout = parseTimeout(raw === undefined ? null : String(raw), Number.MAX_SAFE_INTEGER);
    if (timeout.error) throw invalid(timeout.error.rawMessage);
    // The client's deadline runs from now, reading its body included.
    if (timeout.timeoutMs !== undefined) {
      // connect-es's words, as the general path answers a gRPC client.
      call.deadline(timeout.timeoutMs, new ConnectError("the operation timed out", Code.DeadlineExceeded));
    }
    const message = unaryMessage(await readBody(req, maxBodyBytes, call.signal), maxBodyBytes);
    // The role after the deadline and the message, as on the general path: a malformed call is INVALID_ARGUMENT first.
    const answer = await call.upstream(method, message, identity, client.requestId);
    call.succeeding();
    res.writeHead(200, { "content-type": req.headers["content-type"] as string });
    res.addTrailers({ "grpc-status": "0" });
    res.write(framePrefix(answer.byteLength));
    res.end(answer);
    done({ code: 0, message: "" });
  } catch (err) {
    fail(
      err instanceof ConnectError ? err : new ConnectError("internal error", Code.Internal, undefined, undefined, err),
    );
  } finally {
    call.end();
  }
}
