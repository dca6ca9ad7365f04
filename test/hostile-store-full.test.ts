/**
 * A hostile round against NATS JetStream's own store used up (2026-12-06): nats-server started as the
 * fixtures start it, with a `max_file_store` the test fills through a stream of its own (an operator's,
 * or any stream without a size bound: the event streams' bounds are reserved, but nats-server refuses
 * every write once the store's use passes `max_file_store`, whoever used it). Then every publish is
 * refused, `insufficient resources` (err_code 10023), until room is made. Each `describe` is one
 * finding; each test failed on the code it was written against, or shows what held.
 */
import { type JetStreamClient, jetstream, jetstreamManager, RetentionPolicy, StorageType } from "@nats-io/jetstream";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { describe, expect, it } from "vitest";
import { registerInstance } from "../platform/registry.js";
import { watchInstances } from "../platform/registry-watch.js";
import { startNats } from "./nats.js";
import { capturedLogger } from "./system.js";

/** A stream of the test's own with no size bound, filled until the store refuses; `free` deletes it. */
async function fillStore(nc: NatsConnection): Promise<{ free(): Promise<void> }> {
  const jsm = await jetstreamManager(nc);
  const js: JetStreamClient = jetstream(nc);
  await jsm.streams.add({
    name: "FILLER",
    subjects: ["filler.>"],
    storage: StorageType.File,
    retention: RetentionPolicy.Limits,
  });
  const payload = new Uint8Array(900 * 1024).fill(7);
  for (let refused = ""; !refused; ) {
    await js.publish("filler.x", payload).catch((err: unknown) => {
      refused = (err as Error).message;
    });
  }
  await expect(js.publish("filler.x", new Uint8Array(1))).rejects.toThrow(/insufficient resources/);
  return { free: async () => void (await jsm.streams.delete("FILLER")) };
}

const lines = (captured: { lines: Record<string, unknown>[] }, msg: RegExp) =>
  captured.lines.filter((l) => msg.test(String(l.msg)));

describe("the service registry, in the same store", () => {
  it("a heartbeat the full store refuses is said, not taken as stored; discovery goes on from the live writes", async () => {
    // nats-server answers a refused write with the stream's name beside the error: the registry took
    // `{"error":…,"stream":"KV_shopmesh_registry","seq":0}` for a stored entry, so while the store was
    // full its heartbeats failed without a word, and an instance starting then logged "registered".
    await using nats = await startNats("jetstream { max_file_store: 20MB }");
    const nc = await connect({ servers: nats.url });
    const captured = capturedLogger();
    try {
      const first = await registerInstance({
        nc,
        service: "inventory",
        address: "127.0.0.1:1",
        log: captured.log,
        heartbeatMs: 200,
        ttlMs: 1_000,
      });
      const store = await fillStore(nc);
      await expect
        .poll(() => lines(captured, /registry heartbeat failed/).map((l) => l.err))
        .toContainEqual(expect.stringMatching(/insufficient resources/));
      // An instance starting now still starts (its callers see its heartbeats as they are written), and says
      // its entry is not stored.
      const second = await registerInstance({
        nc,
        service: "inventory",
        address: "127.0.0.1:2",
        log: captured.log,
        heartbeatMs: 200,
      });
      expect(lines(captured, /not stored/).map((l) => l.registryKey)).toContain(second.key);
      // A watch started while the store is full finds both, from their heartbeats as they go by.
      let seen: readonly string[] = [];
      const watch = watchInstances(nc, "inventory", captured.log, { onChange: (a) => (seen = a) });
      await expect.poll(() => seen).toEqual(["127.0.0.1:1", "127.0.0.1:2"]);
      await store.free();
      await expect.poll(() => lines(captured, /registry heartbeat succeeding again/).length).toBeGreaterThan(0);
      watch.stop();
      await first.stop();
      await second.stop();
    } finally {
      await nc.close();
    }
  }, 60_000);
});
