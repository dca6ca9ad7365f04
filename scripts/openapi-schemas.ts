/**
 * JSON Schemas of protobuf types as their proto3 JSON form reads
 * (https://protobuf.dev/programming-guides/json/), for the OpenAPI document
 * that scripts/protoc-gen-openapi.ts writes: lowerCamel JSON names, 64-bit
 * integers as strings, enums as names, well-known types in their own JSON
 * form (a Timestamp is an RFC 3339 string), repeated fields as arrays, maps
 * as objects. Every field may be absent: proto3 JSON leaves out fields that
 * hold their default value, so no property is `required`.
 * Descriptions are the proto comments.
 */
import {
  type AnyDesc,
  type DescEnum,
  type DescField,
  type DescFile,
  type DescMessage,
  type JsonObject,
  ScalarType,
} from "@bufbuild/protobuf";
import { getComments } from "@bufbuild/protoplugin";

/** Where schemas live in the document. */
export const SCHEMAS = "#/components/schemas/";

/**
 * The leading proto comment of `desc` as Markdown, "" without one: the comment's wrapped lines are
 * joined into paragraphs; blank lines, list items and indented lines keep their line breaks.
 */
export function commentOf(desc: Exclude<AnyDesc, DescFile>): string {
  // protoplugin pins its own @bufbuild/protobuf (older than ours): the descriptor types differ by name
  // only in what getComments reads (kind, parent, the file's source info), so the cast is sound.
  const text = getComments(desc as unknown as Parameters<typeof getComments>[0]).leading ?? "";
  const out: string[] = [];
  for (const line of text.split("\n").map((l) => l.replace(/^ /, "").trimEnd())) {
    const prev = out[out.length - 1];
    if (prev && line && !/^(\s|[-*+] |\d+\. )/.test(line)) out[out.length - 1] = `${prev} ${line}`;
    else out.push(line);
  }
  return out.join("\n").trim();
}

/** `schema` with `description` when there is one (an empty description is left out). */
function described(schema: JsonObject, description: string): JsonObject {
  return description ? { ...schema, description } : schema;
}

/** A scalar's proto3 JSON schema. */
function scalarSchema(scalar: ScalarType): JsonObject {
  switch (scalar) {
    case ScalarType.STRING:
      return { type: "string" };
    case ScalarType.BYTES:
      return { type: "string", contentEncoding: "base64" };
    case ScalarType.BOOL:
      return { type: "boolean" };
    case ScalarType.DOUBLE:
      return { type: "number", format: "double" };
    case ScalarType.FLOAT:
      return { type: "number", format: "float" };
    case ScalarType.UINT32:
    case ScalarType.FIXED32:
      return { type: "integer", minimum: 0, maximum: 4294967295 };
    // proto3 JSON writes 64-bit integers as decimal strings: a JSON number loses precision past 2^53.
    case ScalarType.INT64:
    case ScalarType.SINT64:
    case ScalarType.SFIXED64:
      return { type: "string", format: "int64" };
    case ScalarType.UINT64:
    case ScalarType.FIXED64:
      return { type: "string", format: "uint64" };
    default:
      return { type: "integer", format: "int32" };
  }
}

/** Well-known types with a JSON form of their own, described inline rather than as objects. */
const WELL_KNOWN: Readonly<Record<string, JsonObject>> = {
  "google.protobuf.Timestamp": { type: "string", format: "date-time" },
  "google.protobuf.Duration": { type: "string", pattern: "^-?[0-9]+(\\.[0-9]{1,9})?s$" },
  "google.protobuf.FieldMask": { type: "string" },
  "google.protobuf.Empty": { type: "object" },
  "google.protobuf.Struct": { type: "object", additionalProperties: true },
  "google.protobuf.Value": {},
  "google.protobuf.ListValue": { type: "array" },
  "google.protobuf.Any": {
    type: "object",
    properties: { "@type": { type: "string", description: "The type URL of the message the object holds." } },
    required: ["@type"],
    additionalProperties: true,
  },
};

