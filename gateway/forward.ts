/**
 * Descriptor-driven forwarding: for every routed method the gateway
 * registers one Connect handler that calls the upstream through its
 * resilient gRPC client — built once at start, so the per-call path does no
 * lookup, reflection or policy construction. Identity and tracing metadata
 * are set by the gateway itself; nothing the client sent is copied
 * downstream wholesale, so a forged identity header never gets through.
 */
import type { DescMethod } from "@bufbuild/protobuf";
import { Code, ConnectError, type ConnectRouter, type HandlerContext } from "@connectrpc/connect";
import { Metadata, status } from "@grpc/grpc-js";
import { ERROR_DETAILS, RpcError, ServiceError, toStatusObject } from "../platform/errors.js";
import type { CallOptions } from "../platform/grpc-client.js";
import { identityMetadata } from "../platform/identity.js";
import type { Identity } from "../platform/identity-rule.js";
import { type Caller, kClient, kIdentity } from "./context.js";
import type { Route, Upstream } from "./routes.js";

type AnyCall = (req: unknown, opts?: CallOptions) => unknown;
/** An upstream's typed client, seen untyped: one function per method local name. */
export type UpstreamClient = Readonly<Record<string, unknown>>;

/** Metadata (the verified identity, the request id: nothing else of the client's) and deadline of an upstream call. */
export function callOptions(
  identity: Identity | undefined,
  requestId: string,
  signal: AbortSignal,
  timeoutMs: number | undefined,
): CallOptions {
  const md = identity ? identityMetadata(identity) : new Metadata();
  md.set("x-request-id", requestId);
  return { metadata: md, signal, ...(timeoutMs === undefined ? {} : { deadline: Date.now() + timeoutMs }) };
}

/** {@link callOptions} for the upstream call of `ctx`. */
export function upstreamOptions(ctx: HandlerContext): CallOptions {
  return callOptions(ctx.values.get(kIdentity), ctx.values.get(kClient).requestId, ctx.signal, ctx.timeoutMs());
}

/** connect-es's error for a handler's deadline, once `ctx`'s has passed (a timer may fire a millisecond early). */
function expiredOf(ctx: HandlerContext): ConnectError | undefined {
  const left = ctx.timeoutMs();
  return left !== undefined && left <= 1
    ? new ConnectError("the operation timed out", Code.DeadlineExceeded)
    : undefined;
}

/**
 * What a client may read of an upstream failure that is not a business
 * answer: a fixed sentence per code. The original text (which may name an
 * internal address, e.g. grpc-js's "connect ECONNREFUSED 10.0.3.7:50052")
 * stays in the error's cause for the gateway's own log.
 */
const INFRASTRUCTURE: Partial<Record<Code, (upstream: string) => string>> = {
  [Code.Unavailable]: (u) => `${u} is unavailable; retry later`,
  [Code.DeadlineExceeded]: (u) => `deadline exceeded waiting for ${u}`,
  [Code.Canceled]: () => "call cancelled",
  [Code.Internal]: (u) => `${u} failed with an internal error`,
  [Code.Unknown]: (u) => `${u} failed with an unknown error`,
  [Code.DataLoss]: (u) => `${u} failed with an internal error`,
  [Code.Unimplemented]: (u) => `${u} does not implement this call`,
};

/**
 * The Connect error for a failed upstream call. Business answers keep their
 * code, message and google.rpc details (decoded, so Connect's JSON errors
 * carry a readable `debug` form). Infrastructure failures get a fixed
 * message (see {@link INFRASTRUCTURE}); load shedding says when to retry. If
 * the client's own deadline or cancel ended the call, that is the answer:
 * DEADLINE_EXCEEDED, never the CANCELLED the upstream call saw — and
 * `expired`, the client's deadline error once that deadline has passed, for
 * the DEADLINE_EXCEEDED of the upstream call's own timer, set to the same
 * instant as the handler's and sometimes first.
 */
export function toConnectError(
  err: unknown,
  upstream: string,
  signal?: AbortSignal,
  expired?: ConnectError,
): ConnectError {
  if (signal?.aborted && signal.reason instanceof ConnectError) return signal.reason;
  if (err instanceof ConnectError) return err;
  if (err instanceof ServiceError) {
    // The gateway's own validation: the same status (and details) a service would send.
    const st = toStatusObject(err);
    return toConnectError(new RpcError(st.code, st.details, st.metadata ?? new Metadata()), upstream);
  }
  if (!(err instanceof RpcError)) return new ConnectError("internal error", Code.Internal, undefined, undefined, err);
  if (expired && err.code === status.DEADLINE_EXCEEDED) return expired;
  // An answer with no status of the upstream's own (a proxy's bare 401, a reset, an answer too large)
  // is the upstream's failure, whatever code grpc-js would read into it: not the client's to fix or retry.
  const own = err.code as number as Code;
  const code = err.broken && (own === Code.Canceled || !INFRASTRUCTURE[own]) ? Code.Internal : own;
  const generic = INFRASTRUCTURE[code];
  if (generic) return new ConnectError(generic(upstream), code, undefined, undefined, err);
  const details = err.details.flatMap((d) => {
    const desc = ERROR_DETAILS.getMessage(d.$typeName);
    return desc ? [{ desc, value: d }] : [];
  });
  // Shed load (a bulkhead, a quota) passes: a second later there is room again.
  const headers = code === Code.ResourceExhausted ? { "retry-after": "1" } : undefined;
  return new ConnectError(err.message, code, headers, details, err);
}

