/**
 * The instances behind one downstream, each tracked on its own — as a mesh
 * tracks endpoints, not services. Every address has its own channel (one
 * HTTP/2 connection) and its own circuit breaker, so one bad replica opens
 * one circuit: calls go round robin over the rest, a retry prefers an
 * instance the call has not tried, and the downstream as a whole fails fast
 * only when every instance's circuit is open.
 *
 * Where the addresses come from:
 * - `host:port` — one fixed instance; `ipv4:a:port,b:port` — several (gRPC's
 *   naming syntax);
 * - `dns:///name:port` — every address the name resolves to (a Kubernetes
 *   headless service), looked up again every {@link DNS_REFRESH_MS};
 * - `registry:///name` — the live instances in the service registry
 *   (registry-watch.ts), as they come and go.
 */
import { lookup } from "node:dns/promises";
import type { DescService } from "@bufbuild/protobuf";
import * as grpc from "@grpc/grpc-js";
import type { NatsConnection } from "@nats-io/transport-node";
import type { Tracer } from "@opentelemetry/api";
import { CircuitState } from "cockatiel";
import { Health } from "../gen/health/v1/health_pb.js";
import { RpcError } from "./errors.js";
import { type BytesClient, type Client, createChannel, createClient } from "./grpc-client.js";
import { createH2BytesClient } from "./h2-bytes.js";
import { healthProbe, type WatchedBreaker, watchIdleCircuit } from "./idle-probe.js";
import { addressChange } from "./instances.js";
import type { Logger } from "./log.js";
import type { Circuit } from "./policy.js";
import { detached } from "./propagation.js";
import { REGISTRY_SCHEME, requireServiceName } from "./registry.js";
import { watchInstances } from "./registry-watch.js";
import { StreamChannels } from "./stream-channels.js";

/** How often `dns:///` targets are resolved again, ms. */
export const DNS_REFRESH_MS = 5_000;

/** One instance: its address, connection, circuit and typed client. */
export interface Endpoint<S extends DescService> {
  readonly address: string;
  /** Its circuit, probed with its health check when open and offered no call (idle-probe.ts). */
  readonly breaker: WatchedBreaker;
  /** Unary calls over `bytes` when the instance is a host:port, streams over grpc-js. */
  readonly client: Client<S>;
  /** The same unary calls on encoded messages. */
  readonly bytes: BytesClient;
  /** Whether its connection is failing right now (refused, reset): picked only when nothing else is left. */
  failing(): boolean;
}

/** What a breaker's state is called in logs and metrics. */
export type BreakerName = "closed" | "open" | "half-open" | "isolated";

export const BREAKER_NAMES: Record<CircuitState, BreakerName> = {
  [CircuitState.Closed]: "closed",
  [CircuitState.Open]: "open",
  [CircuitState.HalfOpen]: "half-open",
  [CircuitState.Isolated]: "isolated",
};

/** Bytes calls on an instance whose address is no host:port (a channel given as is): refused, plainly. */
function unsupportedBytes(service: DescService, address: string): BytesClient {
  const refuse = () =>
    Promise.reject(
      new RpcError(
        grpc.status.UNIMPLEMENTED,
        `${address}: calls on encoded messages need a host:port target`,
        new grpc.Metadata(),
      ),
    );
  return Object.fromEntries(service.methods.map((m) => [m.localName, refuse]));
}

/** How {@link Endpoints} makes and reports one instance's parts. */
export interface EndpointsOptions<S extends DescService> {
  readonly downstream: string;
  readonly service: S;
  readonly log: Logger;
  readonly newBreaker: () => Circuit;
  readonly tracer?: Tracer;
  /** An instance's circuit changed state. */
  readonly onBreakerChange?: (address: string, state: BreakerName) => void;
}

