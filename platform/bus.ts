/**
 * The event bus: a NATS connection with JetStream, and the streams of a
 * catalogue created (or updated) on connect. Streams keep events for replay
 * (a read model can be rebuilt from them) and drop a republished duplicate by
 * its `Nats-Msg-Id` within the duplicate window.
 */
import { createHmac } from "node:crypto";
import {
  DiscardPolicy,
  type JetStreamClient,
  type JetStreamManager,
  jetstream,
  jetstreamManager,
  RetentionPolicy,
  StorageType,
} from "@nats-io/jetstream";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { backoffMs } from "./backoff.js";
import type { StreamSpec } from "./catalogue.js";
import type { Logger } from "./log.js";
import { withoutPassword } from "./redact.js";

/**
 * Stream settings: file storage (survives a server restart), limits
 * retention (events stay for replay, e.g. to rebuild a read model) for 7
 * days or {@link STREAM_MAX_BYTES}, whichever comes first, and a 2-minute duplicate window — longer than any outbox retry
 * burst; the consumers' inboxes dedupe beyond it. No message is ever
 * deleted or purged through the API, by anyone: nats-server sends a
 * publish's acknowledgement to whatever reply subject the publisher named,
 * and acts on it there — an acknowledgement `{"stream":…,"seq":N}` sent to
 * `$JS.API.STREAM.PURGE.<stream>` purged everything below N, to
 * `…MSG.DELETE.<stream>` deleted message N (a hostile round did both with
 * the gateway's user, through its own registry key). nats-server lets a
 * stream gain these two but never lose them.
 */
/** How long a stream keeps an event, ms: no delivery of one can come later, but of a redriven copy (inbox.ts INBOX_KEEP_MS). */
export const EVENT_RETENTION_MS = 7 * 24 * 60 * 60 * 1000;

/**
 * The most a stream keeps, bytes: past it, its oldest events are dropped (as they are past
 * {@link EVENT_RETENTION_MS}). Bounded by age alone, the streams grew with traffic until the
 * server's JetStream store was full (900 MB in the Kubernetes deployment, a week at ~0.7 orders a
 * second: ~2.1 KB of events an order), and NATS then refused every publish: the outboxes backed up for good, and the service
 * registry's heartbeats, in the same store, failed with them. Four streams (three contexts and the
 * DLQ) at this bound fit that store with room for the registry.
 */
export const STREAM_MAX_BYTES = 200 * 2 ** 20;

const STREAM_DEFAULTS = {
  storage: StorageType.File,
  retention: RetentionPolicy.Limits,
  max_age: EVENT_RETENTION_MS * 1e6,
  max_bytes: STREAM_MAX_BYTES,
  discard: DiscardPolicy.Old,
  duplicate_window: 2 * 60 * 1e9,
  deny_delete: true,
  deny_purge: true,
};

/** A NATS connection with JetStream handles. */
export interface Bus {
  readonly nc: NatsConnection;
  readonly js: JetStreamClient;
  readonly jsm: JetStreamManager;
  /**
   * The key of its dead letters' message ids (dead-letter.ts), and of its redriven copies'
   * (scripts/redrive.ts), the same in every process of its NATS user (derived from the password, which
   * no other service knows); none: a key of this process.
   */
  readonly letterKey?: Buffer;
  close(): Promise<void>;
}

/** NATS credentials: a user and its password. */
export interface BusAuth {
  readonly user: string;
  readonly pass: string;
}

/**
 * The prefix of `user`'s inboxes, the reply subjects of its requests and pulls: its own, so that no
 * other user may subscribe to them (`_INBOX.>` would show everyone's answers and deliveries).
 */
export const inboxPrefixOf = (user: string) => `_INBOX_${user}`;

/** The credentials a process's NATS_USER and NATS_PASSWORD name, as {@link BusOptions} take them (none: anonymous). */
export const busAuthOf = (c: { readonly NATS_USER: string; readonly NATS_PASSWORD: string }): { auth?: BusAuth } =>
  c.NATS_USER ? { auth: { user: c.NATS_USER, pass: c.NATS_PASSWORD } } : {};

/** Options of {@link connectBus}. */
export interface BusOptions {
  /** Streams to create or update (none: only connect, e.g. to read the service registry). */
  readonly streams?: readonly StreamSpec[];
  /** Replicas of the streams created: 1 locally, 3 on a cluster. Never lowered on an existing stream. */
  readonly replicas?: number;
  /** The NATS user to connect as (platform/bus-access.ts); none: an anonymous connection. */
  readonly auth?: BusAuth;
}

/**
 * Creates stream `s` with `replicas` replicas, or updates it (never lowering its replication) unless
 * it is already as configured — which is all a service's own user may do: only the bus's administrator
 * may create or change a stream (platform/bus-access.ts), and a service waits for it to have.
 */
async function ensureStream(jsm: JetStreamManager, s: StreamSpec, replicas: number): Promise<void> {
  const config = { ...STREAM_DEFAULTS, num_replicas: replicas, name: s.name, subjects: [...s.subjects] };
  const existing = await jsm.streams.info(s.name).catch(() => undefined);
  if (!existing) {
    await jsm.streams.add(config);
    return;
  }
  const c = existing.config;
  const same =
    c.subjects?.join(" ") === s.subjects.join(" ") &&
    c.num_replicas >= replicas &&
    c.max_age === config.max_age &&
    c.max_bytes === config.max_bytes &&
    c.discard === config.discard &&
    c.duplicate_window === config.duplicate_window &&
    c.deny_delete === true &&
    c.deny_purge === true;
  if (same) return;
  // Never lower replication: a tool or an older pod started with the default must not shrink R3 to R1.
  await jsm.streams.update(s.name, { ...config, num_replicas: Math.max(replicas, c.num_replicas) });
}

