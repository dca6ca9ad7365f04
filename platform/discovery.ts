/**
 * Client-side service discovery: a service registry in NATS KV and a grpc-js
 * name resolver for `registry:///<service>` targets, balanced round_robin.
 *
 * Registry: bucket {@link REGISTRY_BUCKET}, one key `<service>.<instanceId>`
 * per running instance whose value is a JSON {@link RegistryEntry}. An
 * instance refreshes its key every heartbeat; the bucket's max age is the
 * liveness TTL, so an instance that dies without deregistering vanishes from
 * the bucket within the TTL. A graceful stop deletes the key at once.
 *
 * Resolver: watches `<service>.*` and hands the live addresses to the
 * channel's load balancer on every change. Zero live instances is an
 * UNAVAILABLE resolution error, so calls fail fast instead of queueing.
 * While NATS is unreachable the resolver keeps the last known addresses: a
 * registry outage must not take down traffic between healthy services.
 *
 * Targets that are not `registry:` (host:port, `dns:///name:port` for a
 * Kubernetes headless service) need none of this beyond
 * {@link registryChannelOptions} to balance over every resolved address.
 */
import * as grpc from "@grpc/grpc-js";
import { type JetStreamManager, jetstreamManager, StorageType } from "@nats-io/jetstream";
import { type KV, type KvEntry, Kvm, type KvWatchEntry } from "@nats-io/kv";
import type { NatsConnection, QueuedIterator } from "@nats-io/transport-node";
import type { Logger } from "./log.js";
import { newId } from "./validate.js";

/** The NATS KV bucket of the service registry. */
export const REGISTRY_BUCKET = "shopmesh_registry";

/** The gRPC target scheme served by {@link useRegistryResolver}: `registry:///<service>`. */
export const REGISTRY_SCHEME = "registry";

/** Default heartbeat interval of {@link registerInstance}, ms. */
export const DEFAULT_HEARTBEAT_MS = 2_000;

/** Default liveness TTL (the bucket's max age), ms. */
export const DEFAULT_TTL_MS = 6_000;

/** A KV key token: no dots or wildcards, so `<service>.*` matches exactly one service. */
const SERVICE_NAME = /^[A-Za-z0-9_-]{1,64}$/;

const RETRY_MIN_MS = 250;
const RETRY_MAX_MS = 5_000;

/** The value stored under `<service>.<instanceId>`. */
export interface RegistryEntry {
  readonly service: string;
  /** `host:port` clients dial. */
  readonly address: string;
  readonly instanceId: string;
  /** ISO 8601 time the instance registered. */
  readonly startedAt: string;
}

/** Options of {@link registerInstance}. */
export interface RegisterOptions {
  /** The instance's NATS connection; the registration lives as long as it does. */
  readonly nc: NatsConnection;
  /** Logical service name, e.g. "payment": 1-64 of `[A-Za-z0-9_-]`. */
  readonly service: string;
  /** `host:port` other hosts can reach (not 0.0.0.0). */
  readonly address: string;
  readonly log: Logger;
  /** How often the entry is refreshed, ms; below `ttlMs`. */
  readonly heartbeatMs?: number;
  /**
   * Liveness TTL, ms: the bucket's max age. Used only when this call creates
   * the bucket: an existing bucket keeps the TTL it was created with.
   */
  readonly ttlMs?: number;
}

/** A registered instance. */
export interface Registration {
  readonly instanceId: string;
  /** The KV key, `<service>.<instanceId>`. */
  readonly key: string;
  /**
   * Stops the heartbeat and deletes the entry (graceful deregistration), so
   * clients stop picking this instance before it drains. Never rejects: if
   * NATS is gone the entry expires by TTL instead. Idempotent.
   */
  stop(): Promise<void>;
}

function requireServiceName(service: string): string {
  if (!SERVICE_NAME.test(service)) {
    throw new Error(`invalid service name "${service}": expected 1-64 characters of [A-Za-z0-9_-]`);
  }
  return service;
}

