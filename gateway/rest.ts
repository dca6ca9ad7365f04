/**
 * REST routes from the contracts: each public RPC's `google.api.http`
 * annotation (as grpc-gateway and Envoy's transcoder read it) becomes an HTTP
 * route — `GET /v1/products/{product_id}`, `POST /v1/orders/{order_id}:cancel`.
 * This module is the pure part: path templates, building the request message
 * from path, query and body, and shaping answers (response_body, errors as
 * google.rpc.Status JSON, server streams as newline-delimited JSON).
 * dispatch.ts runs the result through the same pipeline as every other
 * protocol: limits, authentication, access log, the Connect handler and its
 * upstream.
 * Routes come from contracts/http-rules.ts. A variable's value is its
 * segments joined by "/"; a single-segment value is percent-decoded in full
 * (`%2F` becomes "/"), a multi-segment one segment by segment.
 */
import {
  type DescField,
  type DescMethod,
  fromBinary,
  fromJson,
  type JsonObject,
  type JsonValue,
  type Message,
  ScalarType,
  toJson,
} from "@bufbuild/protobuf";
import { base64Decode } from "@bufbuild/protobuf/wire";
import { Code, ConnectError } from "@connectrpc/connect";
import { codeFromString, codeToHttpStatus } from "@connectrpc/connect/protocol-connect";
import {
  fieldNamed,
  fieldPath,
  type RestRoute,
  routesOf,
  type Segment,
  type Variable,
} from "../contracts/http-rules.js";
import { http as httpRule } from "../gen/google/api/annotations_pb.js";
import { BadRequestSchema } from "../gen/google/rpc/error_details_pb.js";
import { ERROR_DETAILS } from "../platform/index.js";
import { describeJsonError } from "./json-errors.js";

export type { RestRoute } from "../contracts/http-rules.js";

/** A request matched to a route, with its path variables' values. */
export interface RestMatch {
  readonly route: RestRoute;
  readonly values: ReadonlyMap<Variable, string>;
  /** A path variable whose segments are not valid percent-encoded UTF-8 (refused, naming it, when the request is built). */
  readonly malformed?: Variable;
}

/** Percent-decodes one path segment; undefined when malformed. */
function decodeSegment(s: string): string | undefined {
  try {
    return decodeURIComponent(s);
  } catch {
    return undefined;
  }
}

/** Matches `path` (without its query) against `route`; undefined when it does not match. */
export function matchRoute(route: RestRoute, path: string): RestMatch | undefined {
  let p = path;
  if (route.verb) {
    if (!p.endsWith(`:${route.verb}`)) return undefined;
    p = p.slice(0, -(route.verb.length + 1));
  }
  if (!p.startsWith("/")) return undefined;
  const raw = p.slice(1).split("/");
  const { segments } = route;
  const last = segments[segments.length - 1];
  const deep = last !== undefined && "wild" in last && last.wild === "**";
  if (deep ? raw.length < segments.length - 1 : raw.length !== segments.length) return undefined;
  for (let i = 0; i < segments.length; i++) {
    const s = segments[i] as Segment;
    if ("wild" in s && s.wild === "**") break;
    const r = raw[i] ?? "";
    if (r === "") return undefined;
    // Literals compare as sent: the path a proxy routes on is the path matched here.
    if ("literal" in s && r !== s.literal) return undefined;
  }
  const values = new Map<Variable, string>();
  let malformed: Variable | undefined;
  for (const v of route.variables) {
    const taken = v.length < 0 ? raw.slice(v.start) : raw.slice(v.start, v.start + v.length);
    const decoded = taken.length === 1 ? [decodeSegment(taken[0] ?? "")] : taken.map(decodeSegment);
    if (decoded.some((d) => d === undefined)) malformed ??= v;
    values.set(v, decoded.join("/"));
  }
  return malformed ? { route, values, malformed } : { route, values };
}

/** The REST routes of a set of methods, matched most specific first. */
export class RestRouter {
  readonly routes: readonly RestRoute[];
  private readonly prefixes: ReadonlySet<string>;

  constructor(methods: Iterable<DescMethod>) {
    const all = [...methods].flatMap((m) => routesOf(m, httpRule));
    // A verb route before a plain one (`/v1/orders/x:watch` is not order "x:watch"), then more literals first.
    const literals = (r: RestRoute) => r.segments.filter((s) => "literal" in s).length;
    this.routes = all.sort((a, b) => Number(!!b.verb) - Number(!!a.verb) || literals(b) - literals(a));
    this.prefixes = new Set(
      all.flatMap((r) => (r.segments[0] && "literal" in r.segments[0] ? [r.segments[0].literal] : [])),
    );
  }