/**
 * Longest a stream goes without reading the wall clock its token is judged by, ms. A timer for the
 * whole wait follows the monotonic clock, not the wall clock's steps (NTP, a VM restored): a step past
 * `exp` refused the token to every new call and left its stream open for the rest of the wait, up to
 * the 30 days JWT_MAX_LIFETIME_S allows. Also well below a timer's longest (~24.8 days). At most
 * 4,096 streams (HTTP_MAX_CALLS): ~800 wake-ups a second.
 */
const EXPIRY_CHECK_MS = 5_000;

/**
 * A signal aborted (with its reason) when the call's is, the gateway shuts down, or the caller's
 * token expires (UNAUTHENTICATED: a stream lasted as long as its saga, whatever the token said) or its
 * signing key leaves the issuer's key set (UNAUTHENTICATED, checked at the same ticks: a stream lasted
 * until `exp` after the key was withdrawn, new calls refused), and `release` to call once it is no
 * longer needed. By hand rather than AbortSignal.any, whose signals a long-lived source (the gateway's
 * shutdown) kept alive on some Node versions, one per stream ever forwarded.
 */
function streamSignal(
  call: AbortSignal,
  shutdown: AbortSignal | undefined,
  caller: Caller | undefined,
): { signal: AbortSignal; release: () => void } {
  const ac = new AbortController();
  const fromCall = () => ac.abort(call.reason);
  const fromShutdown = () => ac.abort(shutdown?.reason);
  let timer: NodeJS.Timeout | undefined;
  const expire = () => {
    const left = (caller?.expiresAt ?? Number.POSITIVE_INFINITY) - Date.now();
    if (left <= 0)
      ac.abort(new ConnectError("the bearer token expired: call again with a fresh one", Code.Unauthenticated));
    else if (caller?.keyHeld?.() === false)
      ac.abort(new ConnectError("the bearer token's signing key was withdrawn: sign in again", Code.Unauthenticated));
    else if (left !== Number.POSITIVE_INFINITY) timer = setTimeout(expire, Math.min(left, EXPIRY_CHECK_MS)).unref();
  };
  if (call.aborted) fromCall();
  else if (shutdown?.aborted) fromShutdown();
  else expire();
  call.addEventListener("abort", fromCall, { once: true });
  shutdown?.addEventListener("abort", fromShutdown, { once: true });
  return {
    signal: ac.signal,
    release: () => {
      clearTimeout(timer);
      call.removeEventListener("abort", fromCall);
      shutdown?.removeEventListener("abort", fromShutdown);
    },
  };
}

/**
 * Registers a forwarding handler for every routed method. Once `shutdown` is aborted, a stream being
 * forwarded ends Unavailable at once (its upstream call cancelled), for its client to call again.
 */
export function registerRoutes(
  router: ConnectRouter,
  routes: readonly Route[],
  clients: Record<Upstream, UpstreamClient>,
  shutdown?: AbortSignal,
): void {
  for (const route of routes) {
    for (const name of route.methods) {
      const method = route.service.methods.find((m) => m.name === name);
      if (!method) throw new Error(`route ${route.service.typeName}/${name}: no such method in the contract`);
      const call = clients[route.upstream][method.localName] as AnyCall;
      const adminOnly = route.adminOnly?.includes(name) ?? false;
      const authorize = (ctx: HandlerContext) => {
        if (adminOnly && !ctx.values.get(kIdentity)?.roles.includes("admin")) {
          throw new ConnectError(`${name} needs the admin role`, Code.PermissionDenied);
        }
      };
      // router.rpc is typed per method; these handlers are generic over the routed methods.
      const rpc = router.rpc as (m: DescMethod, impl: unknown) => ConnectRouter;
      if (method.methodKind === "unary") {
        rpc(method, async (req: unknown, ctx: HandlerContext) => {
          authorize(ctx);
          try {
            return (await call(req, upstreamOptions(ctx))) as never;
          } catch (err) {
            throw toConnectError(err, route.upstream, ctx.signal, expiredOf(ctx));
          }
        });
      } else if (method.methodKind === "server_streaming") {
        rpc(method, async function* (req: unknown, ctx: HandlerContext) {
          authorize(ctx);
          // A WatchOrder lasts as long as its saga, longer than any drain: held, it kept the gateway to
          // its grace at every rollout, then was cut without a status. Its reason is the answer.
          const { signal, release } = streamSignal(ctx.signal, shutdown, ctx.values.get(kIdentity));
          try {
            yield* call(req, { ...upstreamOptions(ctx), signal }) as AsyncIterable<never>;
          } catch (err) {
            throw toConnectError(err, route.upstream, signal, expiredOf(ctx));
          } finally {
            release();
          }
        });
      }
    }
  }
}