/** The current instances of one downstream, with round-robin candidates for each attempt. */
export class Endpoints<S extends DescService> {
  private readonly byAddress = new Map<string, Endpoint<S> & { close(): void }>();
  private next = 0;
  private stopFollowing: () => void = () => {};
  /** Why there are no instances, when there are none. */
  private missing = "no instance known yet";

  private constructor(private readonly o: EndpointsOptions<S>) {}

  /** Follows the instances `target` names (see the module comment); registry targets need `nc`. */
  static follow<S extends DescService>(
    target: string,
    nc: NatsConnection | undefined,
    o: EndpointsOptions<S>,
  ): Endpoints<S> {
    const e = new Endpoints(o);
    if (target.startsWith(`${REGISTRY_SCHEME}:`)) {
      if (!nc) throw new Error(`${target}: registry targets need the event bus (NATS_URL is off)`);
      const service = requireServiceName(target.replace(/^registry:\/\/\/?/, ""));
      const watch = watchInstances(nc, service, o.log, {
        onChange: (addresses) => e.set(addresses, `no live instances of "${service}" in the service registry`),
        onError: (message) => {
          e.missing = message;
        },
      });
      e.stopFollowing = () => watch.stop();
    } else if (target.startsWith("dns:")) {
      e.stopFollowing = followDns(target, o.log, (addresses) => e.set(addresses, `${target} resolves to nothing`));
    } else if (target.startsWith("ipv4:") || target.startsWith("ipv6:")) {
      e.set(target.slice(5).split(","), "");
    } else {
      e.set([target], "");
    }
    return e;
  }

  /** One fixed instance on an existing `channel` (closed by its owner, not here). */
  static fixed<S extends DescService>(channel: grpc.Client, o: EndpointsOptions<S>): Endpoints<S> {
    const e = new Endpoints(o);
    const address = channel.getChannel().getTarget();
    e.byAddress.set(address, e.endpoint(address, channel, false));
    return e;
  }

  /** Makes the instances exactly `addresses`: new ones are connected, departed ones closed. */
  private set(addresses: readonly string[], whyNone: string): void {
    const wanted = new Set(addresses);
    const change = addressChange(new Set(this.byAddress.keys()), wanted);
    for (const [address, ep] of this.byAddress) {
      if (wanted.has(address)) continue;
      ep.close();
      this.byAddress.delete(address);
    }
    for (const address of wanted) {
      if (!this.byAddress.has(address))
        this.byAddress.set(address, this.endpoint(address, createChannel(address), true));
    }
    this.missing = whyNone;
    this.o.log.info(change, "endpoints changed");
  }

  private endpoint(address: string, channel: grpc.Client, owned: boolean): Endpoint<S> & { close(): void } {
    // Unary calls, typed or on encoded messages (the gateway's fast path), over a plain HTTP/2 session to host:port.
    const hostPort = address.replace(/^dns:(\/\/\/)?/, "");
    const plain = /^[\w.-]+:\d+$|^\[[\da-f:]+\]:\d+$/i.test(hostPort);
    const h2 = plain ? createH2BytesClient(this.o.service, hostPort, this.o.tracer) : undefined;
    // Server streams on channels of their own, each connection kept under its server's reset limit.
    const streams = plain ? new StreamChannels(hostPort) : undefined;
    const circuit = this.o.newBreaker();
    const health = createClient(Health, channel, undefined, h2?.bytesOf(Health));
    const watch = watchIdleCircuit(circuit.breaker, {
      afterMs: circuit.probeAfterMs,
      probe: healthProbe(health, this.o.service.typeName, circuit.probeTimeoutMs),
      probation: circuit.probation,
    });
    let gone = false;
    circuit.breaker.onStateChange((s) => {
      // A departed instance's circuit (its probe cancelled) is no one's concern.
      if (gone) return;
      const name = BREAKER_NAMES[s];
      const log = this.o.log.child({ endpoint: address });
      const why = watch.probing() ? { probe: `${Health.typeName}/Check` } : {};
      // Outside the trace of the call that tipped it, as the downstream's own line (resilience.ts).
      detached(() =>
        (s === CircuitState.Closed ? log.info : log.warn).call(
          log,
          { breaker: name, ...why },
          `endpoint circuit ${name}`,
        ),
      );
      this.o.onBreakerChange?.(address, name);
    });
    return {
      address,
      breaker: watch.breaker,
      client: createClient(this.o.service, channel, this.o.tracer, h2?.bytes, streams?.open),
      bytes: h2?.bytes ?? unsupportedBytes(this.o.service, address),
      failing: () =>
        h2?.failing() === true ||
        channel.getChannel().getConnectivityState(false) === grpc.connectivityState.TRANSIENT_FAILURE,
      close: () => {
        gone = true;
        watch.stop();
        h2?.close();
        streams?.close();
        if (owned) channel.close();
      },
    };
  }