function parseAddress(address: string): { host: string; port: number } | undefined {
  const hp = grpc.experimental.splitHostPort(address);
  if (!hp?.host || hp.port === undefined || hp.port < 1 || hp.port > 65_535) return undefined;
  return { host: hp.host, port: hp.port };
}

/**
 * Opens the registry bucket, creating it (history 1, max age `ttlMs`, file
 * storage) if it does not exist yet. An existing bucket is reused as is:
 * JetStream fixes its TTL at creation, so the first creator decides.
 */
export async function openRegistry(nc: NatsConnection, opts: { ttlMs?: number } = {}): Promise<KV> {
  const config = { history: 1, ttl: opts.ttlMs ?? DEFAULT_TTL_MS, storage: StorageType.File };
  const kvm = new Kvm(nc);
  try {
    return await kvm.create(REGISTRY_BUCKET, config);
  } catch {
    // Two instances starting together both find no bucket and both create it; the loser fails
    // if its config differs. By now the bucket exists, and create() binds to an existing one.
    return await kvm.create(REGISTRY_BUCKET, config);
  }
}

/**
 * Registers a running instance of `service` at `address`, refreshes the
 * entry every `heartbeatMs`, and returns a handle whose `stop()` deregisters.
 * Resolves once the entry is visible to clients. Rejects on an invalid
 * service name or address, `heartbeatMs >= ttlMs`, an existing bucket whose
 * TTL is not above the heartbeat, or when NATS is unreachable.
 */
export async function registerInstance(opts: RegisterOptions): Promise<Registration> {
  const service = requireServiceName(opts.service);
  if (!parseAddress(opts.address)) throw new Error(`invalid address "${opts.address}": expected host:port`);
  const heartbeatMs = opts.heartbeatMs ?? DEFAULT_HEARTBEAT_MS;
  const ttlMs = opts.ttlMs ?? DEFAULT_TTL_MS;
  if (!(heartbeatMs > 0 && heartbeatMs < ttlMs)) {
    throw new Error(`heartbeatMs (${heartbeatMs}) must be positive and below ttlMs (${ttlMs})`);
  }
  const { nc } = opts;
  const kv = await openRegistry(nc, { ttlMs });
  const bucketTtlMs = (await kv.status()).ttl;
  if (bucketTtlMs > 0 && bucketTtlMs <= heartbeatMs) {
    throw new Error(
      `registry bucket TTL ${bucketTtlMs} ms is not above heartbeatMs ${heartbeatMs}: entries would flap`,
    );
  }
  const instanceId = newId("inst");
  const key = `${service}.${instanceId}`;
  const log = opts.log.child({ registryKey: key });
  if (bucketTtlMs !== ttlMs) {
    log.warn({ requestedTtlMs: ttlMs, bucketTtlMs }, "registry bucket exists with another TTL; using the bucket's");
  }
  const entry: RegistryEntry = { service, address: opts.address, instanceId, startedAt: new Date().toISOString() };
  const value = JSON.stringify(entry);
  await kv.put(key, value);
  log.info({ address: opts.address, heartbeatMs, ttlMs: bucketTtlMs }, "registered in the service registry");

  let stopped = false;
  let failures = 0;
  let timer: NodeJS.Timeout | undefined;
  let inflight: Promise<void> = Promise.resolve();
  const beat = async () => {
    try {
      await kv.put(key, value, { timeout: heartbeatMs });
      if (failures > 0) log.info({ afterFailures: failures }, "registry heartbeat succeeding again");
      failures = 0;
    } catch (err) {
      failures++;
      if (failures === 1 || failures % 10 === 0) {
        log.warn({ err: (err as Error).message, failures }, "registry heartbeat failed; will retry");
      }
    }
  };
  const schedule = () => {
    if (stopped) return;
    timer = setTimeout(() => {
      if (stopped) return;
      if (nc.isClosed()) {
        log.warn("NATS connection closed: registry heartbeat stopped; the entry expires by TTL");
        return;
      }
      inflight = beat();
      void inflight.then(schedule);
    }, heartbeatMs);
    timer.unref();
  };
  schedule();

  let stopping: Promise<void> | undefined;
  const stop = async () => {
    stopped = true;
    clearTimeout(timer);
    // A heartbeat landing after the delete would resurrect the entry for a whole TTL.
    await inflight;
    if (nc.isClosed() || nc.isDraining()) {
      log.warn("NATS connection closed: cannot deregister; the entry expires by TTL");
      return;
    }
    try {
      await kv.delete(key);
      log.info("deregistered from the service registry");
    } catch (err) {
      log.warn({ err: (err as Error).message }, "deregistration failed; the entry expires by TTL");
    }
  };
  return {
    instanceId,
    key,
    stop: () => {
      stopping ??= stop();
      return stopping;
    },
  };
}