/**
 * `url`'s servers without the credentials written in them (`nats://user:pass@host:4222`), and those of
 * the first that has some. The Node client never sends a URL's credentials: it connected anonymously,
 * and a server with users refused it ("Authorization Violation": a stack trace, restarted for ever).
 */
export function serversOf(url: string): { servers: string[]; auth?: BusAuth } {
  let auth: BusAuth | undefined;
  const servers = url.split(",").map((s) => {
    const m = /^((?:nats|tls):\/\/)?([^@/]*)@(.*)$/i.exec(s);
    if (!m) return s;
    const [, scheme = "", userinfo = "", rest = ""] = m;
    const colon = userinfo.indexOf(":");
    const [user, pass] = colon < 0 ? [userinfo, ""] : [userinfo.slice(0, colon), userinfo.slice(colon + 1)];
    auth ??= { user: decodeURIComponent(user), pass: decodeURIComponent(pass) };
    return scheme + rest;
  });
  return auth ? { servers, auth } : { servers };
}

/** How often a process waiting for its first NATS connection says so. */
const WAITING_SAID_EVERY_MS = 5_000;

/** Connects to NATS (reconnecting forever, logging state changes) and creates or updates `streams`. */
export async function connectBus(url: string, name: string, log: Logger, opts: BusOptions = {}): Promise<Bus> {
  // The first connection is waited for without end (a bus that starts after its clients): say so, or a
  // NATS_URL naming no server (a typo, a port of nothing) left the process waiting without a word.
  const waiting = setInterval(
    () => log.warn(`NATS at ${withoutPassword(url)} does not answer yet: waiting (NATS_URL)`),
    WAITING_SAID_EVERY_MS,
  );
  const { servers, auth: inUrl } = serversOf(url);
  // NATS_USER and NATS_PASSWORD, or the URL's own.
  const auth = opts.auth ?? inUrl;
  const nc = await connect({
    servers,
    name,
    // A user's answers and deliveries arrive in inboxes only it may subscribe to (bus-access.ts).
    ...(auth ? { user: auth.user, pass: auth.pass, inboxPrefix: inboxPrefixOf(auth.user) } : {}),
    maxReconnectAttempts: -1,
    reconnectTimeWait: 250,
    waitOnFirstConnect: true,
    // Every request (each JetStream publish, each pull) would otherwise capture a stack trace up front
    // for an error it almost never raises: ~2% of a busy service's CPU. Errors keep their message.
    noAsyncTraces: true,
  }).finally(() => clearInterval(waiting));
  void (async () => {
    for await (const s of nc.status()) {
      if (s.type === "disconnect" || s.type === "reconnect") log.warn({ nats: s.type }, `NATS ${s.type}`);
    }
  })();
  // No API check here: JetStream may not be up yet, which the loop below waits for.
  const jsm = await jetstreamManager(nc, { checkAPI: false });
  const replicas = opts.replicas ?? 1;
  // A cluster that is starting (JetStream off or without a leader yet, too few peers for R3) refuses
  // for a while: wait for it, saying so, instead of exiting and being restarted into the same wait.
  for (let attempt = 1; ; attempt++) {
    try {
      await jsm.getAccountInfo();
      for (const s of opts.streams ?? []) await ensureStream(jsm, s, replicas);
      break;
    } catch (err) {
      if (nc.isClosed()) throw err;
      const retryInMs = backoffMs(attempt, 250, 5_000);
      const message = (err as Error).message;
      log.warn(
        { err: message, attempt, retryInMs },
        /Permissions Violation/.test(message)
          ? `NATS user ${auth?.user ?? "(none)"} may not create or change the streams, which are not there or not as configured yet: waiting for the bus's administrator to provision them`
          : /insufficient storage/.test(message)
            ? // nats-server reserves a stream's bound when it makes the stream: no wait ends this, a larger store does.
              `the JetStream store cannot hold ${opts.streams?.length ?? 0} streams of ${STREAM_MAX_BYTES / 2 ** 20} MB (reserved when each is made): raise max_file_store; waiting`
            : "JetStream not ready for the streams; waiting",
      );
      await new Promise((r) => setTimeout(r, retryInMs));
    }
  }
  log.info(
    { url: withoutPassword(url), streams: (opts.streams ?? []).map((s) => s.name) },
    "connected to NATS JetStream",
  );
  // Without a user, anyone may publish any letter: no key would be secret, and one known to all is as good.
  const letterKey = createHmac("sha256", auth?.pass ?? "")
    .update(`shopmesh dead letters of ${auth?.user ?? ""}`)
    .digest();
  return { nc, js: jetstream(nc), jsm, letterKey, close: () => closeWithin(nc, log) };
}

/**
 * How long a close waits for the server to confirm the connection's drain before it cuts the
 * connection: a nats-server that answers nothing (frozen; its store on a full disk) held every
 * service's stop for as long as it stayed silent. Cut, what the drain would have waited for is
 * redelivered (unacknowledged messages) or was already given up (the registry's entry expires).
 */
const DRAIN_MS = 2_000;

function closeWithin(nc: NatsConnection, log: Logger): Promise<void> {
  const drained = nc.drain();
  drained.catch(() => {}); // its failure after the cut is nobody's to hear
  let timer: NodeJS.Timeout | undefined;
  const cut = new Promise<"cut">((r) => {
    timer = setTimeout(() => r("cut"), DRAIN_MS);
  });
  return Promise.race([drained, cut]).then(async (how) => {
    clearTimeout(timer);
    if (how !== "cut") return;
    log.warn({ ms: DRAIN_MS }, "NATS did not confirm the connection's drain in time: closing it");
    await nc.close();
  });
}