  /**
   * The instances to try for one attempt, in order: round robin, those the
   * call has not `tried` first, those whose connection is failing last. The
   * caller goes down the list while an instance's circuit refuses.
   */
  candidates(tried: ReadonlySet<string>): Endpoint<S>[] {
    const all = [...this.byAddress.values()];
    if (all.length === 0) return [];
    const start = this.next++ % all.length;
    const rotated = [...all.slice(start), ...all.slice(0, start)];
    const rank = (ep: Endpoint<S>) => (tried.has(ep.address) ? 2 : 0) + (ep.failing() ? 1 : 0);
    return rotated.sort((a, b) => rank(a) - rank(b));
  }

  /** Why no instance can take a call now: none known, or every circuit open. */
  unavailable(): string {
    return this.byAddress.size === 0 ? this.missing : "circuit open on every instance, failing fast";
  }

  /**
   * The downstream's state as one: closed while any instance's circuit is
   * closed, open when all are (or there are none), half-open in between.
   */
  state(): BreakerName {
    const states = [...this.byAddress.values()].map((e) => e.breaker.state);
    if (states.some((s) => s === CircuitState.Closed)) return "closed";
    if (states.some((s) => s === CircuitState.HalfOpen)) return "half-open";
    return "open";
  }

  /** Each instance's circuit. */
  breakers(): { address: string; breaker: BreakerName }[] {
    return [...this.byAddress.values()].map((e) => ({ address: e.address, breaker: BREAKER_NAMES[e.breaker.state] }));
  }

  /** Stops following and closes the channels it opened. */
  close(): void {
    this.stopFollowing();
    for (const ep of this.byAddress.values()) ep.close();
    this.byAddress.clear();
  }
}

/** Resolves `dns:///name:port` now and every {@link DNS_REFRESH_MS}; keeps the last answer when a lookup fails. */
function followDns(target: string, log: Logger, onChange: (addresses: readonly string[]) => void): () => void {
  const m = /^dns:(?:\/\/[^/]*)?\/?([^:/]+|\[[^\]]+\]):(\d+)$/.exec(target);
  if (!m) throw new Error(`invalid target "${target}": expected dns:///name:port`);
  const [, host = "", port = ""] = m;
  let last = "";
  let stopped = false;
  const resolve = async () => {
    try {
      const found = await lookup(host.replace(/^\[|\]$/g, ""), { all: true });
      const addresses = [
        ...new Set(found.map((a) => (a.family === 6 ? `[${a.address}]:${port}` : `${a.address}:${port}`))),
      ].sort();
      if (stopped || addresses.join() === last) return;
      last = addresses.join();
      onChange(addresses);
    } catch (err) {
      log.warn({ target, err: (err as Error).message }, "DNS lookup failed; keeping the last addresses");
    }
  };
  void detached(resolve);
  const timer = detached(() => setInterval(() => void resolve(), DNS_REFRESH_MS));
  timer.unref();
  return () => {
    stopped = true;
    clearInterval(timer);
  };
}
