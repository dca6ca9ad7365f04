/**
 * The request message of a REST call, built from its path variables, query
 * and body as grpc-gateway and Envoy's transcoder build it (rest.ts matches
 * the route), and checked as proto3 JSON. A refusal is INVALID_ARGUMENT
 * naming the field. One caused by a value of the path or the query — an
 * unknown parameter, a boolean that is not one, an integer field given
 * "abc", a Timestamp that is not one — names it as the client wrote it (a
 * path variable by its dotted field path), in the message and in a
 * google.rpc.BadRequest detail, quoting at most the first 100 characters of
 * what the client sent; one caused by the body is told as json-errors.ts
 * words protobuf-es's error, its field named in a BadRequest detail too. Numbers in the path or the
 * query are decimal, as grpc-gateway reads them: integers with an optional
 * sign (not 0x10 or 1e3), floating-point numbers with an optional exponent
 * (not 0x10, nor with spaces around).
 */
import {
  type DescEnum,
  type DescField,
  type DescMessage,
  fromJson,
  type JsonObject,
  type JsonValue,
  type Message,
  ScalarType,
} from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { fieldNamed, fieldPath, type RestRoute } from "../contracts/http-rules.js";
import { BadRequestSchema } from "../gen/google/rpc/error_details_pb.js";
import { clipText } from "../platform/validate.js";
import { headerKey } from "./idempotency-key.js";
import { jsonError } from "./json-errors.js";
import { decodeSegment, type RestMatch } from "./rest.js";

/** A value the client wrote as text — a path variable or a query parameter — as it went into the JSON. */
interface TextValue {
  /** As the client wrote it: the query parameter's key, the path variable's field path. */
  readonly name: string;
  readonly path: readonly DescField[];
  readonly text: string;
  readonly value: JsonValue;
  readonly append: boolean;
}

/** The text values of each request JSON {@link requestJson} built, for {@link checkRequest} to name the one refused. */
const textValues = new WeakMap<JsonObject, readonly TextValue[]>();

/** Longest client text an error quotes: a query value may be 60 KB of it. */
const MAX_QUOTED = 100;
/** `text` as an error quotes it: in JSON quotes, cut to MAX_QUOTED characters. */
const quoted = (text: string) => JSON.stringify(clipText(text, MAX_QUOTED));

/**
 * INVALID_ARGUMENT naming `field` (cut to MAX_QUOTED) in the message (`field: why`) and in a
 * google.rpc.BadRequest detail whose description is `why` alone, as services' InvalidArgumentError does.
 */
function badRequest(name: string, why: string): ConnectError {
  const field = clipText(name, MAX_QUOTED);
  const violation = { desc: BadRequestSchema, value: { fieldViolations: [{ field, description: why }] } };
  return new ConnectError(`${field}: ${why}`, Code.InvalidArgument, undefined, [violation]);
}

/** An integer as the path or the query may write it. */
const DECIMAL = /^[+-]?\d+$/;
/** A floating-point number as the path or the query may write it (NaN and the infinities aside). */
const FLOATING = /^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/;

/** The well-known wrapper types: a message of one scalar field, `value`, written as that scalar. */
const WRAPPERS = new Set(
  ["Double", "Float", "Int64", "UInt64", "Int32", "UInt32", "Bool", "String", "Bytes"].map(
    (t) => `google.protobuf.${t}Value`,
  ),
);

/** The scalar field a wrapper type (google.protobuf.Int32Value...) wraps; undefined for any other message. */
const wrappedBy = (message: DescMessage | undefined) =>
  message && WRAPPERS.has(message.typeName) ? message.fields[0] : undefined;

