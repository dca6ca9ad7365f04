/**
 * HTTP routes as the contracts declare them: a method's `google.api.http`
 * annotation (the convention of grpc-gateway, Envoy's transcoder and Google's
 * APIs) compiled into routes — the gateway matches requests against them
 * (gateway/rest.ts) and the OpenAPI generator describes them.
 *
 * Template grammar (google/api/http.proto):
 *   Template = "/" Segments [ ":" Verb ] ; Segments = Segment { "/" Segment } ;
 *   Segment  = "*" | "**" | LITERAL | "{" FieldPath [ "=" Segments ] "}" ;
 * `*` is one segment, `**` any number of them (last only).
 */
import {
  type DescExtension,
  type DescField,
  type DescMessage,
  type DescMethod,
  getExtension,
  hasExtension,
} from "@bufbuild/protobuf";
import type { HttpRule } from "../gen/google/api/http_pb.js";

/** One segment of a compiled template. */
export type Segment = { readonly literal: string } | { readonly wild: "*" | "**" };

/** A variable: the field it sets and the segments it spans (from `start`, `length` of them; -1: to the end). */
export interface Variable {
  readonly path: readonly DescField[];
  readonly start: number;
  readonly length: number;
}

/** One HTTP binding of a method. */
export interface RestRoute {
  readonly httpMethod: string;
  /** The template as written, e.g. `/v1/orders/{order_id}:cancel`. */
  readonly template: string;
  readonly method: DescMethod;
  readonly segments: readonly Segment[];
  readonly verb: string;
  readonly variables: readonly Variable[];
  /** "" (no body), "*" (the whole request), or the body field. */
  readonly body: "" | "*" | DescField;
  /** The response field answered instead of the whole response. */
  readonly responseBody: DescField | undefined;
}

/** A template that cannot be compiled: a bug in the contracts, reported at start. */
function invalid(template: string, why: string): Error {
  return new Error(`google.api.http template ${JSON.stringify(template)}: ${why}`);
}

/** The field `name` (proto or JSON name) of `message`, or undefined. */
export function fieldNamed(message: DescMessage, name: string): DescField | undefined {
  return message.fields.find((f) => f.name === name || f.jsonName === name);
}

/** Resolves a dotted field path (`shelf.name`) from `message`; every step but the last is a singular message. */
export function fieldPath(message: DescMessage, dotted: string): DescField[] | undefined {
  const out: DescField[] = [];
  let m: DescMessage | undefined = message;
  for (const part of dotted.split(".")) {
    const f: DescField | undefined = m ? fieldNamed(m, part) : undefined;
    if (!f) return undefined;
    out.push(f);
    m = f.fieldKind === "message" ? f.message : undefined;
  }
  return out;
}

/** Compiles `template` for `method`. */
export function compileTemplate(
  template: string,
  method: DescMethod,
): Pick<RestRoute, "segments" | "verb" | "variables"> {
  if (!template.startsWith("/")) throw invalid(template, "must start with /");
  const segments: Segment[] = [];
  const variables: Variable[] = [];
  let rest = template.slice(1);
  let verb = "";
  // The verb is a ":" after the last "/" outside any variable.
  const lastSlash = rest.lastIndexOf("/");
  const lastClose = rest.lastIndexOf("}");
  const colon = rest.indexOf(":", Math.max(lastSlash, lastClose) + 1);
  if (colon >= 0) {
    verb = rest.slice(colon + 1);
    rest = rest.slice(0, colon);
    if (!/^[A-Za-z0-9_.~-]+$/.test(verb)) throw invalid(template, `bad verb ${JSON.stringify(verb)}`);
  }
  const parts = rest.match(/\{[^}]*\}|[^/]+/g) ?? [];
  if (
    rest
      .replace(/\{[^}]*\}|[^/]+/g, "x")
      .split("/")
      .some((p) => p !== "x")
  ) {
    throw invalid(template, "empty segment");
  }
  for (const part of parts) {
    if (!part.startsWith("{")) {
      if (part === "*" || part === "**") segments.push({ wild: part });
      else if (/^[A-Za-z0-9_.~-]+$/.test(part)) segments.push({ literal: part });
      else throw invalid(template, `bad literal ${JSON.stringify(part)}`);
      continue;
    }
    const [name = "", sub = "*"] = part.slice(1, -1).split("=", 2);
    const path = fieldPath(method.input, name);
    const leaf = path?.[path.length - 1];
    if (!path || !leaf || leaf.fieldKind === "list" || leaf.fieldKind === "map" || leaf.fieldKind === "message") {
      throw invalid(template, `${name} is not a singular scalar field of ${method.input.typeName}`);
    }
    const start = segments.length;
    for (const s of sub.split("/")) {
      if (s === "*" || s === "**") segments.push({ wild: s });
      else if (/^[A-Za-z0-9_.~-]+$/.test(s)) segments.push({ literal: s });
      else throw invalid(template, `bad segment ${JSON.stringify(s)} in {${name}}`);
    }
    const deep = segments[segments.length - 1];
    variables.push({
      path,
      start,
      length: deep && "wild" in deep && deep.wild === "**" ? -1 : segments.length - start,
    });
  }
  const deep = segments.findIndex((s) => "wild" in s && s.wild === "**");
  if (deep >= 0 && deep !== segments.length - 1) throw invalid(template, "** must be the last segment");
  return { segments, verb, variables };
}

/**
 * The routes of `method`'s annotation (its pattern and additional bindings); none without one.
 * `extension` is google.api.http: the gateway passes the generated one, a protoc plugin the one
 * in its request (this module imports nothing generated, so it also runs while gen/ is rebuilt).
 */
export function routesOf(method: DescMethod, extension: DescExtension): RestRoute[] {
  const options = method.proto.options;
  if (!options || !hasExtension(options, extension)) return [];
  const top = getExtension(options, extension) as HttpRule;
  return [top, ...top.additionalBindings].map((rule) => compileRule(rule, method));
}

function compileRule(rule: HttpRule, method: DescMethod): RestRoute {
  const { pattern } = rule;
  if (!pattern.case) throw new Error(`${method.parent.typeName}.${method.name}: google.api.http without a pattern`);
  const [httpMethod, template] =
    pattern.case === "custom" ? [pattern.value.kind, pattern.value.path] : [pattern.case.toUpperCase(), pattern.value];
  const where = `${method.parent.typeName}.${method.name} (${httpMethod} ${template})`;
  let body: RestRoute["body"] = "";
  if (rule.body === "*") body = "*";
  else if (rule.body) {
    const f = fieldNamed(method.input, rule.body);
    if (!f) throw new Error(`${where}: body field ${rule.body} does not exist`);
    body = f;
  }
  const responseBody = rule.responseBody ? fieldNamed(method.output, rule.responseBody) : undefined;
  if (rule.responseBody && !responseBody)
    throw new Error(`${where}: response_body ${rule.responseBody} does not exist`);
  return { httpMethod, template, method, ...compileTemplate(template, method), body, responseBody };
}
