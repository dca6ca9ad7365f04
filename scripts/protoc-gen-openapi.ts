/**
 * protoc-gen-openapi: the OpenAPI 3.1 document of the gateway's REST routes,
 * written at `buf generate` time from the same contracts as everything else
 * (buf.gen.yaml runs it with `strategy: all`, so one request holds every
 * file) into gen/openapi/shopmesh.openapi.json; the gateway serves it at
 * `/openapi.json`.
 *
 * Routes come from the `google.api.http` annotations through
 * contracts/http-rules.ts — the gateway's own route compiler, so a route is
 * described as the gateway matches it. Methods without an annotation (the
 * internal RPCs, the chaos service) are not in it; that the annotated methods
 * are exactly the gateway's public ones (gateway/routes.ts) is a test's
 * (gateway/routes.test.ts). The
 * extension is taken from the request: gen/ is deleted before plugins run
 * (`clean: true`), so nothing generated is imported here.
 *
 * Output is deterministic (no dates, keys in a fixed order): CI regenerates
 * gen/ and fails on any difference.
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import {
  create,
  createFileRegistry,
  type DescField,
  type DescMessage,
  type JsonObject,
  maximumEdition,
  minimumEdition,
  ScalarType,
} from "@bufbuild/protobuf";
import {
  type CodeGeneratorRequest,
  type CodeGeneratorResponse,
  CodeGeneratorResponse_Feature,
  CodeGeneratorResponseSchema,
  FileDescriptorSetSchema,
} from "@bufbuild/protobuf/wkt";
import { runNodeJs } from "@bufbuild/protoplugin";
import { type RestRoute, routesOf } from "../contracts/http-rules.js";
import { ROOT } from "./layout.js";
import { commentOf, SCHEMAS, SchemaSet, wellKnownSchema } from "./openapi-schemas.js";

/** The one file written (under the plugin's `out`). */
const OUTPUT = "shopmesh.openapi.json";
const STATUS = "google.rpc.Status";
/** The detail messages errors carry (platform/errors.ts ERROR_DETAILS; gateway/openapi.test.ts keeps the two equal). */
const ERROR_DETAILS = [
  "google.rpc.BadRequest",
  "google.rpc.ErrorInfo",
  "google.rpc.PreconditionFailure",
  "google.rpc.ResourceInfo",
];
const SECURITY = "bearer";

/**
 * google.rpc.Status as proto3 JSON, the way gateway/rest.ts writes it. Written out rather than
 * derived: the shopmesh contracts do not import status.proto (a request of theirs alone lacks it).
 */
const STATUS_SCHEMA: JsonObject = {
  type: "object",
  description: "The error model of gRPC and Google APIs (google/rpc/status.proto): what a failed call answers.",
  properties: {
    code: {
      type: "integer",
      format: "int32",
      description: "The gRPC status code (google.rpc.Code), e.g. 5 for NOT_FOUND; the HTTP status says the same.",
    },
    message: { type: "string", description: "A developer-facing error message, in English." },
    details: {
      type: "array",
      description: "Messages that carry the error's details, e.g. which request fields are invalid.",
      items: {
        type: "object",
        description: `A detail message as proto3 JSON, its type URL in \`@type\`. A type the gateway does not know is \
passed on as its type URL and its base64 \`value\`.`,
        properties: {
          "@type": { type: "string", examples: ERROR_DETAILS.map((t) => `type.googleapis.com/${t}`) },
        },
        required: ["@type"],
        additionalProperties: true,
      },
    },
  },
  required: ["code", "message"],
};

