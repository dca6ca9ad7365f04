/**
 * What one event costs the process that writes it, from its transaction to
 * JetStream's acknowledgement: `Outbox.add` in a transaction of its own on
 * SQLite, its commit, and the outbox relay's publish (platform/relay.ts), on
 * a nats-server of its own. One event at a time (what each saga step pays
 * at one order in flight) and 16 at once.
 *
 *   npx tsx bench/outbox-relay.ts               (OUTBOX_EVENTS=2000 per round)
 *
 * It measures one component inside its own process, so it compares code, not
 * systems: run it on two checkouts, alternating, for an A/B of a change to
 * the outbox or the relay. Prints and writes bench/results/outbox-relay.json:
 * per round, this process's CPU µs per event and the wall-clock µs from each
 * event's transaction to its arrival at a subscriber.
 */
import { join } from "node:path";
import { EVENTS } from "../contracts/events.js";
import { SagaMode } from "../gen/shopmesh/common/v1/common_pb.js";
import { OrderPlacedSchema } from "../gen/shopmesh/order/v1/events_pb.js";
import { connectBus } from "../platform/bus.js";
import { configOrExit, int, parseEnv } from "../platform/config.js";
import { migrations, openDatabase } from "../platform/db.js";
import { silentLogger } from "../platform/log.js";
import { OUTBOX_CLAIMS_MIGRATION, OUTBOX_INDEXES_MIGRATION, OUTBOX_MIGRATION, Outbox } from "../platform/outbox.js";
import { OutboxRelay } from "../platform/relay.js";
import { tempDir } from "../test/fixtures.js";
import { startNats } from "../test/nats.js";
import { writeResults } from "./system.js";

const { OUTBOX_EVENTS: EVENTS_PER_ROUND } = configOrExit(() =>
  parseEnv({ OUTBOX_EVENTS: int(2_000, { min: 1, max: 1_000_000 }) }, process.env),
);
const log = silentLogger();
const dir = tempDir("shopmesh-outbox-bench-");
const nats = await startNats();
const bus = await connectBus(nats.url, "outbox-bench", log, { streams: EVENTS.streams });
const db = await openDatabase(
  { engine: "sqlite", path: join(dir.path, "outbox.db") },
  migrations([OUTBOX_MIGRATION, OUTBOX_CLAIMS_MIGRATION, OUTBOX_INDEXES_MIGRATION]),
);
const outbox = new Outbox("outbox-bench", EVENTS);
const relay = new OutboxRelay({ db, outbox, bus, source: "outbox-bench", log });
relay.start();

// Events arrive at a core subscription once JetStream has stored them; callers wait for the next one.
let arrived = 0;
let waiting: (() => void)[] = [];
const sub = bus.nc.subscribe("order.order.placed.orchestration");
void (async () => {
  for await (const _ of sub) {
    arrived++;
    for (const wake of waiting.splice(0)) wake();
  }
})();
const add = (i: number) =>
  db.transaction((tx) =>
    outbox.add(
      tx,
      OrderPlacedSchema,
      { orderId: `ord-${i % 50}`, sagaMode: SagaMode.ORCHESTRATION },
      {
        customerId: "bench",
        items: [{ productId: "coffee-beans", quantity: 1 }],
        cardToken: "tok_visa",
      },
    ),
  );

/** `count` events by `concurrency` callers, each waiting for an arrival after its commit. */
async function round(concurrency: number, count: number) {
  let next = 0;
  const cpu = process.cpuUsage();
  const started = performance.now();
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next < count) {
        const seen = arrived;
        await add(next++);
        while (arrived <= seen) await new Promise<void>((r) => waiting.push(r));
      }
    }),
  );
  const used = process.cpuUsage(cpu);
  return {
    concurrency,
    events: count,
    cpu_us_per_event: Math.round((used.user + used.system) / count),
    wall_us_per_event: Math.round(((performance.now() - started) * 1000) / count),
  };
}

try {
  await round(1, 300); // warm-up
  const rounds = [await round(1, EVENTS_PER_ROUND), await round(16, EVENTS_PER_ROUND * 3)];
  for (const r of rounds) {
    process.stdout.write(
      `${String(r.concurrency).padStart(2)} at once: ${r.cpu_us_per_event} µs CPU, ${r.wall_us_per_event} µs wall per event\n`,
    );
  }
  writeResults(join(import.meta.dirname, "results", "outbox-relay.json"), { rounds });
} finally {
  waiting = [];
  await relay.stop();
  await db.close();
  await bus.close();
  await nats[Symbol.asyncDispose]();
  dir[Symbol.dispose]();
}