  /** Whether `path` is in the REST namespace (its first segment starts a template), routed or not. */
  owns(path: string): boolean {
    const first = path.split("/", 2)[1] ?? "";
    return this.prefixes.has(first) || this.prefixes.has(decodeSegment(first) ?? "");
  }

  /** The route for `httpMethod` and `path`, or the methods the path takes (405), or nothing (404). */
  match(httpMethod: string, path: string): RestMatch | { allowed: string[] } | undefined {
    const allowed = new Set<string>();
    let verbMatched = false;
    for (const route of this.routes) {
      // A path that ends in a route's verb is that verb's, whatever the method: `GET /v1/orders/x:cancel`
      // is 405, not order "x:cancel" (verb routes come first).
      if (!route.verb && verbMatched) break;
      const m = matchRoute(route, path);
      if (!m) continue;
      verbMatched ||= route.verb !== "";
      // HEAD is a GET without the body, for answers that have an end (not a stream's).
      const head = httpMethod === "HEAD" && route.httpMethod === "GET" && route.method.methodKind === "unary";
      if (route.httpMethod === httpMethod || head) return m;
      allowed.add(route.httpMethod);
    }
    return allowed.size ? { allowed: [...allowed] } : undefined;
  }
}

/** INVALID_ARGUMENT naming `field`, in the message and in a google.rpc.BadRequest detail. */
function badRequest(field: string, why: string): ConnectError {
  const description = `${field}: ${why}`;
  const violation = { desc: BadRequestSchema, value: { fieldViolations: [{ field, description }] } };
  return new ConnectError(description, Code.InvalidArgument, undefined, [violation]);
}