/** Error answers: HTTP status, response name, the gRPC codes behind it (Connect's mapping, gateway/wire.ts). */
const ERRORS: readonly (readonly [string, string, string])[] = [
  [
    "400",
    "BadRequest",
    "INVALID_ARGUMENT, FAILED_PRECONDITION or OUT_OF_RANGE: the request is malformed, or not possible in the current state.",
  ],
  ["401", "Unauthenticated", "UNAUTHENTICATED: no valid bearer token."],
  ["403", "PermissionDenied", "PERMISSION_DENIED: the token's roles do not allow the call."],
  ["404", "NotFound", "NOT_FOUND: no such resource, or another customer's."],
  ["409", "Conflict", "ALREADY_EXISTS or ABORTED: e.g. an idempotency key reused with a different request."],
  ["413", "PayloadTooLarge", "RESOURCE_EXHAUSTED: the request body is larger than the gateway accepts."],
  ["429", "TooManyRequests", "RESOURCE_EXHAUSTED: a rate or concurrency limit; retry after `Retry-After` seconds."],
  ["500", "Internal", "INTERNAL, UNKNOWN or DATA_LOSS."],
  ["503", "Unavailable", "UNAVAILABLE: a service the call needs is down or shedding load; retry with backoff."],
  ["504", "DeadlineExceeded", "DEADLINE_EXCEEDED: the call did not finish within its deadline."],
];

const ABOUT = `The shopmesh public API over HTTP and JSON, as the gateway transcodes it from the gRPC contracts \
(their \`google.api.http\` annotations). The same calls are served over gRPC, gRPC-Web and Connect on the same port.

Bodies are proto3 JSON: lowerCamel field names (proto names are accepted too), 64-bit integers as strings, enums \
by name, timestamps as RFC 3339 strings; a field holding its default value is left out of answers. Query \
parameters set request fields by name (nested fields with dots, repeated fields by repeating the parameter).

Every call needs \`Authorization: Bearer <JWT>\`. An error is a \`google.rpc.Status\` object with the HTTP status \
of its gRPC code. A server-streaming call answers newline-delimited JSON: a \`{"result": ...}\` line per message \
and, if the stream fails after it started, a last \`{"error": <Status>}\` line.

Generated by scripts/protoc-gen-openapi.ts at \`buf generate\`; do not edit.`;

/** The first sentence of a comment. */
function firstSentence(text: string): string {
  const para = text.split("\n")[0] ?? "";
  return /^.+?[.!?](?=\s|$)/.exec(para)?.[0] ?? para;
}

/** `schema` without its description (a parameter carries it). */
function bare(schema: JsonObject): JsonObject {
  const { description: _, ...rest } = schema;
  return rest;
}

/** The OpenAPI path of a route's template, and its path parameters. */
function pathOf(route: RestRoute, schemas: SchemaSet): { path: string; parameters: JsonObject[] } {
  const { template } = route;
  // Wildcards outside a variable bind no field: OpenAPI has no way to say what they match.
  if (/(^|\/)\*\*?(?=\/|:|$)/.test(template.replace(/\{[^}]*\}/g, "x"))) {
    throw new Error(`${template}: an anonymous wildcard cannot be described in OpenAPI; bind it to a field`);
  }
  const vars = [...template.matchAll(/\{([^}=]+)(?:=([^}]*))?\}/g)];
  const parameters = vars.map(([, name = "", sub], i): JsonObject => {
    const leaf = route.variables[i]?.path.at(-1) as DescField;
    const spans = sub && sub !== "*" ? ` Matches the path segments \`${sub}\`.` : "";
    const description = commentOf(leaf) + spans;
    return {
      name,
      in: "path",
      required: true,
      ...(description ? { description } : {}),
      schema: bare(schemas.field(leaf)),
    };
  });
  return { path: template.replace(/\{([^}=]+)=[^}]*\}/g, "{$1}"), parameters };
}

/**
 * Query parameters: every request field neither the path nor the body sets
 * (gateway/rest-request.ts `requestJson`), nested messages by dotted names; maps and
 * repeated messages cannot be sent in a query.
 */
function queryOf(route: RestRoute, schemas: SchemaSet): JsonObject[] {
  if (route.body === "*") return [];
  const bound = new Set(route.variables.map((v) => v.path.map((f) => f.name).join(".")));
  if (route.body) bound.add(route.body.name);
  const out: JsonObject[] = [];
  const walk = (m: DescMessage, names: string[], jsonNames: string[], seen: readonly DescMessage[]) => {
    for (const f of m.fields) {
      const path = [...names, f.name];
      const jsonPath = [...jsonNames, f.jsonName];
      if (bound.has(path.join(".")) || f.fieldKind === "map") continue;
      const element =
        f.fieldKind === "message" || (f.fieldKind === "list" && f.listKind === "message") ? f.message : undefined;
      const wkt = element && wellKnownSchema(element);
      if (element && !wkt) {
        if (f.fieldKind === "message" && !seen.includes(element)) walk(element, path, jsonPath, [...seen, element]);
        continue;
      }
      // Well-known types are sent as their JSON string (a Timestamp as RFC 3339); object-shaped ones cannot be.
      if (wkt && wkt.type !== "string" && !Array.isArray(wkt.type)) continue;
      const { description, ...schema } = schemas.field(f);
      out.push({ name: jsonPath.join("."), in: "query", ...(description ? { description } : {}), schema });
    }
  };
  walk(route.method.input, [], [], [route.method.input]);
  return out;
}