/** The inline schema of a well-known type (wrappers included: their value, or null), or undefined. */
export function wellKnownSchema(message: DescMessage): JsonObject | undefined {
  const known = WELL_KNOWN[message.typeName];
  if (known) return known;
  const value = message.fields[0];
  if (/^google\.protobuf\.[A-Za-z0-9]+Value$/.test(message.typeName) && value?.fieldKind === "scalar") {
    const s = scalarSchema(value.scalar);
    return { ...s, type: [String(s.type), "null"] };
  }
  return undefined;
}

/**
 * The named schemas a document refers to, collected as they are referred
 * to (`ref`) and described once each (`schemas`): messages and enums of the
 * routes, and everything they reach.
 */
export class SchemaSet {
  private readonly wanted = new Map<string, DescMessage | DescEnum>();

  /** A reference to `desc`'s schema (inline for well-known types). */
  ref(desc: DescMessage | DescEnum): JsonObject {
    if (desc.kind === "message") {
      const wkt = wellKnownSchema(desc);
      if (wkt) return wkt;
    }
    this.wanted.set(desc.typeName, desc);
    return { $ref: `${SCHEMAS}${desc.typeName}` };
  }

  /** The schema of one value of `field` (an element, for a list or map), without its description. */
  private valueSchema(field: DescField): JsonObject {
    switch (field.fieldKind) {
      case "scalar":
        return scalarSchema(field.scalar);
      case "enum":
        return this.ref(field.enum);
      case "message":
        return this.ref(field.message);
      case "list":
        return field.listKind === "scalar"
          ? scalarSchema(field.scalar)
          : this.ref(field.listKind === "enum" ? field.enum : field.message);
      case "map":
        return field.mapKind === "scalar"
          ? scalarSchema(field.scalar)
          : this.ref(field.mapKind === "enum" ? field.enum : field.message);
    }
  }

  /** `field`'s schema: its value, an array of them, or an object of them (map keys are JSON strings). */
  field(field: DescField): JsonObject {
    const value = this.valueSchema(field);
    const shaped =
      field.fieldKind === "list"
        ? { type: "array", items: value }
        : field.fieldKind === "map"
          ? { type: "object", additionalProperties: value }
          : value;
    return described(shaped, commentOf(field));
  }

  /** `message`'s object schema, leaving out the fields named in `omit` (bound elsewhere, e.g. by the path). */
  message(message: DescMessage, omit: ReadonlySet<string> = new Set()): JsonObject {
    const properties: JsonObject = {};
    for (const f of message.fields) if (!omit.has(f.name)) properties[f.jsonName] = this.field(f);
    const oneofs = message.oneofs.map((o) => `At most one of ${o.fields.map((f) => `\`${f.jsonName}\``).join(", ")}.`);
    return described({ type: "object", properties }, [commentOf(message), ...oneofs].filter(Boolean).join("\n\n"));
  }

  /** An enum as proto3 JSON writes it: its value names, each explained in the description. */
  private enumSchema(e: DescEnum): JsonObject {
    const values = e.values.map(
      (v) => `- \`${v.name}\`${commentOf(v) ? `: ${commentOf(v).replace(/\n+/g, " ")}` : ""}`,
    );
    return described(
      { type: "string", enum: e.values.map((v) => v.name) },
      [commentOf(e), values.join("\n")].filter(Boolean).join("\n\n"),
    );
  }

  /** Every schema referred to so far (and what those refer to), and `fixed` ones, by name in byte order. */
  schemas(fixed: Readonly<Record<string, JsonObject>> = {}): JsonObject {
    const out = new Map<string, JsonObject>(Object.entries(fixed));
    // Describing a message may want more schemas: go on until a round adds none.
    for (;;) {
      const todo = [...this.wanted.values()].filter((d) => !out.has(d.typeName));
      if (todo.length === 0) break;
      for (const d of todo) out.set(d.typeName, d.kind === "enum" ? this.enumSchema(d) : this.message(d));
    }
    const names = [...out.keys()].sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)));
    return Object.fromEntries(names.map((n) => [n, out.get(n) as JsonObject]));
  }
}
