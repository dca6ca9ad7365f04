/**
 * Descriptor-driven forwarding: for every routed method the gateway
 * registers one Connect handler that calls the upstream through its
 * resilient gRPC client — built once at start, so the per-call path does no
 * lookup, reflection or policy construction. Identity and tracing metadata
 * are set by the gateway itself; nothing the client sent is copied
 * downstream wholesale, so a forged identity header never gets through.
 */
import type { DescMethod } from "@bufbuild/protobuf";
import { Code, ConnectError, type ConnectRouter, createContextKey, type HandlerContext } from "@connectrpc/connect";
import { Metadata } from "@grpc/grpc-js";
import {
  type CallOptions,
  ERROR_DETAILS,
  type Identity,
  identityMetadata,
  RpcError,
  ServiceError,
  toStatusObject,
} from "../platform/index.js";
import type { Route, Upstream } from "./routes.js";

/** Per-request facts the node layer learns before Connect runs. */
export interface ClientInfo {
  readonly ip: string;
  readonly requestId: string;
}

/** Context value: the client behind this request. */
export const kClient = createContextKey<ClientInfo>({ ip: "", requestId: "" }, { description: "client" });
/** Context value: the verified caller (set by the auth interceptor). */
export const kIdentity = createContextKey<Identity | undefined>(undefined, { description: "identity" });

type AnyCall = (req: unknown, opts?: CallOptions) => unknown;
/** An upstream's typed client, seen untyped: one function per method local name. */
export type UpstreamClient = Readonly<Record<string, unknown>>;

/** Metadata and deadline for the upstream call of `ctx`. */
export function upstreamOptions(ctx: HandlerContext): CallOptions {
  const client = ctx.values.get(kClient);
  const identity = ctx.values.get(kIdentity);
  const md = identity ? identityMetadata(identity) : new Metadata();
  md.set("x-request-id", client.requestId);
  const timeoutMs = ctx.timeoutMs();
  return {
    metadata: md,
    signal: ctx.signal,
    ...(timeoutMs === undefined ? {} : { deadline: Date.now() + timeoutMs }),
  };
}

/**
 * The Connect error for an upstream failure: same code (Connect and gRPC
 * codes are the same numbers), same message, and the google.rpc details
 * passed through so HTTP clients see the field violations too. Anything that
 * is not an RpcError is an internal error with a generic message.
 */
export function toConnectError(err: unknown): ConnectError {
  if (err instanceof ConnectError) return err;
  if (err instanceof ServiceError) {
    // The gateway's own validation: the same status (and details) a service would send.
    const st = toStatusObject(err);
    return toConnectError(new RpcError(st.code, st.details, st.metadata ?? new Metadata()));
  }
  if (!(err instanceof RpcError)) return new ConnectError("internal error", Code.Internal, undefined, undefined, err);
  // Decoded (not passed as bytes) so Connect's JSON errors carry a readable `debug` form too.
  const details = err.details.flatMap((d) => {
    const desc = ERROR_DETAILS.getMessage(d.$typeName);
    return desc ? [{ desc, value: d }] : [];
  });
  return new ConnectError(err.message, err.code as number as Code, undefined, details, err);
}

/** Registers a forwarding handler for every routed method. */
export function registerRoutes(
  router: ConnectRouter,
  routes: readonly Route[],
  clients: Record<Upstream, UpstreamClient>,
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
            throw toConnectError(err);
          }
        });
      } else if (method.methodKind === "server_streaming") {
        rpc(method, async function* (req: unknown, ctx: HandlerContext) {
          authorize(ctx);
          try {
            yield* call(req, upstreamOptions(ctx)) as AsyncIterable<never>;
          } catch (err) {
            throw toConnectError(err);
          }
        });
      }
    }
  }
}