/** The Idempotency-Key header, for a POST whose request has an `idempotency_key` string (gateway/dispatch.ts). */
function idempotencyHeader(route: RestRoute): JsonObject[] {
  const key = route.method.input.fields.find((f) => f.name === "idempotency_key");
  if (route.httpMethod !== "POST" || key?.fieldKind !== "scalar" || key.scalar !== ScalarType.STRING) return [];
  return [
    {
      name: "Idempotency-Key",
      in: "header",
      description: `Sets \`${key.jsonName}\` (IETF draft-ietf-httpapi-idempotency-key-header): a retry with the same key \
answers as the first request did; the same key with a different request answers 409. The key bare, or quoted as the \
draft writes it (a Structured Field String: \`"k"\` is the key \`k\`).`,
      schema: { type: "string" },
    },
  ];
}

/** The request body of a route that has one. */
function requestBodyOf(route: RestRoute, schemas: SchemaSet): JsonObject | undefined {
  if (!route.body) return undefined;
  let schema: JsonObject;
  if (route.body === "*") {
    // Fields the path sets are not repeated in the body.
    const inPath = new Set(route.variables.filter((v) => v.path.length === 1).map((v) => v.path[0]?.name ?? ""));
    schema = inPath.size ? schemas.message(route.method.input, inPath) : schemas.ref(route.method.input);
  } else schema = schemas.field(route.body);
  return { required: true, content: { "application/json": { schema } } };
}

/** The answers of a route: 200 with the response (or its `response_body` field), and the error answers. */
function responsesOf(route: RestRoute, schemas: SchemaSet): JsonObject {
  const { method, responseBody } = route;
  const result = responseBody ? schemas.field(responseBody) : schemas.ref(method.output);
  const what = (responseBody ? commentOf(responseBody) : commentOf(method.output)) || "OK";
  const ok: JsonObject =
    method.methodKind === "server_streaming"
      ? {
          description: `A stream of newline-delimited JSON, a line per message. ${what}`,
          content: {
            "application/x-ndjson": {
              schema: {
                type: "object",
                description:
                  'One line: `{"result": ...}`, or last, if the stream fails after it started, `{"error": ...}`.',
                properties: { result: result, error: { $ref: `${SCHEMAS}${STATUS}` } },
                oneOf: [{ required: ["result"] }, { required: ["error"] }],
              },
            },
          },
        }
      : { description: what, content: { "application/json": { schema: result } } };
  const errors = ERRORS.filter(([status]) => status !== "413" || route.body !== "");
  return {
    "200": ok,
    ...Object.fromEntries(errors.map(([status, name]) => [status, { $ref: `#/components/responses/${name}` }])),
    default: { $ref: "#/components/responses/Error" },
  };
}

/** The error responses, each a google.rpc.Status. */
function errorResponses(): JsonObject {
  const content = { "application/json": { schema: { $ref: `${SCHEMAS}${STATUS}` } } };
  const out: JsonObject = {};
  for (const [status, name, description] of ERRORS) {
    out[name] =
      status === "429"
        ? {
            description,
            headers: {
              "Retry-After": { description: "Seconds to wait before retrying.", schema: { type: "integer" } },
            },
            content,
          }
        : { description, content };
  }
  out.Error = { description: "Any other gRPC status, with the HTTP status Connect maps it to.", content };
  return out;
}

const METHOD_ORDER = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];

