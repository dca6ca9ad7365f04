/**
 * The event bus: a NATS connection with JetStream, and the streams of a
 * catalogue created (or updated) on connect. Streams keep events for replay
 * (a read model can be rebuilt from them) and drop a republished duplicate by
 * its `Nats-Msg-Id` within the duplicate window.
 */
import {
  type JetStreamClient,
  type JetStreamManager,
  jetstream,
  jetstreamManager,
  RetentionPolicy,
  StorageType,
} from "@nats-io/jetstream";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import type { StreamSpec } from "./catalogue.js";
import type { Logger } from "./log.js";

const DAY_NS = 24 * 60 * 60 * 1e9;
/**
 * Stream settings: file storage (survives a server restart), limits
 * retention (events stay for replay, e.g. to rebuild a read model) for 7
 * days, and a 2-minute duplicate window — longer than any outbox retry
 * burst; the consumers' inboxes dedupe beyond it.
 */
const STREAM_DEFAULTS = {
  storage: StorageType.File,
  retention: RetentionPolicy.Limits,
  max_age: 7 * DAY_NS,
  duplicate_window: 2 * 60 * 1e9,
};

/** A NATS connection with JetStream handles. */
export interface Bus {
  readonly nc: NatsConnection;
  readonly js: JetStreamClient;
  readonly jsm: JetStreamManager;
  close(): Promise<void>;
}

/** Options of {@link connectBus}. */
export interface BusOptions {
  /** Streams to create or update (none: only connect, e.g. to read the service registry). */
  readonly streams?: readonly StreamSpec[];
  /** Replicas of the streams created: 1 locally, 3 on a cluster. Never lowered on an existing stream. */
  readonly replicas?: number;
}

/** Connects to NATS (reconnecting forever, logging state changes) and creates or updates `streams`. */
export async function connectBus(url: string, name: string, log: Logger, opts: BusOptions = {}): Promise<Bus> {
  const nc = await connect({
    servers: url.split(","),
    name,
    maxReconnectAttempts: -1,
    reconnectTimeWait: 250,
    waitOnFirstConnect: true,
  });
  void (async () => {
    for await (const s of nc.status()) {
      if (s.type === "disconnect" || s.type === "reconnect") log.warn({ nats: s.type }, `NATS ${s.type}`);
    }
  })();
  const jsm = await jetstreamManager(nc);
  const replicas = opts.replicas ?? 1;
  for (const s of opts.streams ?? []) {
    const config = { ...STREAM_DEFAULTS, num_replicas: replicas, name: s.name, subjects: [...s.subjects] };
    const existing = await jsm.streams.info(s.name).catch(() => undefined);
    if (!existing) {
      await jsm.streams.add(config);
    } else {
      // Never lower replication: a tool or an older pod started with the default must not shrink R3 to R1.
      await jsm.streams.update(s.name, { ...config, num_replicas: Math.max(replicas, existing.config.num_replicas) });
    }
  }
  log.info({ url, streams: (opts.streams ?? []).map((s) => s.name) }, "connected to NATS JetStream");
  return { nc, js: jetstream(nc), jsm, close: () => nc.drain() };
}
