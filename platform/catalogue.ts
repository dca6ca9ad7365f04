/**
 * Which protobuf messages travel as events, on which stream and subject.
 * The runtime knows no event type of its own: a service hands it the
 * catalogue its contracts define (contracts/events.ts), and the bus, the
 * outbox and the consumers look types up there.
 *
 * Subjects follow one rule, `<context>.<aggregate>.<what happened>`: the
 * stream's name in lower case, the message name's first word, and the rest
 * of it in snake case — `StockReserved` on INVENTORY is
 * `inventory.stock.reserved`. A stream takes every subject under its context.
 */
import { createRegistry, type DescMessage, type Registry } from "@bufbuild/protobuf";

/** One event type. */
export interface EventKind {
  /** The protobuf type name, e.g. `shopmesh.inventory.v1.StockReserved` (the `ce-type` header). */
  readonly typeName: string;
  readonly schema: DescMessage;
  /** The NATS subject it is published on. */
  readonly subject: string;
  /** The JetStream stream that keeps it. */
  readonly stream: string;
}

/** A JetStream stream and the subjects it takes. */
export interface StreamSpec {
  readonly name: string;
  readonly subjects: readonly string[];
}

/** The dead-letter stream: the runtime's own, in every catalogue. */
export const DLQ_STREAM: StreamSpec = { name: "DLQ", subjects: ["dlq.>"] };

/** A service's view of the events on the bus. */
export interface EventCatalogue {
  /** Every stream, the dead-letter stream included. */
  readonly streams: readonly StreamSpec[];
  /** Every event type. */
  readonly kinds: readonly EventKind[];
  /** Schemas by type name, for decoding. */
  readonly registry: Registry;
  /** The event type named `typeName`, or undefined for anything else. */
  kind(typeName: string): EventKind | undefined;
}

/** The subject of `schema` on `stream` (see the module comment). */
export function subjectOf(stream: string, schema: DescMessage): string {
  const words = schema.name.split(/(?=[A-Z])/).map((w) => w.toLowerCase());
  const [aggregate, ...happened] = words;
  if (!aggregate || happened.length === 0) {
    throw new Error(`${schema.typeName}: an event is named <Aggregate><WhatHappened>, e.g. StockReserved`);
  }
  return `${stream.toLowerCase()}.${aggregate}.${happened.join("_")}`;
}

/** A catalogue of the event schemas listed per stream name (e.g. `{ ORDER: [OrderPlacedSchema, ...] }`). */
export function eventCatalogue(byStream: Readonly<Record<string, readonly DescMessage[]>>): EventCatalogue {
  const kinds = Object.entries(byStream).flatMap(([stream, schemas]) =>
    schemas.map((schema) => ({ typeName: schema.typeName, schema, subject: subjectOf(stream, schema), stream })),
  );
  const byType = new Map(kinds.map((k) => [k.typeName, k]));
  if (byType.size !== kinds.length) throw new Error("an event type is listed twice in the catalogue");
  const streams = [
    ...Object.keys(byStream).map((name) => ({ name, subjects: [`${name.toLowerCase()}.>`] })),
    DLQ_STREAM,
  ];
  return {
    streams,
    kinds,
    registry: createRegistry(...kinds.map((k) => k.schema)),
    kind: (typeName) => byType.get(typeName),
  };
}