/** The operation of one route; `binding` is its index among the method's bindings (0: the main one). */
function operationOf(route: RestRoute, binding: number, schemas: SchemaSet): JsonObject {
  const { method } = route;
  const comment = commentOf(method);
  const { parameters } = pathOf(route, schemas);
  const params = [...parameters, ...queryOf(route, schemas), ...idempotencyHeader(route)];
  const body = requestBodyOf(route, schemas);
  const summary = firstSentence(comment) || method.name;
  return {
    // Additional bindings are numbered from 2, as grpc-gateway's generator numbers them.
    operationId: `${method.parent.name}_${method.name}${binding > 0 ? binding + 1 : ""}`,
    tags: [method.parent.name],
    summary,
    ...(comment && comment !== summary ? { description: comment } : {}),
    ...(params.length ? { parameters: params } : {}),
    ...(body ? { requestBody: body } : {}),
    responses: responsesOf(route, schemas),
  };
}

/**
 * The OpenAPI document of every annotated method of the files to generate;
 * undefined when there is none. Of the files buf.gen.yaml generates, only
 * the shopmesh services have annotated methods.
 */
function openApiDocument(request: CodeGeneratorRequest, version: string): JsonObject | undefined {
  const registry = createFileRegistry(create(FileDescriptorSetSchema, { file: request.protoFile }));
  const http = registry.getExtension("google.api.http");
  if (!http) return undefined;
  const schemas = new SchemaSet();
  const paths = new Map<string, Map<string, JsonObject>>();
  const tags = new Map<string, JsonObject>();
  const services = request.fileToGenerate.flatMap((name) => registry.getFile(name)?.services ?? []);
  for (const service of services) {
    const routes = service.methods.flatMap((m) => routesOf(m, http).map((r, i) => [r, i] as const));
    if (routes.length === 0) continue;
    if (tags.has(service.name)) throw new Error(`two services named ${service.name}: operation ids would clash`);
    tags.set(service.name, { name: service.name, description: commentOf(service) });
    for (const [route, i] of routes) {
      const verb = route.httpMethod.toLowerCase();
      if (!METHOD_ORDER.includes(verb)) throw new Error(`${route.template}: no OpenAPI method ${route.httpMethod}`);
      const { path } = pathOf(route, schemas);
      const item = paths.get(path) ?? new Map<string, JsonObject>();
      if (item.has(verb)) throw new Error(`${route.httpMethod} ${path} is bound twice`);
      item.set(verb, operationOf(route, i, schemas));
      paths.set(path, item);
    }
  }
  if (paths.size === 0) return undefined;
  const byteOrder = (a: string, b: string) => Buffer.compare(Buffer.from(a), Buffer.from(b));
  const sortedPaths = [...paths.keys()].sort(byteOrder).map((p) => {
    const item = paths.get(p) as Map<string, JsonObject>;
    const verbs = [...item.keys()].sort((a, b) => METHOD_ORDER.indexOf(a) - METHOD_ORDER.indexOf(b));
    return [p, Object.fromEntries(verbs.map((v) => [v, item.get(v) as JsonObject]))];
  });
  return {
    openapi: "3.1.0",
    info: { title: "shopmesh", version, description: ABOUT },
    servers: [{ url: "/" }],
    security: [{ [SECURITY]: [] }],
    tags: [...tags.values()],
    paths: Object.fromEntries(sortedPaths),
    components: {
      schemas: schemas.schemas({ [STATUS]: STATUS_SCHEMA }),
      responses: errorResponses(),
      securitySchemes: {
        [SECURITY]: {
          type: "http",
          scheme: "bearer",
          bearerFormat: "JWT",
          description: "A JWT signed by the configured issuer, with the caller's subject (`sub`) and `roles`.",
        },
      },
    },
  };
}

const version = (JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")) as { version: string }).version;

runNodeJs({
  name: "protoc-gen-openapi",
  version: `v${version}`,
  run(request): CodeGeneratorResponse {
    const doc = openApiDocument(request, version);
    return create(CodeGeneratorResponseSchema, {
      supportedFeatures: BigInt(
        CodeGeneratorResponse_Feature.PROTO3_OPTIONAL | CodeGeneratorResponse_Feature.SUPPORTS_EDITIONS,
      ),
      minimumEdition,
      maximumEdition,
      file: doc ? [{ name: OUTPUT, content: `${JSON.stringify(doc, null, 2)}\n` }] : [],
    });
  },
});