/** The JSON value of one text value (path or query) for a singular field, as proto3 JSON reads it. */
function leafJson(f: DescField, text: string, name: string): JsonValue {
  const { scalar, enumType, message } = elementOf(f);
  if (enumType) {
    // By name or by the number of a value (as grpc-gateway and Envoy's transcoder read a query enum).
    const number = DECIMAL.test(text) ? Number(text) : undefined;
    if (!enumType.values.some((v) => (number === undefined ? v.name === text : v.number === number))) {
      throw badRequest(name, `${quoted(text)} is not a value of ${enumType.typeName}`);
    }
    return number ?? text;
  }
  if (scalar === undefined) {
    // A wrapper (google.protobuf.BoolValue...) is its scalar, read as that scalar is (grpc-gateway's query.go).
    const wrapped = wrappedBy(message);
    if (wrapped) return leafJson(wrapped, text, name);
    // Well-known types whose JSON form is a string (Timestamp, Duration, FieldMask) take it as is.
    if (message?.typeName.startsWith("google.protobuf.")) return text;
    throw badRequest(name, "is a message: send it in the request body");
  }
  switch (scalar) {
    case ScalarType.BOOL:
      if (text !== "true" && text !== "false") throw badRequest(name, `expected true or false, got ${quoted(text)}`);
      return text === "true";
    case ScalarType.STRING:
    case ScalarType.BYTES:
      return text;
    case ScalarType.INT64:
    case ScalarType.UINT64:
    case ScalarType.SINT64:
    case ScalarType.FIXED64:
    case ScalarType.SFIXED64:
      if (!DECIMAL.test(text)) throw badRequest(name, `${quoted(text)} is not a valid ${typeOf(f)}`);
      return text.replace(/^\+/, "");
    case ScalarType.FLOAT:
    case ScalarType.DOUBLE:
      if (["NaN", "Infinity", "-Infinity"].includes(text)) return text;
      if (!FLOATING.test(text)) throw badRequest(name, `${quoted(text)} is not a valid ${typeOf(f)}`);
      // Out of range (1e999) stays text, for fromJson to refuse.
      return Number.isFinite(Number(text)) ? Number(text) : text;
    default:
      // 32-bit integers (their range is fromJson's to check).
      if (!DECIMAL.test(text)) throw badRequest(name, `${quoted(text)} is not a valid ${typeOf(f)}`);
      return Number(text);
  }
}

/** Sets `value` at the field path in a JSON object (JSON names), creating nested objects. */
function setPath(obj: JsonObject, path: readonly DescField[], value: JsonValue, append: boolean): void {
  // The body may name a field either way (proto3 JSON takes both): go on under the name it used.
  const keyOf = (o: JsonObject, f: DescField) =>
    o[f.jsonName] === undefined && o[f.name] !== undefined ? f.name : f.jsonName;
  let o = obj;
  for (const f of path.slice(0, -1)) {
    const key = keyOf(o, f);
    const next = o[key];
    if (next === undefined || next === null) o[key] = {};
    else if (typeof next !== "object" || Array.isArray(next)) throw badRequest(f.name, "is not a message");
    o = o[key] as JsonObject;
  }
  const leaf = path[path.length - 1] as DescField;
  const key = keyOf(o, leaf);
  if (append) {
    const prior = o[key];
    o[key] = Array.isArray(prior) ? [...prior, value] : [value];
  } else o[key] = value;
}

/** `s` percent-decoded as a form field ('+' a space); undefined when it is not percent-encoded UTF-8. */
const formDecode = (s: string) => decodeSegment(s.replaceAll("+", " "));

/**
 * The query's name/value pairs as URLSearchParams reads them, but a name or value that is not
 * percent-encoded UTF-8 is refused naming it: URLSearchParams would read "%zz" as text and %FF as
 * U+FFFD, a value the client never sent (grpc-gateway's url.ParseQuery refuses a malformed escape).
 */
function queryPairs(raw: string): [string, string][] {
  const pairs: [string, string][] = [];
  for (const part of raw.split("&")) {
    if (part === "") continue;
    const eq = part.indexOf("=");
    const rawName = eq < 0 ? part : part.slice(0, eq);
    const name = formDecode(rawName);
    if (name === undefined) throw badRequest(rawName, "is not valid percent-encoded UTF-8 in the query");
    const value = formDecode(eq < 0 ? "" : part.slice(eq + 1));
    if (value === undefined) throw badRequest(name, "is not valid percent-encoded UTF-8 in the query");
    pairs.push([name, value]);
  }
  return pairs;
}

