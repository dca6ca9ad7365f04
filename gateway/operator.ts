/**
 * The operator panel's view of the running system (OperatorService, admin
 * only): every instance of every service asked directly — its health check,
 * its injected faults and, for services that call others, the circuit
 * breakers and bulkheads of those calls (the chaos service each server
 * hosts, never routed to clients) — and, where fault injection is enabled,
 * faults set on every instance of a service at once.
 *
 * Instances are the ones the gateway's own resilient clients know (static
 * targets or the service registry), so the panel sees what the gateway sees.
 */

import { setMaxListeners } from "node:events";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError, type HandlerContext, type ServiceImpl } from "@connectrpc/connect";
import type { Client as GrpcClient } from "@grpc/grpc-js";
import { Health, HealthCheckResponse_ServingStatus } from "../gen/health/v1/health_pb.js";
import { ChaosService } from "../gen/shopmesh/chaos/v1/chaos_pb.js";
import type { InstanceStatusSchema, OperatorService } from "../gen/shopmesh/gateway/v1/gateway_pb.js";
import { Code as PlatformCode, RpcError } from "../platform/errors.js";
import { createChannel, createClient } from "../platform/grpc-client.js";
import { MAX_INSTANCES } from "../platform/instances.js";
import type { DownstreamState } from "../platform/resilience.js";
import { kIdentity } from "./context.js";
import { toConnectError } from "./forward.js";
import { ROUTES, UPSTREAMS, type Upstream } from "./routes.js";

/** The RPCs the operator service calls on every instance to read its status (the mesh must allow them from the gateway). */
export const OPERATOR_READS: readonly string[] = [
  `/${Health.typeName}/${Health.method.check.name}`,
  `/${ChaosService.typeName}/${ChaosService.method.getFaults.name}`,
  `/${ChaosService.typeName}/${ChaosService.method.getResilience.name}`,
];
/** The RPC SetServiceFaults calls on every instance (allowed only where fault injection is on). */
export const OPERATOR_WRITES: readonly string[] = [`/${ChaosService.typeName}/${ChaosService.method.setFaults.name}`];

/** The largest answer an instance may give a status read (a real one is a few hundred bytes). */
const MAX_ANSWER_BYTES = 16 * 1024;
/** The most downstreams shown for an instance (a service calls two), and the longest name or address. */
const MAX_DOWNSTREAMS = 8;
const MAX_NAME = 100;

/** What the operator service needs. */
export interface OperatorDeps {
  /** The gateway's view of each upstream (its instances' addresses). */
  readonly upstreams: Readonly<Record<Upstream, { state(): DownstreamState }>>;
  /** Whether SetServiceFaults exists (FAULT_INJECTION). */
  readonly faultsEnabled: boolean;
  /** How long one instance may take to answer, in ms. */
  readonly timeoutMs: number;
}

function requireAdmin(ctx: HandlerContext): void {
  if (!ctx.values.get(kIdentity)?.roles.includes("admin")) {
    throw new ConnectError("the operator panel needs the admin role", Code.PermissionDenied);
  }
}

