/**
 * Following the registry: the live instances of one service, from a plain
 * subscription to its keys' subjects (`$KV.<bucket>.<service>.*`) plus a
 * snapshot of the current entries. Not a KV watch: that is a consumer on
 * the bucket's stream, which any service's NATS user could change or delete
 * (bus-access.ts) — and a subscription is this connection's alone. A write
 * seen live is newer than what the snapshot reads of its key; snapshot
 * entries apply in revision order. What reaches those subjects without being
 * a service's write — the server sends its answers to any reply subject a
 * client names — is not an entry (no address, or delivered under another
 * subject) and changes nothing.
 *
 * Entries not refreshed for the bucket's TTL are dropped on a timer too,
 * because nats-server before 2.11 expires KV entries (stream max age)
 * without any watch event. That pruning pauses while NATS is disconnected
 * and restarts its clock on reconnect, so an outage keeps the last known
 * set; likewise while a connected NATS does not answer a ping (a server
 * frozen or overloaded: its connections stay open, and a client notices
 * only minutes later), restarting its clock once it answers again; and
 * after this process stalled (a pause, a GC storm, an overloaded event
 * loop), because the heartbeats that arrived meanwhile are still queued
 * behind the prune timer. A watch that fails or ends while the connection is open is restarted
 * with backoff. Callbacks never run synchronously inside the call that
 * starts the watch.
 */
import type { KvEntry } from "@nats-io/kv";
import type { Msg, NatsConnection, Subscription } from "@nats-io/transport-node";
import { backoffMs } from "./backoff.js";
import { addressChange, MAX_INSTANCES, MAX_KEYS, throttledWarn } from "./instances.js";
import type { Logger } from "./log.js";
import { detached } from "./propagation.js";
import {
  DEFAULT_TTL_MS,
  MAX_ENTRY_BYTES,
  parseEntry,
  REGISTRY_SUBJECT_PREFIX,
  type Registry,
  registryOf,
  requireServiceName,
  snapshot,
} from "./registry.js";

const RETRY_MIN_MS = 250;
const RETRY_MAX_MS = 5_000;
const now = () => performance.now(); // monotonic: after a wall clock's step back, nothing expired for the step

/** Whether a connection is up, and since when. */
type Link = { connected: boolean; since: number };

const links = new WeakMap<NatsConnection, Link>();

export function linkOf(nc: NatsConnection): Link {
  const known = links.get(nc);
  if (known) return known;
  const link: Link = { connected: !nc.isClosed(), since: now() };
  links.set(nc, link);
  void (async () => {
    for await (const s of nc.status()) {
      if (s.type === "disconnect") link.connected = false;
      else if (s.type === "reconnect") {
        link.connected = true;
        link.since = now();
      }
    }
    link.connected = false;
  })();
  return link;
}

/** Callbacks of {@link watchInstances}. */
export interface InstanceListener {
  /** The sorted, distinct live addresses: first once the current entries are loaded (maybe none), then on each change. */
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
  /** When the entry was last written (or forgotten), on this host's monotonic clock. */
  seenAt: number;
}

/** The state of one watch; see the module comment. */
class InstanceWatcher {
  private readonly log: Logger;
  private readonly link: Link;
  private readonly known = new Map<string, Known>();
  /** Keys the current watch or its snapshot delivered: after a restart, the rest are gone. */
  private readonly delivered = new Set<string>();
  private stopped = false;
  private sub: Subscription | undefined;
  /** Keys written since the current subscription began: newer than anything its snapshot reads. */
  private readonly live = new Set<string>();
  /** The subjects of this service's keys, up to the key's last token. */
  private readonly prefix: string;
  private pruneTimer: NodeJS.Timeout | undefined;
  private retryTimer: NodeJS.Timeout | undefined;
  private retries = 0;
  private ttlMs = DEFAULT_TTL_MS;
  private pruneEveryMs = 1_000;
  /** When prune last ran, and when it last found this process had stalled. */
  private lastPrune = now();
  private resumedAt = 0;
  /** A ping is out (entries looked expired); whether the last one went unanswered. */
  private pinging = false;
  private unanswered = false;
  /** The current watch's snapshot is loaded. */
  private synced = false;
  private reported: ReadonlySet<string> | undefined;
  private readonly invalid: (fields: Record<string, unknown>) => void;
  private readonly overCap: (fields: Record<string, unknown>) => void;