/** The value at a field path of a JSON object, or undefined. */
function getPath(obj: JsonObject, path: readonly DescField[]): JsonValue | undefined {
  let v: JsonValue | undefined = obj;
  for (const f of path) {
    if (v === null || typeof v !== "object" || Array.isArray(v)) return undefined;
    v = (v as JsonObject)[f.jsonName] ?? (v as JsonObject)[f.name];
  }
  return v;
}

/** What the request carries besides the route: its query, body and Idempotency-Key header. */
export interface RestInput {
  /** The raw query: everything after the first `?` ("" for none). */
  readonly query: string;
  /** The parsed JSON body, or undefined when there was none. */
  readonly body: JsonValue | undefined;
  readonly idempotencyKey: string | undefined;
}

/**
 * The request message, as proto3 JSON, for a matched route: the body (all
 * of it, or one field), then the query (only what neither the path nor the
 * body binds), then the path variables. A body value that disagrees with the
 * path is refused rather than silently replaced: both are the client's words.
 */
export function requestJson(m: RestMatch, input: RestInput): JsonObject {
  const { route } = m;
  const message = route.method.input;
  if (m.malformed) throw badRequest(dottedName(m.malformed.path), "is not valid percent-encoded UTF-8 in the path");
  let obj: JsonObject = {};
  const texts: TextValue[] = [];
  if (route.body === "*") {
    if (input.body !== undefined) {
      if (input.body === null || typeof input.body !== "object" || Array.isArray(input.body)) {
        throw new ConnectError("the request body must be a JSON object; no field can be named", Code.InvalidArgument);
      }
      obj = { ...input.body };
    }
  } else if (route.body) {
    if (input.body !== undefined) obj[route.body.jsonName] = input.body;
  } else if (input.body !== undefined) {
    throw new ConnectError(`${route.httpMethod} ${route.template} takes no request body`, Code.InvalidArgument);
  }
  const bound = new Set(route.variables.map((v) => dottedName(v.path)));
  if (route.body && route.body !== "*") bound.add(route.body.name);
  if (route.body !== "*") {
    const seen = new Set<string>();
    for (const [key, text] of queryPairs(input.query)) {
      const path = fieldPath(message, key);
      const leaf = path?.[path.length - 1];
      if (!path || !leaf) throw badRequest(key, `is not a field of ${message.typeName}`);
      const dotted = dottedName(path);
      // A well-known type is given whole (`since=2026-01-01T00:00:00Z`), not by its inner fields.
      const whole = path.slice(0, -1).find((f) => f.message?.typeName.startsWith("google.protobuf."));
      if (whole) {
        const name = dottedName(path.slice(0, path.indexOf(whole) + 1));
        throw badRequest(key, `is inside ${name}, a ${whole.message?.typeName}: give ${name} whole`);
      }
      if ([...bound].some((b) => dotted === b || dotted.startsWith(`${b}.`))) {
        throw badRequest(key, "is set by the path or the body; it cannot be a query parameter too");
      }
      if (leaf.fieldKind === "map") throw badRequest(key, "is a map: send it in the request body");
      if (leaf.fieldKind !== "list") {
        if (seen.has(dotted)) throw badRequest(key, "is given more than once; it takes one value");
        seen.add(dotted);
      }
      const value = leafJson(leaf, text, key);
      const append = leaf.fieldKind === "list";
      setPath(obj, path, value, append);
      texts.push({ name: key, path, text, value, append });
    }
  } else if (queryPairs(input.query).length > 0) {
    throw new ConnectError(
      `${route.httpMethod} ${route.template} takes its fields in the body, not the query`,
      Code.InvalidArgument,
    );
  }
  for (const [v, text] of m.values) {
    const leaf = v.path[v.path.length - 1] as DescField;
    const name = dottedName(v.path);
    const value = leafJson(leaf, text, name);
    const prior = getPath(obj, v.path);
    if (prior !== undefined && prior !== value && String(prior) !== text) {
      const said = typeof prior === "string" ? quoted(prior) : clipText(JSON.stringify(prior), MAX_QUOTED);
      throw badRequest(name, `the body says ${said} and the path ${quoted(text)}`);
    }
    setPath(obj, v.path, value, false);
    texts.push({ name, path: v.path, text, value, append: false });
  }
  // IETF draft-ietf-httpapi-idempotency-key-header: the header is the request's idempotency key.
  const keyField = fieldNamed(message, "idempotency_key");
  if (input.idempotencyKey !== undefined && keyField?.fieldKind === "scalar" && keyField.scalar === ScalarType.STRING) {
    const key = headerKey(input.idempotencyKey);
    if (key === undefined)
      throw badRequest("idempotency_key", "the Idempotency-Key header is neither a bare key nor one quoted string");
    for (const name of [keyField.jsonName, keyField.name]) {
      const inBody = obj[name];
      if (inBody !== undefined && inBody !== "" && inBody !== key) {
        throw badRequest("idempotency_key", "the Idempotency-Key header and the body disagree");
      }
    }
    delete obj[keyField.name];
    obj[keyField.jsonName] = key;
  }
  textValues.set(obj, texts);
  return obj;
}

