/**
 * Client-side service discovery, the registry half: a NATS KV bucket with
 * one key `<service>.<instanceId>` per running instance, whose value is a
 * JSON {@link RegistryEntry}. An instance refreshes its key every heartbeat;
 * the bucket's max age is the liveness TTL, so an instance that dies without
 * deregistering vanishes within the TTL. A graceful stop deletes the key at
 * once. registry-watch.ts follows the bucket; resolver.ts feeds grpc-js.
 */
import * as grpc from "@grpc/grpc-js";
import { type JetStreamManager, jetstreamManager, StorageType } from "@nats-io/jetstream";
import { type KV, type KvEntry, Kvm } from "@nats-io/kv";
import type { NatsConnection } from "@nats-io/transport-node";
import { newId } from "./ids.js";
import type { Logger } from "./log.js";
import { heartbeat, writeEntry } from "./registry-write.js";
import { isStoreFull } from "./store-full.js";

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
  /** Replicas of the bucket when this call creates it (as many as the streams: NATS_STREAM_REPLICAS). */
  readonly replicas?: number;
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

export function requireServiceName(service: string): string {
  if (!SERVICE_NAME.test(service)) {
    throw new Error(`invalid service name "${service}": expected 1-64 characters of [A-Za-z0-9_-]`);
  }
  return service;
}

export function parseAddress(address: string): { host: string; port: number } | undefined {
  const hp = grpc.experimental.splitHostPort(address);
  if (!hp?.host || hp.port === undefined || hp.port < 1 || hp.port > 65_535) return undefined;
  return { host: hp.host, port: hp.port };
}

/**
 * Opens the registry bucket, creating it (history 1, max age `ttlMs`, file
 * storage) if it does not exist yet. An existing bucket is reused as is:
 * JetStream fixes its TTL at creation, so the first creator decides.
 */
export async function openRegistry(nc: NatsConnection, opts: { ttlMs?: number; replicas?: number } = {}): Promise<KV> {
  const config = {
    history: 1,
    ttl: opts.ttlMs ?? DEFAULT_TTL_MS,
    storage: StorageType.File,
    replicas: opts.replicas ?? 1,
    // No direct reads: a direct read answers with a stored message, headers and all, at any reply subject
    // the asker names (bus-access.ts); entries are read through the stream's JSON API instead.
    allow_direct: false,
    // An entry is ~150 bytes; a server answer sent to a key's subject can be far larger.
    maxValueSize: MAX_ENTRY_BYTES,
  };
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
  const kv = await openRegistry(nc, { ttlMs, ...(opts.replicas ? { replicas: opts.replicas } : {}) });
  const bucketTtlMs = (await kv.status()).ttl;
  if (bucketTtlMs > 0 && bucketTtlMs <= heartbeatMs) {
    throw new Error(
      `registry bucket TTL ${bucketTtlMs} ms is not above heartbeatMs ${heartbeatMs}: entries would flap`,
    );
  }
  const instanceId = newId("inst");
  const key = `${service}.${instanceId}`;
  const at = { key, subject: `${REGISTRY_SUBJECT_PREFIX}${key}`, stream: `KV_${REGISTRY_BUCKET}` };
  const log = opts.log.child({ registryKey: key });
  if (bucketTtlMs !== ttlMs) {
    log.warn({ requestedTtlMs: ttlMs, bucketTtlMs }, "registry bucket exists with another TTL; using the bucket's");
  }
  const entry: RegistryEntry = { service, address: opts.address, instanceId, startedAt: new Date().toISOString() };
  const value = JSON.stringify(entry);
  try {
    await writeEntry(nc, at, value, 5_000);
    log.info({ address: opts.address, heartbeatMs, ttlMs: bucketTtlMs }, "registered in the service registry");
  } catch (err) {
    // Callers' watches see each heartbeat as it is written, stored or not: a full store is no reason not to start.
    if (!isStoreFull(err)) throw err;
    log.warn(
      { err: (err as Error).message, address: opts.address },
      "registry entry not stored (JetStream store full): callers see it by its heartbeats",
    );
  }
  const beating = heartbeat(nc, at, value, heartbeatMs, log);

  const stop = async () => {
    // A heartbeat landing after the delete would resurrect the entry for a whole TTL.
    await beating.stop();
    if (nc.isClosed() || nc.isDraining()) {
      log.warn("NATS connection closed: cannot deregister; the entry expires by TTL");
      return;
    }
    try {
      await writeEntry(nc, at, "", 5_000, true);
      log.info("deregistered from the service registry");
    } catch (err) {
      log.warn({ err: (err as Error).message }, "deregistration failed; the entry expires by TTL");
    }
  };
  let stopping: Promise<void> | undefined;
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

export function parseEntry(text: string): RegistryEntry | undefined {
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
export interface Registry {
  readonly kv: KV;
  readonly jsm: JetStreamManager;
  /** The bucket's TTL (max age), ms. */
  readonly ttlMs: number;
}

/** Per connection, opened once (the bucket created with defaults if missing). */
const registries = new WeakMap<NatsConnection, Promise<Registry>>();

export function registryOf(nc: NatsConnection): Promise<Registry> {
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

/** The largest registry entry, bytes: a registration writes ~150. */
export const MAX_ENTRY_BYTES = 4_096;

/** The subjects of the registry's keys, up to the key: `$KV.<bucket>.`. */
export const REGISTRY_SUBJECT_PREFIX = `$KV.${REGISTRY_BUCKET}.`;

/**
 * The latest entry (deletes included) of every key of `service`. Not
 * kv.keys(): its consumer waits for a message counted as pending when it
 * starts, and an entry expiring (max age) before delivery leaves it waiting
 * for seconds. Stream info plus gets are plain requests.
 */
export async function snapshot(reg: Registry, service: string): Promise<KvEntry[]> {
  const info = await reg.jsm.streams.info(`KV_${REGISTRY_BUCKET}`, {
    subjects_filter: `${REGISTRY_SUBJECT_PREFIX}${service}.*`,
  });
  // Only keys a registration writes (`<service>.<instance id>`), and one unreadable key skipped, not
  // the whole snapshot failed: the server stores its answers at any reply subject a client names, e.g.
  // `<service>.x!y`, which kv.get refuses to read.
  const keys = Object.keys(info.state.subjects ?? {})
    .map((s) => s.slice(REGISTRY_SUBJECT_PREFIX.length))
    .filter((k) => k.startsWith(`${service}.`) && /^[\w-]+\.[\w-]+$/.test(k));
  const entries = await Promise.all(keys.map((k) => reg.kv.get(k).catch(() => null)));
  return entries.filter((e): e is KvEntry => e !== null);
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
  replicas = 1,
): Promise<Registration | undefined> {
  return bus ? registerInstance({ nc: bus.nc, service, address: `${host}:${port}`, log, replicas }) : undefined;
}
