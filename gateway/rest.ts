/**
 * REST routes from the contracts: each public RPC's `google.api.http`
 * annotation (as grpc-gateway and Envoy's transcoder read it) becomes an HTTP
 * route — `GET /v1/products/{product_id}`, `POST /v1/orders/{order_id}:cancel`.
 * This module is the pure part: path templates and shaping answers
 * (response_body, errors as google.rpc.Status JSON, server streams as
 * newline-delimited JSON); rest-request.ts builds the request message from
 * path, query and body.
 * dispatch.ts runs the result through the same pipeline as every other
 * protocol: limits, authentication, access log, the Connect handler and its
 * upstream.
 * Routes come from contracts/http-rules.ts. A variable's value is its
 * segments joined by "/"; a single-segment value is percent-decoded in full
 * (`%2F` becomes "/"), a multi-segment one segment by segment but its RFC 6570
 * reserved characters (`%2F` stays "%2F").
 */
import { create, type DescMethod, fromBinary, type JsonObject, type JsonValue, toJson } from "@bufbuild/protobuf";
import { base64Decode } from "@bufbuild/protobuf/wire";
import { Code } from "@connectrpc/connect";
import { codeFromString } from "@connectrpc/connect/protocol-connect";
import { type RestRoute, routesOf, type Segment, type Variable } from "../contracts/http-rules.js";
import { http as httpRule } from "../gen/google/api/annotations_pb.js";
import { ERROR_DETAILS } from "../platform/errors.js";

export type { RestRoute } from "../contracts/http-rules.js";

/** A request matched to a route, with its path variables' values. */
export interface RestMatch {
  readonly route: RestRoute;
  readonly values: ReadonlyMap<Variable, string>;
  /** A path variable whose segments are not valid percent-encoded UTF-8 (refused, naming it, when the request is built). */
  readonly malformed?: Variable;
}

/** Percent-decodes one path segment (or query name or value); undefined when not percent-encoded UTF-8. */
export function decodeSegment(s: string): string | undefined {
  try {
    return decodeURIComponent(s);
  } catch {
    return undefined;
  }
}

/** A percent-encoded RFC 6570 reserved character (gen-delims and sub-delims). */
const RESERVED = /(%(?:2[1346789ABCFabcf]|3[ABDFabdf]|40|5[BDbd]))/;

/**
 * Percent-decodes one segment of a multi-segment variable but its reserved characters, kept as sent
 * (Envoy's transcoder by default; google/api/http.proto keeps only "%2F" and "%2f", grpc-gateway all of
 * them but only for `**`, in its UnescapingModeAllExceptReserved).
 */
function decodeUnreserved(s: string): string | undefined {
  const parts = s.split(RESERVED).map((p, i) => (i % 2 ? p : decodeSegment(p)));
  return parts.some((p) => p === undefined) ? undefined : parts.join("");
}

/** Matches `path` (without its query) against `route`; undefined when it does not match. */
function matchRoute(route: RestRoute, path: string): RestMatch | undefined {
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
    if ("wild" in s && s.wild === "**") {
      // The segments `**` takes are no more empty than any other's (a trailing slash, "a//b"), but for
      // a variable that is that one empty segment before a verb, as below.
      const tail = raw.slice(i);
      if (tail.some((r) => r === "") && !(route.verb && tail.length === 1)) return undefined;
      break;
    }
    const r = raw[i] ?? "";
    // Empty, a segment matches nothing — but the one before a verb (`POST /v1/orders/:cancel`): the
    // path is that route's with the variable empty, refused by the method's own check naming it, and
    // not a plain route's order ":cancel".
    if (r === "" && !(route.verb && i === segments.length - 1 && "wild" in s)) return undefined;
    // Literals compare as sent: the path a proxy routes on is the path matched here.
    if ("literal" in s && r !== s.literal) return undefined;
  }
  const values = new Map<Variable, string>();
  let malformed: Variable | undefined;
  for (const v of route.variables) {
    const taken = v.length < 0 ? raw.slice(v.start) : raw.slice(v.start, v.start + v.length);
    // Multi-segment: more than one segment in the template, or `**` (even over one), as Envoy counts it.
    const decoded = v.length === 1 ? [decodeSegment(taken[0] ?? "")] : taken.map(decodeUnreserved);
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
      // RFC 9110 §15.5.6: Allow is every method the resource takes, and a GET that answers once takes HEAD.
      if (route.httpMethod === "GET" && route.method.methodKind === "unary") allowed.add("HEAD");
    }
    return allowed.size ? { allowed: [...allowed] } : undefined;
  }
}

/** The answer's JSON: the whole response, or its `response_body` field. */
export function responseJson(route: RestRoute, response: JsonObject): JsonValue {
  const f = route.responseBody;
  if (!f) return response;
  const value = response[f.jsonName];
  if (value !== undefined) return value;
  if (f.fieldKind === "message") return {};
  // Left out of the response's JSON at its default: the answer is that default ("", 0, false, [], the
  // enum's zero value), as grpc-gateway writes the field, not null.
  const output = route.method.output;
  return (toJson(output, create(output), { alwaysEmitImplicit: true }) as JsonObject)[f.jsonName] ?? null;
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
