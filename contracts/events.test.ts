/** The catalogue puts every event on the subject and stream it has always had: the wire does not move. */
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import type { GenFile } from "@bufbuild/protobuf/codegenv2";
import { describe, expect, it } from "vitest";
import { StockReservedSchema } from "../gen/shopmesh/inventory/v1/events_pb.js";
import { eventCatalogue } from "../platform/catalogue.js";
import { ROOT } from "../scripts/layout.js";
import { EVENTS } from "./events.js";

describe("EVENTS", () => {
  it("names each event's subject and stream by the one rule", () => {
    expect(Object.fromEntries(EVENTS.kinds.map((k) => [k.typeName, `${k.stream} ${k.subject}`]))).toEqual({
      "shopmesh.order.v1.OrderPlaced": "ORDER order.order.placed",
      "shopmesh.order.v1.OrderConfirmed": "ORDER order.order.confirmed",
      "shopmesh.order.v1.OrderCancelled": "ORDER order.order.cancelled",
      "shopmesh.order.v1.OrderRefundSettled": "ORDER order.order.refund_settled",
      "shopmesh.inventory.v1.StockReserved": "INVENTORY inventory.stock.reserved",
      "shopmesh.inventory.v1.StockRejected": "INVENTORY inventory.stock.rejected",
      "shopmesh.inventory.v1.StockReleased": "INVENTORY inventory.stock.released",
      "shopmesh.payment.v1.PaymentSucceeded": "PAYMENT payment.payment.succeeded",
      "shopmesh.payment.v1.PaymentFailed": "PAYMENT payment.payment.failed",
      "shopmesh.payment.v1.PaymentRefunded": "PAYMENT payment.payment.refunded",
    });
    expect(EVENTS.streams).toEqual([
      { name: "ORDER", subjects: ["order.>"] },
      { name: "INVENTORY", subjects: ["inventory.>"] },
      { name: "PAYMENT", subjects: ["payment.>"] },
      { name: "DLQ", subjects: ["dlq.>"] },
    ]);
    expect(EVENTS.kind("shopmesh.order.v1.Order")).toBeUndefined();
    expect(EVENTS.registry.getMessage("shopmesh.payment.v1.PaymentFailed")?.typeName).toBe(
      "shopmesh.payment.v1.PaymentFailed",
    );
  });

  it("holds every event of every events.proto, on its context's stream: one left out was refused only when published (a handler failing for ever) or never handled", async () => {
    const gen = join(ROOT, "gen", "shopmesh");
    const events: string[] = [];
    for (const context of readdirSync(gen)) {
      if (!existsSync(join(gen, context, "v1", "events_pb.ts"))) continue;
      const module: Record<string, unknown> = await import(join(gen, context, "v1", "events_pb.js"));
      const files = Object.values(module).filter((v): v is GenFile => (v as GenFile)?.kind === "file");
      for (const m of files.flatMap((f) => f.messages)) {
        if (m.fields.some((f) => f.name === "meta" && f.message?.typeName === "shopmesh.common.v1.EventMeta")) {
          expect(EVENTS.kind(m.typeName)?.stream, `list ${m.typeName} in EVENTS (contracts/events.ts)`).toBe(
            context.toUpperCase(),
          );
          events.push(m.typeName);
        }
      }
    }
    expect(events.sort()).toEqual(EVENTS.kinds.map((k) => k.typeName).sort());
  });

  it("refuses an event listed under another context's stream: its publisher's NATS user may not publish there", () => {
    expect(() => eventCatalogue({ ORDER: [StockReservedSchema] })).toThrow(
      "shopmesh.inventory.v1.StockReserved is an event of inventory: list it under INVENTORY, not ORDER",
    );
  });

  it("docs/events.md's table of streams names each event stream's subjects and events", () => {
    const doc = readFileSync(join(ROOT, "docs", "events.md"), "utf8");
    const rows = [...doc.matchAll(/^\| `([A-Z]+)` \| `([^`]+)` \| [^|]+ \| ([^|]+) \|$/gm)];
    const streams = EVENTS.streams.filter((s) => s.name !== "DLQ");
    expect(
      Object.fromEntries(rows.filter(([, name]) => name !== "DLQ").map(([, n, s, e]) => [n, `${s} ${e?.trim()}`])),
      "docs/events.md's table of streams: a new event's name in its stream's row, a new stream's row",
    ).toEqual(
      Object.fromEntries(
        streams.map((s) => [
          s.name,
          `${s.subjects.join(", ")} ${EVENTS.kinds
            .filter((k) => k.stream === s.name)
            .map((k) => k.schema.name)
            .join(", ")}`,
        ]),
      ),
    );
  });
});