/** The JSON value of one text value (path or query) for a singular field, as proto3 JSON reads it. */
function leafJson(f: DescField, text: string, name: string): JsonValue {
  const enumType =
    f.fieldKind === "enum" ? f.enum : f.fieldKind === "list" && f.listKind === "enum" ? f.enum : undefined;
  if (enumType) {
    if (/^-?\d+$/.test(text)) return Number(text);
    if (!enumType.values.some((v) => v.name === text)) {
      throw badRequest(name, `${JSON.stringify(text)} is not a value of ${enumType.typeName}`);
    }
    return text;
  }
  const scalar =
    f.fieldKind === "scalar" ? f.scalar : f.fieldKind === "list" && f.listKind === "scalar" ? f.scalar : undefined;
  if (scalar === undefined) {
    const wkt =
      f.fieldKind === "message"
        ? f.message.typeName
        : f.fieldKind === "list" && f.listKind === "message"
          ? f.message.typeName
          : "";
    // Well-known types whose JSON form is a string (Timestamp, Duration, FieldMask, wrappers) take it as is.
    if (wkt.startsWith("google.protobuf.")) return text;
    throw badRequest(name, "is a message: send it in the request body");
  }
  switch (scalar) {
    case ScalarType.BOOL:
      if (text !== "true" && text !== "false")
        throw badRequest(name, `expected true or false, got ${JSON.stringify(text)}`);
      return text === "true";
    case ScalarType.STRING:
    case ScalarType.BYTES:
    case ScalarType.INT64:
    case ScalarType.UINT64:
    case ScalarType.SINT64:
    case ScalarType.FIXED64:
    case ScalarType.SFIXED64:
      return text;
    case ScalarType.FLOAT:
    case ScalarType.DOUBLE:
      return ["NaN", "Infinity", "-Infinity"].includes(text)
        ? text
        : Number.isFinite(Number(text)) && text.trim() !== ""
          ? Number(text)
          : text;
    default: {
      // 32-bit integers: a JSON number when the text is one, else left for fromJson to refuse.
      return /^-?\d+$/.test(text) ? Number(text) : text;
    }
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
  readonly query: URLSearchParams;
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
  if (m.malformed) {
    const leaf = m.malformed.path[m.malformed.path.length - 1] as DescField;
    throw badRequest(leaf.name, "is not valid percent-encoded UTF-8 in the path");
  }
  let obj: JsonObject = {};
  if (route.body === "*") {
    if (input.body !== undefined) {
      if (input.body === null || typeof input.body !== "object" || Array.isArray(input.body)) {
        throw new ConnectError("the request body must be a JSON object", Code.InvalidArgument);
      }
      obj = { ...input.body };
    }
  } else if (route.body) {
    if (input.body !== undefined) obj[route.body.jsonName] = input.body;
  } else if (input.body !== undefined) {
    throw new ConnectError(`${route.httpMethod} ${route.template} takes no request body`, Code.InvalidArgument);
  }
  const bound = new Set(route.variables.map((v) => v.path.map((f) => f.name).join(".")));
  if (route.body && route.body !== "*") bound.add(route.body.name);
  if (route.body !== "*") {
    const seen = new Set<string>();
    for (const [key, text] of input.query) {
      const path = fieldPath(message, key);
      const leaf = path?.[path.length - 1];
      if (!path || !leaf) throw badRequest(key, `is not a field of ${message.typeName}`);
      const dotted = path.map((f) => f.name).join(".");
      if ([...bound].some((b) => dotted === b || dotted.startsWith(`${b}.`))) {
        throw badRequest(key, "is set by the path or the body; it cannot be a query parameter too");
      }
      if (leaf.fieldKind === "map") throw badRequest(key, "is a map: send it in the request body");
      if (leaf.fieldKind !== "list") {
        if (seen.has(dotted)) throw badRequest(key, "is given more than once; it takes one value");
        seen.add(dotted);
      }
      setPath(obj, path, leafJson(leaf, text, key), leaf.fieldKind === "list");
    }
  } else if ([...input.query.keys()].length > 0) {
    throw new ConnectError(
      `${route.httpMethod} ${route.template} takes its fields in the body, not the query`,
      Code.InvalidArgument,
    );
  }
  for (const [v, text] of m.values) {
    const leaf = v.path[v.path.length - 1] as DescField;
    const value = leafJson(leaf, text, leaf.name);
    const prior = getPath(obj, v.path);
    if (prior !== undefined && prior !== value && String(prior) !== text) {
      throw badRequest(leaf.name, `the body says ${JSON.stringify(prior)} and the path ${JSON.stringify(text)}`);
    }
    setPath(obj, v.path, value, false);
  }
  // IETF draft-ietf-httpapi-idempotency-key-header: the header is the request's idempotency key.
  const keyField = fieldNamed(message, "idempotency_key");
  if (input.idempotencyKey !== undefined && keyField?.fieldKind === "scalar" && keyField.scalar === ScalarType.STRING) {
    for (const name of [keyField.jsonName, keyField.name]) {
      const inBody = obj[name];
      if (inBody !== undefined && inBody !== "" && inBody !== input.idempotencyKey) {
        throw badRequest("idempotency_key", "the Idempotency-Key header and the body disagree");
      }
    }
    delete obj[keyField.name];
    obj[keyField.jsonName] = input.idempotencyKey;
  }
  return obj;
}

/** `json` decoded as the route's input (proto3 JSON, unknown fields refused); the error names the field. */
export function checkRequest(route: RestRoute, json: JsonObject): Message {
  try {
    return fromJson(route.method.input, json, { ignoreUnknownFields: false });
  } catch (err) {
    throw new ConnectError(describeJsonError(route.method.input, (err as Error).message), Code.InvalidArgument);
  }
}

/** The answer's JSON: the whole response, or its `response_body` field. */
export function responseJson(route: RestRoute, response: JsonObject): JsonValue {
  const f = route.responseBody;
  if (!f) return response;
  return response[f.jsonName] ?? (f.fieldKind === "list" ? [] : f.fieldKind === "message" ? {} : null);
}

/** A Connect JSON error (`{code: "not_found", message, details: [{type, value}]}`) as google.rpc.Status JSON. */
export function statusJson(connectError: JsonObject): { status: JsonObject; code: Code } {
  const code = codeFromString(String(connectError.code ?? "")) ?? Code.Unknown;
  const details: JsonValue[] = [];
  for (const d of Array.isArray(connectError.details) ? connectError.details : []) {
    if (!d || typeof d !== "object" || Array.isArray(d)) continue;
    const type = String(d.type ?? "");
    const schema = ERROR_DETAILS.getMessage(type);
    try {
      if (!schema) throw new Error("unknown type");
      const msg = fromBinary(schema, base64Decode(String(d.value ?? "")));
      details.push({ "@type": `type.googleapis.com/${type}`, ...(toJson(schema, msg) as JsonObject) });
    } catch {
      details.push({ "@type": `type.googleapis.com/${type}`, value: String(d.value ?? "") });
    }
  }
  return { status: { code, message: String(connectError.message ?? ""), details }, code };
}

/** The HTTP status of a gRPC code, as grpc-gateway and Connect map it. */
export function httpStatusOf(code: Code): number {
  return codeToHttpStatus(code);
}
