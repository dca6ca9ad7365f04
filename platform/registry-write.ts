/** Writing one entry of the service registry (registry.ts), once or as a heartbeat. */
import { randomBytes } from "node:crypto";
import { type ApiError, JetStreamApiError } from "@nats-io/jetstream";
import { headers, type NatsConnection } from "@nats-io/transport-node";
import type { Logger } from "./log.js";

/** Where an entry is written: its key, the key's subject, and the bucket's stream that must store it. */
export interface EntryAt {
  readonly key: string;
  readonly subject: string;
  readonly stream: string;
}

/**
 * Writes (or, with `deleted`, deletes) the registry entry `at.key` and resolves once the bucket has stored
 * it — as kv.put and kv.delete do, but with an answer subject of its own, random, rather than one of
 * the connection's sequential inbox ids: every service may watch the registry's subjects and so sees
 * a write's reply subject, and the connection's other inboxes (its consumers' pulls, whose inbox a
 * status sent by the server there ends) follow from one of them.
 */
export async function writeEntry(nc: NatsConnection, at: EntryAt, value: string, timeoutMs: number, deleted = false) {
  const prefix = (nc as { options?: { inboxPrefix?: string } }).options?.inboxPrefix || "_INBOX";
  const h = headers();
  if (deleted) h.set("KV-Operation", "DEL");
  const answer = await nc.request(at.subject, deleted ? "" : value, {
    timeout: timeoutMs,
    noMux: true,
    reply: `${prefix}.registry.${randomBytes(12).toString("hex")}`,
    ...(deleted ? { headers: h } : {}),
  });
  const ack = (() => {
    try {
      return JSON.parse(answer.string()) as { stream?: unknown; error?: ApiError };
    } catch {
      return {};
    }
  })();
  // A refusal names the stream too (`{"error":…,"stream":"KV_…","seq":0}`): taken for a stored entry, a
  // full JetStream store's refusals of every heartbeat went unsaid.
  if (ack.error)
    throw new JetStreamApiError({
      ...ack.error,
      description: `registry write of ${at.key} not stored: ${ack.error.description}`,
    });
  if (ack.stream !== at.stream) throw new Error(`registry write of ${at.key} not stored: no acknowledgement`);
}

/** Refreshes `at.key` every `heartbeatMs` until stopped; the last refresh in flight is awaited by `stop`. */
export function heartbeat(nc: NatsConnection, at: EntryAt, value: string, heartbeatMs: number, log: Logger) {
  let stopped = false;
  let failures = 0;
  let timer: NodeJS.Timeout | undefined;
  let inflight: Promise<void> = Promise.resolve();
  const beat = async () => {
    try {
      await writeEntry(nc, at, value, heartbeatMs);
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
  return {
    /** Stops refreshing; resolves once no refresh is in flight. */
    stop: async () => {
      stopped = true;
      clearTimeout(timer);
      await inflight;
    },
  };
}
