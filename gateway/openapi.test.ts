/**
 * The OpenAPI document (gen/openapi/, written by scripts/protoc-gen-openapi.ts
 * at `buf generate`) against the gateway that serves it: served without a
 * token, a valid OpenAPI 3.1 document (@seriousme/openapi-schema-validator),
 * its operations exactly the gateway's REST routes (no internal RPC), and
 * every operation, called as the document describes it against the real
 * gateway and services, answering a status the document lists with a body
 * of the documented shape.
 */
import { randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { Validator } from "@seriousme/openapi-schema-validator";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { GatewayService } from "../gen/shopmesh/gateway/v1/gateway_pb.js";
import { ERROR_DETAILS } from "../platform/errors.js";
import type { Role } from "../platform/identity-rule.js";
import { ROOT } from "../test/fixtures.js";
import { type System, startSystem, startTestGateway } from "../test/system.js";
import type { GatewayApp } from "./app.js";
import { signDevToken } from "./auth.js";
import { DEV_JWT_SECRET } from "./config.js";
import { RestRouter } from "./rest.js";
import { ROUTES } from "./routes.js";

/** The parts of OpenAPI 3.1 this test reads. */
interface Schema {
  $ref?: string;
  type?: string | string[];
  format?: string;
  enum?: string[];
  properties?: Record<string, Schema>;
  additionalProperties?: boolean | Schema;
  items?: Schema;
  examples?: string[];
}
interface Parameter {
  name: string;
  in: "path" | "query" | "header";
  required?: boolean;
  schema: Schema;
}
interface Content {
  [mediaType: string]: { schema: Schema };
}
interface Operation {
  operationId: string;
  parameters?: Parameter[];
  requestBody?: { content: Content };
  responses: Record<string, { $ref?: string; content?: Content }>;
}
interface Document {
  openapi: string;
  security: Record<string, string[]>[];
  paths: Record<string, Record<string, Operation>>;
  components: {
    schemas: Record<string, Schema>;
    responses: Record<string, { content: Content }>;
    securitySchemes: Record<string, { type: string; scheme: string; bearerFormat: string }>;
  };
}

const FILE = join(ROOT, "gen", "openapi", "shopmesh.openapi.json");
const claims = { JWT_SECRET: DEV_JWT_SECRET, JWT_ISSUER: "shopmesh-dev", JWT_AUDIENCE: "shopmesh" };
const CUSTOMER = "olivia";

let sys: System;
let gw: GatewayApp;
let doc: Document;
/** Path parameter values: real ids of things created through REST in beforeAll. */
const ids: Record<string, string> = { product_id: "coffee-beans" };

const bearer = async (sub: string, roles: Role[]) => `Bearer ${await signDevToken(claims, sub, roles)}`;

/** Every operation of the document with its method and path. */
function operations(d: Document): { verb: string; path: string; op: Operation }[] {
  return Object.entries(d.paths).flatMap(([path, item]) =>
    Object.entries(item).map(([verb, op]) => ({ verb: verb.toUpperCase(), path, op })),
  );
}

/** A schema with its `$ref` (to components.schemas) followed. */
function resolve(s: Schema): Schema {
  const ref = s.$ref?.replace("#/components/schemas/", "");
  return ref ? { ...(doc.components.schemas[ref] as Schema), ...s, $ref: undefined } : s;
}

function jsonTypes(v: unknown): string[] {
  if (v === null) return ["null"];
  if (Array.isArray(v)) return ["array"];
  if (typeof v === "number") return Number.isInteger(v) ? ["integer", "number"] : ["number"];
  return [typeof v];
}

/** Where `value` departs from `schema`: wrong types, enum values, formats, properties the document does not name. */
function departures(value: unknown, schema: Schema, at: string): string[] {
  const s = resolve(schema);
  const types = s.type === undefined ? [] : [s.type].flat();
  if (types.length && !jsonTypes(value).some((t) => types.includes(t)))
    return [`${at}: ${jsonTypes(value)[0]}, documented ${types.join("|")}`];
  if (s.enum && !s.enum.includes(value as string)) return [`${at}: ${JSON.stringify(value)} is not in the enum`];
  if (s.format === "date-time" && Number.isNaN(Date.parse(value as string))) return [`${at}: not a date-time`];
  if (s.format === "int64" && !/^-?\d+$/.test(String(value))) return [`${at}: not an int64 string`];
  if (Array.isArray(value))
    return s.items ? value.flatMap((v, i) => departures(v, s.items as Schema, `${at}[${i}]`)) : [];
  if (value === null || typeof value !== "object") return [];
  return Object.entries(value).flatMap(([k, v]) => {
    const p = s.properties?.[k];
    if (p) return departures(v, p, `${at}.${k}`);
    if (typeof s.additionalProperties === "object") return departures(v, s.additionalProperties, `${at}.${k}`);
    return s.additionalProperties === true ? [] : [`${at}.${k}: not in the document`];
  });
}

/** An error answer's body against the documented google.rpc.Status. */
function statusDepartures(body: unknown): string[] {
  return departures(body, { $ref: "#/components/schemas/google.rpc.Status" }, "status");
}

/** REST call through the gateway. */
async function rest(verb: string, path: string, init: { headers?: Record<string, string>; body?: unknown } = {}) {
  const res = await fetch(`${gw.url}${path}`, {
    method: verb,
    headers: { ...(init.body === undefined ? {} : { "content-type": "application/json" }), ...init.headers },
    ...(init.body === undefined ? {} : { body: JSON.stringify(init.body) }),
  });
  return { status: res.status, type: res.headers.get("content-type") ?? "", text: await res.text() };
}

/** Places an order through REST as {@link CUSTOMER}; its id. */
async function placeOrder(): Promise<string> {
  const placed = await rest("POST", "/v1/orders", {
    headers: { authorization: await bearer(CUSTOMER, ["customer"]) },
    body: { idempotencyKey: randomUUID(), items: [{ productId: "coffee-beans", quantity: 1 }], cardToken: "tok_visa" },
  });
  expect(placed.status, placed.text).toBe(200);
  return (JSON.parse(placed.text) as { id: string }).id;
}

beforeAll(async () => {
  doc = JSON.parse(readFileSync(FILE, "utf8")) as Document;
  sys = await startSystem();
  gw = await startTestGateway(sys);
  ids.order_id = await placeOrder();
  const settled = await sys.settle(ids.order_id, CUSTOMER);
  ids.payment_id = settled.paymentId;
});
afterAll(async () => {
  await gw?.stop();
  await sys?.[Symbol.asyncDispose]();
});

describe("the OpenAPI document", () => {
  it("is served at /openapi.json without a token, as generated, with an ETag", async () => {
    const res = await fetch(`${gw.url}/openapi.json`);
    expect(res.status).toBe(200);
    expect(res.headers.get("content-type")).toBe("application/json");
    expect(res.headers.get("cache-control")).toMatch(/max-age=\d+/);
    expect(await res.text()).toBe(readFileSync(FILE, "utf8"));
    const etag = res.headers.get("etag") ?? "";
    const again = await fetch(`${gw.url}/openapi.json`, { headers: { "if-none-match": etag } });
    expect(again.status).toBe(304);
  });

  it("is a valid OpenAPI 3.1 document", async () => {
    const validator = new Validator();
    const served = (await (await fetch(`${gw.url}/openapi.json`)).json()) as Record<string, unknown>;
    const result = await validator.validate(served);
    expect(result.errors).toBeUndefined();
    expect(result.valid).toBe(true);
    expect(validator.version).toBe("3.1");
    expect(doc.components.securitySchemes[Object.keys(doc.security[0] ?? {})[0] ?? ""]).toEqual({
      type: "http",
      scheme: "bearer",
      bearerFormat: "JWT",
      description: expect.any(String),
    });
  });

  it("describes exactly the routes the gateway serves, and no internal RPC", () => {
    const methods = [
      ...ROUTES.flatMap((r) => r.service.methods.filter((m) => r.methods.includes(m.name))),
      ...GatewayService.methods,
    ];
    const served = new RestRouter(methods).routes.map((r) => `${r.httpMethod} ${r.template}`);
    expect(operations(doc).map((o) => `${o.verb} ${o.path}`)).toEqual(expect.arrayContaining(served));
    expect(operations(doc)).toHaveLength(served.length);
    const ids = operations(doc).map((o) => o.op.operationId);
    for (const internal of ["ReserveStock", "ReleaseStock", "ChargePayment", "RefundPayment", "ChaosService"]) {
      expect(ids.filter((id) => id.includes(internal))).toEqual([]);
    }
    expect(Object.keys(doc.components.schemas).filter((s) => /chaos|Reserve|Charge|Refund/.test(s))).toEqual([]);
  });

  it("names the error detail types the services send", () => {
    const status = doc.components.schemas["google.rpc.Status"] as Schema;
    const examples = status.properties?.details?.items?.properties?.["@type"]?.examples ?? [];
    expect([...examples].sort()).toEqual([...ERROR_DETAILS].map((t) => `type.googleapis.com/${t.typeName}`).sort());
  });

  it("answers errors as the documented google.rpc.Status", async () => {
    const anonymous = await rest("GET", `/v1/orders/${ids.order_id}`);
    expect(anonymous.status).toBe(401);
    expect(statusDepartures(JSON.parse(anonymous.text))).toEqual([]);
    const authorization = await bearer(CUSTOMER, ["customer"]);
    const missing = await rest("GET", "/v1/orders/no-such-order", { headers: { authorization } });
    expect(missing.status).toBe(404);
    expect(statusDepartures(JSON.parse(missing.text))).toEqual([]);
    const op = doc.paths["/v1/orders/{order_id}"]?.get;
    expect(Object.keys(op?.responses ?? {})).toEqual(expect.arrayContaining(["401", "404", "default"]));
  });

  it("documents the Idempotency-Key header, and a key reused with another body answers 409", async () => {
    const place = doc.paths["/v1/orders"]?.post;
    expect(place?.parameters?.map((p) => `${p.in} ${p.name}`)).toContain("header Idempotency-Key");
    expect(Object.keys(place?.responses ?? {})).toContain("409");
    const headers = { authorization: await bearer(CUSTOMER, ["customer"]), "idempotency-key": randomUUID() };
    const order = (quantity: number) => ({ items: [{ productId: "paper-filters", quantity }], cardToken: "tok_visa" });
    expect((await rest("POST", "/v1/orders", { headers, body: order(1) })).status).toBe(200);
    const reused = await rest("POST", "/v1/orders", { headers, body: order(2) });
    expect(reused.status).toBe(409);
    expect(statusDepartures(JSON.parse(reused.text))).toEqual([]);
  });
});

/** Request bodies, by operation id: the document describes the shape, this says what to order. */
const BODIES: Record<string, Record<string, unknown>> = {
  OrderService_PlaceOrder: { items: [{ productId: "ceramic-mug", quantity: 1 }], cardToken: "tok_visa" },
  OrderService_CancelOrder: { reason: "changed my mind" },
  InventoryService_Restock: { quantity: 5 },
};
/** Query parameters by operation id (besides `pageSize`, set wherever the document offers it). */
const QUERY: Record<string, () => Record<string, string>> = {
  NotificationService_ListNotifications: () => ({ orderId: ids.order_id ?? "" }),
};

describe("every operation, called as the document says", () => {
  it.each(operations(JSON.parse(readFileSync(FILE, "utf8")) as Document).map((o) => [o.op.operationId, o] as const))(
    "%s",
    async (operationId, { verb, path, op }) => {
      const [service = "", method = ""] = operationId.replace(/\d+$/, "").split("_");
      const admin = ROUTES.find((r) => r.service.name === service)?.adminOnly?.includes(method);
      const headers: Record<string, string> = {
        authorization: await bearer(admin ? "ops" : CUSTOMER, admin ? ["admin"] : ["customer"]),
      };
      const pathIds = { ...ids };
      const cancelling = operationId === "OrderService_CancelOrder";
      // An order still in its saga (payment held back) can be cancelled: 200, not FAILED_PRECONDITION.
      if (cancelling) {
        await sys.paymentChaos.setFaults({ faults: { latencyMs: 1000 } });
        pathIds.order_id = await placeOrder();
      }
      try {
        const query = new URLSearchParams(QUERY[operationId]?.());
        let url = path;
        for (const p of op.parameters ?? []) {
          if (p.in === "path") url = url.replace(`{${p.name}}`, encodeURIComponent(pathIds[p.name] ?? ""));
          if (p.in === "query" && p.name === "pageSize") query.set(p.name, "5");
          if (p.in === "header" && p.name === "Idempotency-Key") headers[p.name] = randomUUID();
        }
        expect(url, "every path parameter filled").not.toMatch(/[{}]/);
        const documented = (op.parameters ?? []).filter((p) => p.in === "query").map((p) => p.name);
        expect(documented).toEqual(expect.arrayContaining([...query.keys()]));
        let body: unknown;
        if (op.requestBody) {
          body = BODIES[operationId];
          expect(body, `a sample body for ${operationId}`).toBeDefined();
          const schema = op.requestBody.content["application/json"]?.schema as Schema;
          expect(departures(body, schema, "body")).toEqual([]);
        }
        const res = await rest(verb, `${url}${query.size ? `?${query}` : ""}`, { headers, body });
        expect(Object.keys(op.responses), `${res.status} is documented: ${res.text}`).toContain(String(res.status));
        expect(res.status, res.text).toBe(200);
        const [mediaType, { schema } = { schema: {} }] = Object.entries(op.responses["200"]?.content ?? {})[0] ?? [];
        expect(res.type).toBe(mediaType);
        if (mediaType === "application/x-ndjson") {
          const lines = res.text
            .trimEnd()
            .split("\n")
            .map((l) => JSON.parse(l) as Record<string, unknown>);
          expect(lines.length).toBeGreaterThan(0);
          for (const line of lines) {
            expect("result" in line || "error" in line, JSON.stringify(line)).toBe(true);
            expect(departures(line, schema, "line")).toEqual([]);
          }
        } else {
          expect(departures(JSON.parse(res.text), schema, "body")).toEqual([]);
        }
      } finally {
        if (cancelling) await sys.paymentChaos.setFaults({ faults: {} });
      }
    },
  );
});
