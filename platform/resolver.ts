/**
 * The grpc-js side of client-side discovery, for plain grpc-js channels
 * (`createChannel("registry:///payment")`, any grpc-js client): a name
 * resolver for `registry:///<service>` targets that hands the live instances
 * (from registry-watch.ts) to the channel's round_robin balancer. The
 * services' own resilient clients follow the registry themselves
 * (endpoints.ts), to keep a circuit per instance. Zero live
 * instances is an UNAVAILABLE resolution error, so calls fail fast instead
 * of queueing; while NATS is unreachable the last known addresses stay.
 *
 * Targets that are not `registry:` (host:port, `dns:///name:port` for a
 * Kubernetes headless service) need none of this beyond
 * {@link registryChannelOptions} to balance over every resolved address.
 */
import * as grpc from "@grpc/grpc-js";
import type { NatsConnection } from "@nats-io/transport-node";
import type { Logger } from "./log.js";
import { parseAddress, REGISTRY_SCHEME, requireServiceName } from "./registry.js";
import { type InstanceWatch, linkOf, watchInstances } from "./registry-watch.js";

type ResolverListener = grpc.experimental.ResolverListener;
type ServiceConfigResult = Parameters<ResolverListener>[2];

const ROUND_ROBIN = { loadBalancingConfig: [{ round_robin: {} }] };

/** The connection and logger every registry resolver of this process uses. */
let resolverContext: { nc: NatsConnection; log: Logger } | undefined;
let schemeRegistered = false;

function serviceOfTarget(target: grpc.experimental.GrpcUri): string {
  return requireServiceName(target.path);
}

/** grpc-js resolver for `registry:///<service>`: one registry watch per channel. */
class RegistryResolver implements grpc.experimental.Resolver {
  private readonly service: string;
  private readonly serviceConfig: ServiceConfigResult;
  private watch: InstanceWatch | undefined;

  constructor(
    target: grpc.experimental.GrpcUri,
    private readonly listener: ResolverListener,
    options: grpc.ChannelOptions,
  ) {
    this.service = serviceOfTarget(target);
    // Without an explicit service config a registry target still balances: pick_first would
    // send everything to one instance, which is never what a registry target means.
    this.serviceConfig = options["grpc.service_config"]
      ? null
      : grpc.experimental.statusOrFromValue({ ...ROUND_ROBIN, methodConfig: [] });
  }

  static getDefaultAuthority(target: grpc.experimental.GrpcUri): string {
    return serviceOfTarget(target);
  }

  updateResolution(): void {
    // Push-based: every change is reported as it happens, so only the first call starts work.
    if (this.watch) return;
    const ctx = resolverContext;
    if (!ctx) {
      // Unreachable: the scheme is registered by useRegistryResolver, which sets the context.
      process.nextTick(() => this.fail("registry resolver used before useRegistryResolver()"));
      return;
    }
    this.watch = watchInstances(ctx.nc, this.service, ctx.log, {
      onChange: (addresses) => this.report(addresses),
      onError: (message) => this.fail(message),
    });
  }

  destroy(): void {
    this.watch?.stop();
    this.watch = undefined;
  }

  private report(addresses: readonly string[]): void {
    if (addresses.length === 0) {
      const note = `no live instances of "${this.service}" in the service registry`;
      // The empty list makes the balancer drop the departed instances' subchannels (an error
      // alone keeps them); the error then sets the status calls fail with.
      this.listener(grpc.experimental.statusOrFromValue([]), {}, this.serviceConfig, note);
      this.fail(note);
      return;
    }
    const endpoints = addresses.flatMap((a) => {
      const address = parseAddress(a);
      return address ? [{ addresses: [address] }] : [];
    });
    this.listener(grpc.experimental.statusOrFromValue(endpoints), {}, this.serviceConfig, "");
  }

  private fail(details: string): void {
    const error = { code: grpc.status.UNAVAILABLE, details, metadata: new grpc.Metadata() };
    this.listener(grpc.experimental.statusOrFromError(error), {}, this.serviceConfig, details);
  }
}

/**
 * Registers the `registry` scheme with grpc-js, backed by `nc`: afterwards
 * `createChannel("registry:///payment")` resolves through the registry.
 * grpc-js resolvers are process-wide and cannot take a connection per
 * channel, so one NATS connection serves every registry channel of the
 * process; call this once at startup with a long-lived connection, before
 * creating registry channels. Calling it again with the same connection does
 * nothing; with another one, channels created later use the new one.
 */
export function useRegistryResolver(nc: NatsConnection, log: Logger): void {
  if (resolverContext?.nc === nc) return;
  resolverContext = { nc, log };
  linkOf(nc);
  if (!schemeRegistered) {
    grpc.experimental.registerResolver(REGISTRY_SCHEME, RegistryResolver);
    schemeRegistered = true;
  }
}

/**
 * Channel options that balance calls round_robin over every resolved
 * address: for `registry:///<service>` and for `dns:///<name>:<port>` (a
 * Kubernetes headless service). `extra` options are merged over them.
 */
export function registryChannelOptions(extra: grpc.ChannelOptions = {}): grpc.ChannelOptions {
  return { "grpc.service_config": JSON.stringify(ROUND_ROBIN), ...extra };
}

/**
 * Channel options for `target`: {@link registryChannelOptions} for
 * `registry:` and `dns:` targets, which may resolve to several instances;
 * only `extra` for a plain host:port.
 */
export function channelOptionsFor(target: string, extra: grpc.ChannelOptions = {}): grpc.ChannelOptions {
  return /^(registry|dns):/.test(target) ? registryChannelOptions(extra) : { ...extra };
}