/**
 * The registered instances of `service` right now, by instance id. An
 * instance that died without deregistering is listed until its TTL runs out.
 */
export async function listInstances(nc: NatsConnection, service: string): Promise<RegistryEntry[]> {
  const entries = await snapshot(await registryOf(nc), requireServiceName(service));
  const out: RegistryEntry[] = [];
  for (const e of entries) {
    const entry = e.operation === "PUT" ? parseEntry(e.string()) : undefined;
    if (entry) out.push(entry);
  }
  return out.sort((a, b) => a.instanceId.localeCompare(b.instanceId));
}

function parseEntry(text: string): RegistryEntry | undefined {
  try {
    const v = JSON.parse(text) as Partial<RegistryEntry>;
    if (typeof v.address !== "string" || !parseAddress(v.address)) return undefined;
    return {
      service: String(v.service ?? ""),
      address: v.address,
      instanceId: String(v.instanceId ?? ""),
      startedAt: String(v.startedAt ?? ""),
    };
  } catch {
    return undefined;
  }
}

/** The opened registry of one connection. */
interface Registry {
  readonly kv: KV;
  readonly jsm: JetStreamManager;
  /** The bucket's TTL (max age), ms. */
  readonly ttlMs: number;
}

/** Per connection, opened once (the bucket created with defaults if missing). */
const registries = new WeakMap<NatsConnection, Promise<Registry>>();

function registryOf(nc: NatsConnection): Promise<Registry> {
  let p = registries.get(nc);
  if (!p) {
    p = (async () => {
      const kv = await openRegistry(nc);
      const jsm = await jetstreamManager(nc);
      return { kv, jsm, ttlMs: (await kv.status()).ttl || DEFAULT_TTL_MS };
    })();
    registries.set(nc, p);
    void p.catch(() => registries.delete(nc));
  }
  return p;
}

const SUBJECT_PREFIX = `$KV.${REGISTRY_BUCKET}.`;

/**
 * The latest entry (deletes included) of every key of `service`. Not
 * kv.keys(): its consumer waits for a message counted as pending when it
 * starts, and an entry expiring (max age) before delivery leaves it waiting
 * for seconds. Stream info plus gets are plain requests.
 */
async function snapshot(reg: Registry, service: string): Promise<KvEntry[]> {
  const info = await reg.jsm.streams.info(`KV_${REGISTRY_BUCKET}`, {
    subjects_filter: `${SUBJECT_PREFIX}${service}.*`,
  });
  const keys = Object.keys(info.state.subjects ?? {}).map((s) => s.slice(SUBJECT_PREFIX.length));
  const entries = await Promise.all(keys.map((k) => reg.kv.get(k)));
  return entries.filter((e): e is KvEntry => e !== null);
}

/** Whether a connection is up, and since when. */
interface Link {
  connected: boolean;
  since: number;
}

const links = new WeakMap<NatsConnection, Link>();