/** `json` decoded as the route's input (proto3 JSON, unknown fields refused); the error names the field. */
export function checkRequest(route: RestRoute, json: JsonObject): Message {
  try {
    return fromJson(route.method.input, json, { ignoreUnknownFields: false });
  } catch (err) {
    throw refusedText(route, json) ?? jsonError(route.method.input, (err as Error).message);
  }
}

/**
 * The first value of the path or the query that proto3 JSON refuses on its own, named as the client
 * wrote it; undefined when the refusal is the body's (its message then names the field, not its path).
 * Run only once the whole request was refused.
 */
function refusedText(route: RestRoute, json: JsonObject): ConnectError | undefined {
  for (const t of textValues.get(json) ?? []) {
    const leaf = t.path[t.path.length - 1] as DescField;
    // A string takes any text (enums, booleans and integers' form were checked as they were read).
    if (elementOf(leaf).scalar === ScalarType.STRING) continue;
    const alone: JsonObject = {};
    setPath(alone, t.path, t.value, t.append);
    try {
      fromJson(route.method.input, alone, { ignoreUnknownFields: false });
    } catch {
      return badRequest(t.name, `${quoted(t.text)} is not a valid ${typeOf(leaf)}`);
    }
  }
  return undefined;
}

/** A field path as the client writes it: `filter.since`. */
const dottedName = (path: readonly DescField[]) => path.map((f) => f.name).join(".");

/** The proto type a field's values have: `int32`, `google.protobuf.Timestamp`, an enum's name (a wrapper's scalar's). */
function typeOf(f: DescField): string {
  const { scalar, enumType, message } = elementOf(f);
  const wrapped = wrappedBy(message);
  if (wrapped) return typeOf(wrapped);
  return scalar !== undefined
    ? (ScalarType[scalar] ?? "value").toLowerCase()
    : (enumType?.typeName ?? message?.typeName ?? "value");
}

/** What one value of a singular or repeated field is: a scalar, an enum or a message (nothing for a map). */
function elementOf(f: DescField): { scalar?: ScalarType; enumType?: DescEnum; message?: DescMessage } {
  const kind = f.fieldKind === "list" ? f.listKind : f.fieldKind;
  if (kind === "scalar" && f.scalar !== undefined) return { scalar: f.scalar };
  if (kind === "enum" && f.enum) return { enumType: f.enum };
  if (kind === "message" && f.message) return { message: f.message };
  return {};
}