/** The OperatorService implementation, and a close() for its channels. */
export function createOperator(deps: OperatorDeps): { service: ServiceImpl<typeof OperatorService>; close(): void } {
  // One channel per instance address, kept while an upstream lists it. An answer is refused past a
  // few KB before it is decoded: any holder of a service's NATS user can point its registry entries at
  // a server of its own, whose 4 MB answer cost the gateway ~450 MB and 3 s per panel refresh.
  const channels = new Map<string, GrpcClient>();
  const channel = (address: string) => {
    let c = channels.get(address);
    if (!c) {
      c = createChannel(address, { "grpc.max_receive_message_length": MAX_ANSWER_BYTES });
      channels.set(address, c);
    }
    return c;
  };
  const addresses = (service: Upstream) => deps.upstreams[service].state().endpoints.map((e) => e.address);
  /** Closes the channels of instances no upstream lists any more (gone, moved, rescheduled). */
  const prune = () => {
    const listed = new Set(UPSTREAMS.flatMap(addresses));
    for (const [address, c] of channels) {
      if (listed.has(address)) continue;
      c.close();
      channels.delete(address);
    }
  };
  // The caller's signal and a deadline of our own, as gRPC deadlines: not AbortSignal.any(), whose
  // signals outlive the young generation on Node 20 (platform/deadline.ts).
  const opts = (ctx: HandlerContext) => ({ signal: ctx.signal, timeoutMs: deps.timeoutMs });
  // Every call of a fan-out listens on the caller's one signal until it ends: `calls` of them at once
  // are expected, not a leak (Node warns past 10).
  const fanOut = (ctx: HandlerContext, calls: number) => setMaxListeners(Math.max(10, calls + 2), ctx.signal);

  const instance = async (
    address: string,
    name: Upstream,
    ctx: HandlerContext,
  ): Promise<MessageInitShape<typeof InstanceStatusSchema>> => {
    const health = createClient(Health, channel(address));
    const chaos = createClient(ChaosService, channel(address));
    const [check, faults, resilience] = await Promise.allSettled([
      // Its readiness (NOT_SERVING while its database is unreachable, platform/health.ts), not "" (it runs).
      health.check({ service: ROUTES.find((r) => r.upstream === name)?.service.typeName ?? "" }, opts(ctx)),
      chaos.getFaults({}, opts(ctx)),
      chaos.getResilience({}, opts(ctx)),
    ]);
    const serving = check.status === "fulfilled" && check.value.status === HealthCheckResponse_ServingStatus.SERVING;
    const detail =
      check.status === "rejected"
        ? check.reason instanceof RpcError
          ? check.reason.codeName
          : "UNAVAILABLE"
        : serving
          ? ""
          : HealthCheckResponse_ServingStatus[check.value.status];
    // Only what the panel shows, clipped: an instance speaks for itself, within bounds.
    const f = faults.status === "fulfilled" ? faults.value.faults : undefined;
    return {
      address,
      serving,
      detail,
      ...(f
        ? { faults: { latencyMs: f.latencyMs, errorRate: f.errorRate, errorCode: f.errorCode, down: f.down } }
        : {}),
      downstreams:
        resilience.status === "fulfilled"
          ? resilience.value.downstreams.slice(0, MAX_DOWNSTREAMS).map((d) => ({
              name: d.name.slice(0, MAX_NAME),
              breaker: d.breaker,
              inFlight: d.inFlight,
              queued: d.queued,
              endpoints: d.endpoints
                .slice(0, MAX_INSTANCES)
                .map((e) => ({ address: e.address.slice(0, MAX_NAME), breaker: e.breaker })),
            }))
          : [],
    };
  };

  const service: ServiceImpl<typeof OperatorService> = {
    async getSystemStatus(_req, ctx) {
      requireAdmin(ctx);
      prune();
      fanOut(ctx, 3 * UPSTREAMS.reduce((n, name) => n + addresses(name).length, 0));
      const services = await Promise.all(
        UPSTREAMS.map(async (name) => {
          const instances = await Promise.all(addresses(name).map((a) => instance(a, name, ctx)));
          return { service: name, serving: instances.some((i) => i.serving), instances };
        }),
      );
      return { services, faultsEnabled: deps.faultsEnabled };
    },
    async setServiceFaults(req, ctx) {
      requireAdmin(ctx);
      prune();
      if (!deps.faultsEnabled) {
        throw new ConnectError("fault injection is not enabled at this gateway (FAULT_INJECTION)", Code.Unimplemented);
      }
      const name = UPSTREAMS.find((s) => s === req.service);
      if (!name) {
        throw new ConnectError(`service: must be one of ${UPSTREAMS.join(", ")}`, Code.InvalidArgument);
      }
      const all = addresses(name);
      if (all.length === 0) throw new ConnectError(`no instance of ${name} is known`, Code.Unavailable);
      fanOut(ctx, 2 * all.length);
      const chaos = all.map((a) => createClient(ChaosService, channel(a)));
      // One generation past every instance's: of two operators' settings at once, every instance keeps
      // the same one, whichever order it is given them in (platform/chaos.ts). Without it each kept the
      // one that came last to it, and replicas stayed on different settings, both operators told OK.
      // The clock is a floor only: where one address stands for several pods (Kubernetes), the read
      // and the write may reach different ones, and a later setting must still come after.
      const read = await Promise.allSettled(chaos.map((c) => c.getFaults({}, opts(ctx))));
      const seen = read.map((r) => (r.status === "fulfilled" ? r.value.generation : 0n));
      const generation = seen.reduce((a, b) => (b >= a ? b + 1n : a), BigInt(Date.now()));
      const results = await Promise.allSettled(
        chaos.map((c) => c.setFaults({ faults: req.faults ?? {}, generation }, opts(ctx))),
      );
      const refused = results.find(
        (r) =>
          r.status === "rejected" && r.reason instanceof RpcError && r.reason.code === PlatformCode.INVALID_ARGUMENT,
      );
      // The service's refusal as it is, BadRequest detail and all: the field it names marks the form's control.
      if (refused?.status === "rejected") throw toConnectError(refused.reason, name);
      const overtaken = results.some(
        (r) => r.status === "rejected" && r.reason instanceof RpcError && r.reason.code === PlatformCode.ABORTED,
      );
      if (overtaken) {
        throw new ConnectError(
          `an instance of ${name} holds a later setting than yours, another operator's: read the faults in force (its instances may differ), then set yours again`,
          Code.Aborted,
        );
      }
      const took = results.flatMap((r) => (r.status === "fulfilled" ? [r.value] : []));
      if (took.length < all.length) {
        throw new ConnectError(
          `${all.length - took.length} of ${all.length} instances of ${name} did not take the faults; try again`,
          Code.Unavailable,
        );
      }
      return { faults: took[0]?.faults ?? {}, instances: took.length };
    },
  };
  return {
    service,
    close() {
      for (const c of channels.values()) c.close();
      channels.clear();
    },
  };
}
