/**
 * `make events`: prints every event on the bus as it happens (and, with
 * `--from-start`, everything the streams still hold), decoded from protobuf
 * into one readable line each. `--dlq` shows only dead letters with their
 * reasons. NATS_URL overrides the server (default nats://127.0.0.1:4222).
 *
 *   make events            # live tail of ORDER, INVENTORY, PAYMENT
 *   make events ARGS=--from-start
 *   make dlq               # dead letters and why
 */
import { fromBinary, toJson } from "@bufbuild/protobuf";
import { DeliverPolicy } from "@nats-io/jetstream";
import { EVENTS } from "../contracts/events.js";
import { connectBus, DLQ_STREAM, silentLogger } from "../platform/index.js";

const args = new Set(process.argv.slice(2));
const dlqOnly = args.has("--dlq");
const fromStart = args.has("--from-start") || dlqOnly;
const url = process.env.NATS_URL ?? "nats://127.0.0.1:4222";
const streams = dlqOnly ? [DLQ_STREAM.name] : EVENTS.streams.map((s) => s.name);
const tty = process.stdout.isTTY;
const dim = (s: string) => (tty ? `\x1b[90m${s}\x1b[0m` : s);
const red = (s: string) => (tty ? `\x1b[31m${s}\x1b[0m` : s);

const bus = await connectBus(url, "shopmesh-events-tail", silentLogger(), { streams: EVENTS.streams });
console.log(dim(`${fromStart ? "all" : "new"} events on ${streams.join(", ")} at ${url} (Ctrl-C to stop)`));

function describe(type: string, data: Uint8Array): string {
  const schema = EVENTS.kind(type)?.schema;
  if (!schema) return `<${data.length} bytes of unknown type>`;
  try {
    const json = toJson(schema, fromBinary(schema, data)) as Record<string, unknown>;
    const { meta, ...rest } = json as { meta?: { orderId?: string } };
    return `${(meta?.orderId ?? "").padEnd(31)} ${JSON.stringify(rest)}`;
  } catch {
    return `<${data.length} undecodable bytes>`;
  }
}

await Promise.all(
  streams.map(async (stream) => {
    const consumer = await bus.js.consumers.get(stream, {
      deliver_policy: fromStart ? DeliverPolicy.All : DeliverPolicy.New,
    });
    for await (const m of await consumer.consume()) {
      const h = m.headers;
      const type = h?.get("ce-type") ?? "?";
      const time = (h?.get("ce-time") ?? "").slice(11, 23);
      const line = `${dim(time)} ${m.subject.padEnd(26)} ${describe(type, m.data)}`;
      if (stream === "DLQ") {
        console.log(
          `${red("DLQ")} ${line}\n    ${red("reason:")} ${h?.get("x-dlq-reason")} ${dim(`(consumer ${h?.get("x-dlq-consumer")}, ${h?.get("x-dlq-deliveries")} deliveries)`)}`,
        );
      } else {
        console.log(line);
      }
    }
  }),
);