  constructor(
    private readonly nc: NatsConnection,
    private readonly service: string,
    log: Logger,
    private readonly listener: InstanceListener,
  ) {
    this.log = log.child({ registryWatch: service });
    this.link = linkOf(nc);
    this.prefix = `${REGISTRY_SUBJECT_PREFIX}${service}.`;
    this.invalid = throttledWarn(this.log, "registry: ignoring an entry without a valid address");
    this.overCap = throttledWarn(this.log, `registry: ignoring instances past ${MAX_INSTANCES}`);
  }

  stop(): void {
    this.stopped = true;
    clearInterval(this.pruneTimer);
    clearTimeout(this.retryTimer);
    this.sub?.unsubscribe();
    this.sub = undefined;
  }

  /** Tells the listener the live addresses, when they changed. */
  private report(): void {
    // Before the first load completes, "no instances" would only mean "not loaded yet".
    if (this.stopped || (!this.synced && this.reported === undefined)) return;
    const live = new Set<string>();
    for (const k of this.known.values()) if (k.address !== undefined) live.add(k.address);
    const before = this.reported;
    if (before && before.size === live.size && [...live].every((a) => before.has(a))) return;
    this.reported = live;
    this.log.info(addressChange(before ?? new Set(), live), "registry: live instances changed");
    this.listener.onChange([...live].sort());
  }

  /** An entry the snapshot read: older than a live write of its key, or than a later revision. */
  private apply(e: KvEntry, seenAt: number): void {
    const prev = this.known.get(e.key);
    if (!this.live.has(e.key) && !(prev && prev.revision >= e.revision)) {
      this.set(e.key, e.operation, () => e.string(), e.revision, seenAt);
    }
    if (this.known.has(e.key)) this.delivered.add(e.key);
  }

  /** A write as it happens, on a subject of this service's keys. */
  private applyLive(m: Msg): void {
    // Delivered here by the server under another subject (a consumer's message sent to a reply subject),
    // or larger than any entry (a server answer sent here, which one small request can make large).
    if (!m.subject.startsWith(this.prefix) || m.data.byteLength > MAX_ENTRY_BYTES) return;
    let operation: string;
    try {
      operation = m.headers?.get("KV-Operation") || "PUT";
    } catch {
      return; // unreadable headers: no service's write
    }
    const key = m.subject.slice(REGISTRY_SUBJECT_PREFIX.length);
    this.set(key, operation, () => m.string(), this.known.get(key)?.revision ?? 0, now());
    // Only keys it follows: one an ignored write names costs nothing (a flood of distinct keys held ~2 KB each).
    if (!this.known.has(key)) return;
    this.live.add(key);
    this.delivered.add(key);
  }

  private set(key: string, operation: string, text: () => string, revision: number, seenAt: number): void {
    const prev = this.known.get(key);
    if (operation !== "PUT") {
      // An unknown key's deletion matters only while the snapshot, which may hold the key, loads.
      if (prev || (!this.synced && this.known.size < MAX_KEYS))
        this.known.set(key, { address: undefined, revision, seenAt });
      return;
    }
    const entry = parseEntry(text());
    if (!entry || (entry.service !== "" && entry.service !== this.service)) {
      // Not this service's instance (e.g. an answer the server sent here at someone's request): no change.
      this.invalid({ key });
      return;
    }
    // Any holder of this service's NATS user can write its keys: the instances first known are kept, and
    // the keys followed (deleted ones are kept for a TTL) are bounded too.
    if (prev?.address === undefined && (this.liveCount() >= MAX_INSTANCES || (!prev && this.known.size >= MAX_KEYS))) {
      this.overCap({ key });
      return;
    }
    this.known.set(key, { address: entry.address, revision, seenAt });
  }

  private liveCount(): number {
    let n = 0;
    for (const k of this.known.values()) if (k.address !== undefined) n++;
    return n;
  }

  /** An entry written before we looked is as old as the server says; live writes go by this host's clock. */
  private initialSeenAt(e: KvEntry): number {
    return now() - Math.max(0, Date.now() - e.created.getTime());
  }