function linkOf(nc: NatsConnection): Link {
  const known = links.get(nc);
  if (known) return known;
  const link: Link = { connected: !nc.isClosed(), since: Date.now() };
  links.set(nc, link);
  void (async () => {
    for await (const s of nc.status()) {
      if (s.type === "disconnect") link.connected = false;
      else if (s.type === "reconnect") {
        link.connected = true;
        link.since = Date.now();
      }
    }
    link.connected = false;
  })();
  return link;
}

/** Callbacks of {@link watchInstances}. */
export interface InstanceListener {
  /**
   * The sorted, distinct addresses of the live instances: first once the
   * current entries are loaded (possibly none), then on every change.
   */
  onChange(addresses: readonly string[]): void;
  /** The registry could not be read before any addresses were known. */
  onError?(message: string): void;
}

/** A running {@link watchInstances}. */
export interface InstanceWatch {
  /** Stops watching; no callback runs afterwards. */
  stop(): void;
}

/** What a watcher knows of one key; `address` undefined once deleted or expired. */
interface Known {
  address: string | undefined;
  revision: number;
  /** When the entry was last written (or forgotten), on this host's clock. */
  seenAt: number;
}

/**
 * Watches the live instances of `service`: a KV watch on `<service>.*` for
 * every put and delete, plus a snapshot of the current entries (the watch's
 * own initial values give no reliable "that was all" signal when there are
 * none). Entries apply in revision order, so the two may overlap.
 *
 * Entries not refreshed for the bucket's TTL are dropped on a timer too,
 * because nats-server before 2.11 expires KV entries (stream max age)
 * without any watch event. That pruning pauses while NATS is disconnected
 * and restarts its clock on reconnect, so an outage keeps the last known
 * set. A watch that fails or ends while the connection is open is restarted
 * with backoff. Callbacks never run synchronously inside this call.
 */
