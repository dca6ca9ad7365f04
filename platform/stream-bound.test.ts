/**
 * The event streams are bounded by size as well as by age: kept 7 days with no size limit, they
 * grew with traffic until the server's JetStream store was full (900 MB in the Kubernetes
 * deployment: ~0.7 orders a second for a week), and from then on NATS refused every publish — the
 * outboxes backed up for good and the service registry's heartbeats failed with them. Past its
 * size a stream drops its oldest events, and the bus goes on. A real nats-server whose store
 * holds every stream's bound and a little more, as the deployment's does; one stream is filled past it.
 */
import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { type JetStreamManager, jetstream, jetstreamManager, RetentionPolicy, StorageType } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";
import { expect, it } from "vitest";
import { EVENTS } from "../contracts/events.js";
import { built, ROOT } from "../test/fixtures.js";
import { startNats } from "../test/nats.js";
import { capturedLogger } from "../test/system.js";
import { connectBus, EVENT_RETENTION_MS, STREAM_MAX_BYTES } from "./bus.js";
import { provisionBus } from "./bus-access.js";
import { silentLogger } from "./log.js";
import { openRegistry } from "./registry.js";

/** As the Kubernetes deployment's store: every stream's bound (which nats-server reserves at creation) and a little more. */
const STORE_MB = Math.ceil((EVENTS.streams.length * STREAM_MAX_BYTES) / 2 ** 20) + 64;

it("a stream past its size drops its oldest events; publishing and the registry go on", async () => {
  await using nats = await startNats(`jetstream { max_file_store: ${STORE_MB}MB }`);
  await provisionBus(nats.url, EVENTS, silentLogger());
  const bus = await connectBus(nats.url, "stream-bound-test", silentLogger());
  try {
    const payload = new Uint8Array(900 * 1024).fill(7);
    const count = Math.ceil((1.5 * STREAM_MAX_BYTES) / payload.byteLength);
    const refused: string[] = [];
    for (let i = 0; i < count; i++) {
      await bus.js.publish("order.order.placed", payload).catch((err: unknown) => {
        refused.push((err as Error).message);
      });
    }
    expect(refused.slice(0, 3)).toEqual([]);
    const info = await bus.jsm.streams.info("ORDER");
    expect(info.state.bytes).toBeLessThanOrEqual(STREAM_MAX_BYTES);
    expect(info.state.first_seq).toBeGreaterThan(1);
    expect(info.state.last_seq).toBe(count);
    // The registry lives in the same store: its heartbeats still land.
    const kv = await openRegistry(bus.nc);
    await expect(kv.put("order.inst_test", "127.0.0.1:1")).resolves.toBeGreaterThan(0);
  } finally {
    await bus.close();
  }
}, 120_000);

it("the Kubernetes NATS store holds every stream at its bound, with room to spare, on its volume", () => {
  const conf = readFileSync(new URL("../deploy/kubernetes/base/nats/nats.conf", import.meta.url), "utf8");
  const m = /max_file_store:\s*(\d+)MB/.exec(conf);
  expect(m?.[1]).toBeDefined();
  const store = Number(m?.[1]) * 2 ** 20;
  // Every event stream (the DLQ among them) at its bound, and room for the registry and the filesystem.
  // Short of it, the nats-streams Job waited for ever (a new service's stream: test/deploy.test.ts timed out).
  expect(
    EVENTS.streams.length * STREAM_MAX_BYTES + 64 * 2 ** 20,
    `${EVENTS.streams.length} streams of ${STREAM_MAX_BYTES / 2 ** 20} MB: raise max_file_store in base/nats/nats.conf`,
  ).toBeLessThanOrEqual(store);
  const sts = readFileSync(new URL("../deploy/kubernetes/base/nats/statefulset.yaml", import.meta.url), "utf8");
  const volume = /storage:\s*(\d+)Gi/.exec(sts);
  expect(volume?.[1]).toBeDefined();
  expect(
    store,
    "max_file_store below the volume (base/nats/statefulset.yaml), with room for the filesystem",
  ).toBeLessThan(Number(volume?.[1]) * 2 ** 30);
});

/** Makes stream `name` as the streams were made before their size bound: by age only. */
async function addUnbounded(jsm: JetStreamManager, name: string): Promise<void> {
  await jsm.streams.add({
    name,
    subjects: [...(EVENTS.streams.find((s) => s.name === name)?.subjects ?? [])],
    storage: StorageType.File,
    retention: RetentionPolicy.Limits,
    max_age: EVENT_RETENTION_MS * 1e6,
    duplicate_window: 2 * 60 * 1e9,
    deny_delete: true,
    deny_purge: true,
  });
}

