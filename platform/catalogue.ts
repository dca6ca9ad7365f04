/**
 * Which protobuf messages travel as events, on which stream and subject.
 * The runtime knows no event type of its own: a service hands it the
 * catalogue its contracts define (contracts/events.ts), and the bus, the
 * outbox and the consumers look types up there.
 *
 * Subjects follow one rule, `<context>.<aggregate>.<what happened>.<mode>`:
 * the stream's name in lower case, the message name's first word, the rest
 * of it in snake case, and the saga mode of the order the event belongs to
 * (its `meta.saga_mode`) — `StockReserved` of a choreographed order is
 * `inventory.stock.reserved.choreography` — or `none` for an event no saga
 * waits for (about no order, or about one but not a step of its saga). A
 * stream takes every subject under its context. The mode is in the subject so that a consumer taking
 * part in one mode only is sent only that mode's events: nats-server filters
 * a consumer by one subject (several from 2.10 on), not by a header.
 */
import { createRegistry, type DescMessage, type Registry } from "@bufbuild/protobuf";
import { SagaMode } from "../gen/shopmesh/common/v1/common_pb.js";

/** One event type. */
export interface EventKind {
  /** The protobuf type name, e.g. `shopmesh.inventory.v1.StockReserved` (the `ce-type` header). */
  readonly typeName: string;
  readonly schema: DescMessage;
  /** The NATS subject it is published on, but for its last token, the mode: `inventory.stock.reserved`. */
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

/**
 * The kinds of the stream named after `service` (`ORDER`'s for order): the only events its NATS user
 * may publish (bus-access.ts busUsers); none for a service without a stream of its own.
 */
export function ownKinds(catalogue: EventCatalogue, service: string): EventKind[] {
  return catalogue.kinds.filter((k) => k.stream.toLowerCase() === service);
}

/** The last token of an event's subject: the saga mode of its order, or `none` (UNSPECIFIED) outside a saga. */
function modeToken(mode: SagaMode): "orchestration" | "choreography" | "none" {
  if (mode === SagaMode.ORCHESTRATION) return "orchestration";
  if (mode === SagaMode.CHOREOGRAPHY) return "choreography";
  if (mode === SagaMode.UNSPECIFIED) return "none";
  throw new Error(`an event's saga mode is orchestration, choreography or unspecified, not ${mode}`);
}

/** What an event no saga waits for is about: no order, and so no saga mode (its subject ends in `none`). */
export const NO_ORDER = { orderId: "", sagaMode: SagaMode.UNSPECIFIED } as const;

/** The subject an event of `kind` about an order in `mode` is published on. */
export function eventSubject(kind: EventKind, mode: SagaMode): string {
  return `${kind.subject}.${modeToken(mode)}`;
}

/**
 * The filter subject of a consumer of `stream` that handles the types `typeNames` (of `catalogue`),
 * in `mode` only when given: one type's subject when it handles one, else the stream's events of
 * that mode; undefined for every event on the stream.
 */
function filterSubject(
  catalogue: EventCatalogue,
  stream: string,
  typeNames: readonly string[],
  mode?: SagaMode,
): string | undefined {
  const last = mode === undefined ? "*" : modeToken(mode);
  const kinds = [...new Set(typeNames)].map((t) => catalogue.kind(t));
  const [only] = kinds;
  if (kinds.length === 1 && only?.stream === stream) return `${only.subject}.${last}`;
  return mode === undefined ? undefined : `${stream.toLowerCase()}.*.*.${last}`;
}

/** Whether `filter` (NATS wildcards: `*` one token, `>` the rest; undefined: everything) selects `subject`. */
export function selects(filter: string | undefined, subject: string): boolean {
  if (filter === undefined) return true;
  const f = filter.split(".");
  const s = subject.split(".");
  for (let i = 0; i < f.length; i++) {
    if (f[i] === ">") return s.length > i;
    if (i >= s.length || (f[i] !== "*" && f[i] !== s[i])) return false;
  }
  return f.length === s.length;
}

/** The filter subject of a consumer with `spec`'s stream, handlers and mode (see {@link filterSubject}). */
export function consumerFilter(
  catalogue: EventCatalogue,
  spec: {
    readonly stream: string;
    readonly handlers: readonly (readonly [string, unknown])[];
    readonly sagaMode?: SagaMode;
  },
): string | undefined {
  return filterSubject(
    catalogue,
    spec.stream,
    spec.handlers.map(([type]) => type),
    spec.sagaMode,
  );
}

/** The subject of `schema` on `stream` but for its mode (see the module comment). */
function subjectOf(stream: string, schema: DescMessage): string {
  const subject = subjectOfName(stream, schema.name);
  if (!subject) throw new Error(`${schema.typeName}: an event is named <Aggregate><WhatHappened>, e.g. StockReserved`);
  return subject;
}

function subjectOfName(stream: string, name: string): string | undefined {
  const [aggregate, ...happened] = name.split(/(?=[A-Z])/).map((w) => w.toLowerCase());
  return aggregate && happened.length > 0 ? `${stream.toLowerCase()}.${aggregate}.${happened.join("_")}` : undefined;
}

/** A type name as the contracts make them: `shopmesh.<context>.v<n>.<Message>`. */
const TYPE_NAME = /^shopmesh\.([a-z][a-z0-9_]*)\.v[0-9]+\.([A-Z][A-Za-z0-9]*)$/;

/**
 * Whether `typeName`, unknown to `catalogue`, is an event of a newer version of its stream's
 * publisher: a type of the stream's own context, on the subject the rule above gives it, on one of
 * the catalogue's streams. Only that context's service may publish there (bus-access.ts).
 */
export function isNewerEvent(catalogue: EventCatalogue, typeName: string, stream: string, subject: string): boolean {
  const [, context, name] = TYPE_NAME.exec(typeName) ?? [];
  if (!name || context !== stream.toLowerCase() || stream === DLQ_STREAM.name) return false;
  if (!catalogue.streams.some((s) => s.name === stream)) return false;
  const base = subjectOfName(stream, name);
  return ["orchestration", "choreography", "none"].some((mode) => subject === `${base}.${mode}`);
}

/** A catalogue of the event schemas listed per stream name (e.g. `{ ORDER: [OrderPlacedSchema, ...] }`). */
export function eventCatalogue(byStream: Readonly<Record<string, readonly DescMessage[]>>): EventCatalogue {
  const kinds = Object.entries(byStream).flatMap(([stream, schemas]) =>
    schemas.map((schema) => {
      // Only a context's own service may publish on its stream (bus-access.ts): listed under another, its
      // events were refused at every publish, the relay retrying them for ever.
      const context = TYPE_NAME.exec(schema.typeName)?.[1];
      if (context !== undefined && context !== stream.toLowerCase()) {
        throw new Error(
          `${schema.typeName} is an event of ${context}: list it under ${context.toUpperCase()}, not ${stream}`,
        );
      }
      return { typeName: schema.typeName, schema, subject: subjectOf(stream, schema), stream };
    }),
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