export function watchInstances(
  nc: NatsConnection,
  service: string,
  log: Logger,
  listener: InstanceListener,
): InstanceWatch {
  requireServiceName(service);
  const wlog = log.child({ registryWatch: service });
  const link = linkOf(nc);
  const known = new Map<string, Known>();
  let stopped = false;
  let watch: QueuedIterator<KvWatchEntry> | undefined;
  let pruneTimer: NodeJS.Timeout | undefined;
  let retryTimer: NodeJS.Timeout | undefined;
  let retryMs = RETRY_MIN_MS;
  let ttlMs = DEFAULT_TTL_MS;
  /** The current watch's snapshot is loaded. */
  let synced = false;
  /** Keys the current watch or its snapshot delivered: after a restart, the rest are gone. */
  const delivered = new Set<string>();
  let reported: string | undefined;

  const report = () => {
    // Before the first load completes, "no instances" would only mean "not loaded yet".
    if (stopped || (!synced && reported === undefined)) return;
    const live = new Set<string>();
    for (const k of known.values()) if (k.address !== undefined) live.add(k.address);
    const addresses = [...live].sort();
    const key = addresses.join(",");
    if (key === reported) return;
    reported = key;
    wlog.info({ addresses }, "registry: live instances changed");
    listener.onChange(addresses);
  };

  const apply = (e: KvEntry, seenAt: number) => {
    delivered.add(e.key);
    const prev = known.get(e.key);
    if (prev && prev.revision >= e.revision) return;
    const entry = e.operation === "PUT" ? parseEntry(e.string()) : undefined;
    if (e.operation === "PUT" && !entry) {
      wlog.warn({ key: e.key }, "registry: ignoring an entry without a valid address");
    }
    known.set(e.key, { address: entry?.address, revision: e.revision, seenAt });
  };

  // A value written before we looked may be up to a TTL old: count its age from the server's
  // write time. Live updates use the local clock, so clock skew between hosts does not matter.
  const initialSeenAt = (e: KvEntry) => Math.min(Date.now(), e.created.getTime());

  const prune = () => {
    if (!link.connected) return;
    const now = Date.now();
    const cutoff = now - ttlMs;
    let changed = false;
    for (const [key, k] of known) {
      if (k.address !== undefined && Math.max(k.seenAt, link.since) < cutoff) {
        known.set(key, { address: undefined, revision: k.revision, seenAt: now });
        changed = true;
      } else if (k.address === undefined && k.seenAt < cutoff) {
        // Older revisions of a key only arrive while a watch starts; a TTL later none can.
        known.delete(key);
      }
    }
    if (changed) report();
  };

  const load = async (reg: Registry, current: QueuedIterator<KvWatchEntry>) => {
    try {
      const entries = await snapshot(reg, service);
      if (stopped || watch !== current) return;
      for (const e of entries) apply(e, initialSeenAt(e));
      for (const [key, k] of known) if (!delivered.has(key) && k.address !== undefined) known.delete(key);
      synced = true;
      retryMs = RETRY_MIN_MS;
      report();
    } catch (err) {
      if (stopped || watch !== current) return;
      fail(err);
      // Ends the watch loop below, which retries.
      current.stop();
    }
  };

  const fail = (err: unknown) => {
    wlog.warn({ err: (err as Error).message }, "registry watch failed; will retry");
    if (reported === undefined) listener.onError?.(`service registry unavailable: ${(err as Error).message}`);
  };

  const run = async () => {
    try {
      const reg = await registryOf(nc);
      if (stopped) return;
      ttlMs = reg.ttlMs;
      clearInterval(pruneTimer);
      pruneTimer = setInterval(prune, Math.min(1_000, Math.max(100, ttlMs / 4)));
      pruneTimer.unref();
      const w = await reg.kv.watch({ key: `${service}.*` });
      if (stopped) {
        w.stop();
        return;
      }
      watch = w;
      synced = false;
      delivered.clear();
      void load(reg, w);
      for await (const e of w) {
        if (stopped) break;
        apply(e, e.isUpdate ? Date.now() : initialSeenAt(e));
        report();
      }
    } catch (err) {
      if (stopped) return;
      fail(err);
    }
    watch = undefined;
    if (stopped) return;
    if (nc.isClosed()) {
      wlog.warn("registry connection closed; keeping the last known instances");
      clearInterval(pruneTimer);
      return;
    }
    retryTimer = setTimeout(() => void run(), retryMs);
    retryTimer.unref();
    retryMs = Math.min(retryMs * 2, RETRY_MAX_MS);
  };

  void run();
  return {
    stop() {
      stopped = true;
      clearInterval(pruneTimer);
      clearTimeout(retryTimer);
      watch?.stop();
      watch = undefined;
    },
  };
}

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

/**
 * Registers a started server as an instance of `service` at `host:port`
 * when the process is connected to NATS (nothing to register with
 * otherwise). Stop the returned registration before draining the server, so
 * clients stop picking it first.
 */
export async function announce(
  bus: { nc: NatsConnection } | undefined,
  service: string,
  host: string,
  port: number,
  log: Logger,
): Promise<Registration | undefined> {
  return bus ? registerInstance({ nc: bus.nc, service, address: `${host}:${port}`, log }) : undefined;
}

/**
 * A channel to an upstream `target`: `host:port` (static), `dns:///name:port`
 * (Kubernetes: server-side discovery, balanced round_robin over the
 * resolved addresses) or `registry:///name` (client-side discovery through
 * the NATS KV registry, which needs the process's bus).
 */
export function upstreamChannel(target: string, bus: { nc: NatsConnection } | undefined, log: Logger): grpc.Client {
  if (target.startsWith(`${REGISTRY_SCHEME}:`)) {
    if (!bus) throw new Error(`${target}: registry targets need the event bus (NATS_URL is off)`);
    useRegistryResolver(bus.nc, log);
  }
  return new grpc.Client(target, grpc.credentials.createInsecure(), channelOptionsFor(target));
}