/** Provisions the bus again, as the Job does at every deploy; it must finish (within 15 s), not wait. */
async function expectProvisioned(url: string): Promise<void> {
  const captured = capturedLogger();
  const outcome = await Promise.race([
    provisionBus(url, EVENTS, captured.log).then(() => "done"),
    new Promise((r) => setTimeout(() => r("still waiting"), 15_000)),
  ]);
  expect(outcome, JSON.stringify(captured.lines.slice(0, 3))).toBe("done");
}

it("a stream made before the bound, already past it, is bounded when provisioned again; publishing goes on", async () => {
  await using nats = await startNats(`jetstream { max_file_store: ${STORE_MB}MB }`);
  const nc = await connect({ servers: nats.url });
  try {
    const jsm = await jetstreamManager(nc);
    await addUnbounded(jsm, "ORDER");
    const js = jetstream(nc);
    const payload = new Uint8Array(900 * 1024).fill(7);
    const count = Math.ceil((1.3 * STREAM_MAX_BYTES) / payload.byteLength);
    for (let i = 0; i < count; i++) await js.publish("order.order.placed", payload);
    await expectProvisioned(nats.url);
    const info = await jsm.streams.info("ORDER");
    expect(info.config.max_bytes).toBe(STREAM_MAX_BYTES);
    expect(info.state.bytes).toBeLessThanOrEqual(STREAM_MAX_BYTES);
    await expect(js.publish("order.order.placed", payload)).resolves.toMatchObject({ seq: count + 1 });
  } finally {
    await nc.close();
  }
}, 120_000);

it("a store already full of a stream made before the bound: provisioned again, the stream is bounded and the bus goes on", async () => {
  // The deployment the bound was made for: unbounded, ORDER had filled the store and every publish was refused.
  await using nats = await startNats(`jetstream { max_file_store: ${STORE_MB}MB }`);
  const nc = await connect({ servers: nats.url });
  try {
    const jsm = await jetstreamManager(nc);
    await addUnbounded(jsm, "ORDER");
    const js = jetstream(nc);
    const payload = new Uint8Array(900 * 1024).fill(7);
    let refusal = "";
    for (let i = 0; i < (2 * STORE_MB * 2 ** 20) / payload.byteLength && !refusal; i++) {
      await js.publish("order.order.placed", payload).catch((err: unknown) => {
        refusal = (err as Error).message;
      });
    }
    expect(refusal).toMatch(/insufficient|storage|resources/i);
    await expectProvisioned(nats.url);
    for (const s of EVENTS.streams) {
      const info = await jsm.streams.info(s.name);
      expect(info.config.max_bytes, s.name).toBe(STREAM_MAX_BYTES);
      expect(info.state.bytes, s.name).toBeLessThanOrEqual(STREAM_MAX_BYTES);
    }
    await expect(js.publish("order.order.placed", payload)).resolves.toBeDefined();
    const kv = await openRegistry(nc);
    await expect(kv.put("order.inst_test", "127.0.0.1:1")).resolves.toBeGreaterThan(0);
  } finally {
    await nc.close();
  }
}, 120_000);

it("a store too small for the streams' bounds is said as such by the provisioning Job, not as JetStream not ready", async () => {
  // nats-server reserves each stream's bound at creation: a store below the four bounds refuses the
  // streams for good ("insufficient storage resources available"). The Job waited saying only
  // "JetStream not ready for the streams", as for a cluster still starting, and the services with it.
  await using nats = await startNats("jetstream { max_file_store: 500MB }");
  const job = spawn(process.execPath, built("contracts/provision-bus.ts"), {
    cwd: ROOT,
    env: { ...process.env, NATS_URL: nats.url, LOG_FORMAT: "json" },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "";
  job.stdout.on("data", (d: Buffer) => (out += d.toString()));
  try {
    for (const end = Date.now() + 20_000; !out.includes("insufficient storage") && Date.now() < end; ) {
      await new Promise((r) => setTimeout(r, 100));
    }
    const line = JSON.parse(out.split("\n").find((l) => l.includes("insufficient storage")) ?? "{}") as {
      msg?: string;
    };
    expect(line.msg, out).toMatch(/max_file_store/);
    expect(line.msg).toMatch(new RegExp(`${EVENTS.streams.length} streams of ${STREAM_MAX_BYTES / 2 ** 20} MB`));
  } finally {
    job.kill("SIGKILL");
  }
}, 60_000);