  private prune(): void {
    const at = now();
    // Ran far later than scheduled: this process stalled, and what it missed is still queued.
    if (at - this.lastPrune > 2 * this.pruneEveryMs) this.resumedAt = at;
    this.lastPrune = at;
    if (!this.link.connected || this.pinging) return;
    const cutoff = at - this.ttlMs;
    const expired = (k: Known) =>
      k.address !== undefined && Math.max(k.seenAt, this.link.since, this.resumedAt) < cutoff;
    for (const [key, k] of this.known) {
      // Older revisions of a key only arrive while a watch starts; a TTL later none can.
      if (k.address !== undefined || k.seenAt >= cutoff) continue;
      this.known.delete(key);
      this.live.delete(key);
      this.delivered.delete(key);
    }
    if (![...this.known.values()].some(expired)) return;
    // Heartbeats missing: their instances stopped only if the server that carries them answers.
    this.pinging = true;
    void this.serverAnswers().then((answers) => {
      this.pinging = false;
      if (this.stopped) return;
      if (!answers) {
        this.unanswered = true;
        return;
      }
      if (this.unanswered) {
        // Back from a silence: the heartbeats it held are on their way; count a TTL from now.
        this.unanswered = false;
        this.resumedAt = now();
        return;
      }
      let changed = false;
      for (const [key, k] of this.known) {
        if (!expired(k)) continue;
        this.known.set(key, { address: undefined, revision: k.revision, seenAt: now() });
        changed = true;
      }
      if (changed) this.report();
    });
  }

  /** Whether the server answers a ping within half a TTL. */
  private async serverAnswers(): Promise<boolean> {
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<false>((resolve) => {
      timer = setTimeout(() => resolve(false), this.ttlMs / 2);
    });
    try {
      return await Promise.race([this.nc.rtt().then(() => true as const), late]);
    } catch {
      return false;
    } finally {
      clearTimeout(timer);
    }
  }

  private async load(reg: Registry, current: Subscription): Promise<void> {
    try {
      const entries = await snapshot(reg, this.service);
      if (this.stopped || this.sub !== current) return;
      for (const e of entries) this.apply(e, this.initialSeenAt(e));
      for (const [key, k] of this.known) {
        if (!this.delivered.has(key) && k.address !== undefined) this.known.delete(key);
      }
      this.synced = true;
      this.retries = 0;
      this.report();
    } catch (err) {
      if (this.stopped || this.sub !== current) return;
      this.fail(err);
      // Ends the loop in run(), which retries.
      current.unsubscribe();
    }
  }

  private fail(err: unknown): void {
    this.log.warn({ err: (err as Error).message }, "registry watch failed; will retry");
    if (this.reported === undefined) this.listener.onError?.(`service registry unavailable: ${(err as Error).message}`);
  }

  /** One watch, from start to end; then a retry unless stopped or the connection is gone. */
  async run(): Promise<void> {
    try {
      const reg = await registryOf(this.nc);
      if (this.stopped) return;
      this.ttlMs = reg.ttlMs;
      clearInterval(this.pruneTimer);
      this.pruneEveryMs = Math.min(1_000, Math.max(100, this.ttlMs / 4));
      this.lastPrune = now();
      this.pruneTimer = setInterval(() => this.prune(), this.pruneEveryMs);
      this.pruneTimer.unref();
      const sub = this.nc.subscribe(`${this.prefix}*`);
      this.sub = sub;
      this.synced = false;
      this.delivered.clear();
      this.live.clear();
      void this.load(reg, sub);
      for await (const m of sub) {
        if (this.stopped) break;
        // Writes may arrive through promises a request's work resolved: handle them in no trace.
        detached(() => this.applyLive(m));
        this.report();
      }
    } catch (err) {
      if (this.stopped) return;
      this.fail(err);
    }
    this.sub = undefined;
    if (this.stopped) return;
    if (this.nc.isClosed()) {
      this.log.warn("registry connection closed; keeping the last known instances");
      clearInterval(this.pruneTimer);
      return;
    }
    this.retryTimer = setTimeout(() => void this.run(), backoffMs(++this.retries, RETRY_MIN_MS, RETRY_MAX_MS));
    this.retryTimer.unref();
  }
}

/** Watches the live instances of `service`, calling `listener` as they change (see the module comment). */
export function watchInstances(
  nc: NatsConnection,
  service: string,
  log: Logger,
  listener: InstanceListener,
): InstanceWatch {
  const watcher = new InstanceWatcher(nc, requireServiceName(service), log, listener);
  // Its own context: whoever first needs the watch (a request) does not lend it its trace.
  void detached(() => watcher.run());
  return { stop: () => watcher.stop() };
}
