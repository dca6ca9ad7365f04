/**
 * REST transcoding as a table: a fixture service (test/fixtures/transcode.proto)
 * using every google.api.http feature, compiled by buf at test time, its routes
 * matched and its requests built exactly as the gateway does for real ones.
 * The REST routes of the real system, over HTTP, are in rest-http.test.ts.
 */
import { execFileSync } from "node:child_process";
import { copyFileSync, mkdirSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { createFileRegistry, type DescService, fromBinary, type JsonObject } from "@bufbuild/protobuf";
import { FileDescriptorSetSchema } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import { errorToJson } from "@connectrpc/connect/protocol-connect";
import { beforeAll, describe, expect, it } from "vitest";
import { compileTemplate } from "../contracts/http-rules.js";
import { BadRequestSchema } from "../gen/google/rpc/error_details_pb.js";
import { InvalidArgumentError } from "../platform/errors.js";
import { ROOT, tempDir } from "../test/fixtures.js";
import { type RestMatch, RestRouter, responseJson, statusJson } from "./rest.js";
import { checkRequest, requestJson } from "./rest-request.js";
import { connectHttpStatus } from "./wire.js";

let library: DescService;
let router: RestRouter;

beforeAll(() => {
  const dir = tempDir();
  mkdirSync(join(dir.path, "proto"));
  copyFileSync(join(ROOT, "test", "fixtures", "transcode.proto"), join(dir.path, "proto", "transcode.proto"));
  symlinkSync(join(ROOT, "node_modules"), join(dir.path, "node_modules"));
  writeFileSync(
    join(dir.path, "buf.yaml"),
    [
      "version: v2",
      "modules:",
      "  - path: proto",
      "  - path: node_modules/google-proto-files",
      "    includes: [node_modules/google-proto-files/google/api]",
      "    excludes:",
      ...["apikeys", "cloudquotas", "expr", "servicecontrol", "servicemanagement", "serviceusage"].map(
        (d) => `      - node_modules/google-proto-files/google/api/${d}`,
      ),
    ].join("\n"),
  );
  const image = execFileSync(join(ROOT, "node_modules", ".bin", "buf"), ["build", "proto", "-o", "-#format=binpb"], {
    cwd: dir.path,
  });
  dir[Symbol.dispose]();
  const registry = createFileRegistry(fromBinary(FileDescriptorSetSchema, image));
  const service = registry.getService("transcode.v1.Library");
  if (!service) throw new Error("the fixture has no Library service");
  library = service;
  router = new RestRouter(library.methods);
});

/** Matches `method path?query` and builds its request JSON (with `body`, `key`), or returns the refusal. */
function build(line: string, body?: unknown, key?: string): { rpc: string; json: JsonObject } | ConnectError {
  const [method = "", target = ""] = line.split(" ");
  const [path = "", query = ""] = target.split("?");
  const m = router.match(method, path);
  if (!m || !("route" in m)) throw new Error(`${line}: no route (${JSON.stringify(m)})`);
  try {
    const json = requestJson(m as RestMatch, {
      query,
      body: body as never,
      idempotencyKey: key,
    });
    checkRequest(m.route, json);
    return { rpc: m.route.method.name, json };
  } catch (err) {
    if (err instanceof ConnectError) return err;
    throw err;
  }
}

describe("path templates", () => {
  it.each([
    ["GET /v1/shelves/s1/books/b2", "GetBook", { shelf: "s1", book: "b2" }],
    // A single-segment variable is percent-decoded in full, "/" included.
    ["GET /v1/shelves/a%2Fb/books/caf%C3%A9", "GetBook", { shelf: "a/b", book: "café" }],
    // A nested field bound to a multi-segment pattern.
    ["GET /v1/shelves/s1/books/b2:watch", "Watch", { shelf: "s1", book: "b2" }],
    ["GET /v1/shelves/s1/books", "Search", { shelf: "s1" }],
    ["GET /v1/files/a/b/c.txt", "ReadFile", { path: "a/b/c.txt" }],
    ["GET /v1/files/x", "ReadFile", { path: "x" }],
  ])("%s → %s %j", (line, rpc, json) => {
    expect(build(line)).toEqual({ rpc, json });
  });

  it("binds a nested field to several segments: {book.name=shelves/*/books/*}", () => {
    // Not routed: /v1/shelves/s1/books/b2 is GetBook's (more literals first); the nested
    // binding answers where only it matches.
    const m = router.routes.find((r) => r.method.name === "GetByName");
    expect(m?.variables[0]?.path.map((f) => f.name)).toEqual(["book", "name"]);
    const only = new RestRouter([library.method.getByName as never]);
    const hit = only.match("GET", "/v1/shelves/s1/books/b2");
    expect(
      hit && "route" in hit ? requestJson(hit, { query: "", body: undefined, idempotencyKey: undefined }) : hit,
    ).toEqual({
      book: { name: "shelves/s1/books/b2" },
    });
    expect(only.match("GET", "/v1/shelves/s1/books")).toBeUndefined();
    expect(only.match("GET", "/v1/shelves/s1/books/b2/more")).toBeUndefined();
  });

  it("a multi-segment variable keeps RFC 6570 reserved characters percent-encoded, as Envoy's transcoder does", () => {
    // google/api/http.proto: a multi-segment variable ({var=foo/*}, {var=**}) is decoded "except %2F
    // and %2f"; grpc-httpjson-transcoding (Envoy) leaves every reserved character encoded, as sent
    // (so does grpc-gateway's UnescapingModeAllExceptReserved, for `**` only), so "a%2Fb" stays one
    // segment of the bound path. `**` counts as multi-segment even over one segment (Envoy's is_multipart).
    expect(build("GET /v1/files/a%2Fb/c%3Ad%20e")).toEqual({ rpc: "ReadFile", json: { path: "a%2Fb/c%3Ad e" } });
    expect(build("GET /v1/files/a%2fb")).toEqual({ rpc: "ReadFile", json: { path: "a%2fb" } });
    expect(build("GET /v1/files/caf%C3%A9%3F%23%5B%5D%40%21%24%26%27%28%29%2A%2B%2C%3B%3D")).toEqual({
      rpc: "ReadFile",
      json: { path: "café%3F%23%5B%5D%40%21%24%26%27%28%29%2A%2B%2C%3B%3D" },
    });
    expect(build("GET /v1/files/%7Euser/%41%2D%5F%2E")).toEqual({ rpc: "ReadFile", json: { path: "~user/A-_." } });
    expect((build("GET /v1/files/a/%E0%A4%A") as ConnectError).rawMessage).toBe(
      "path: is not valid percent-encoded UTF-8 in the path",
    );
    const only = new RestRouter([library.method.getByName as never]);
    const hit = only.match("GET", "/v1/shelves/s%2F1/books/b%20%40");
    expect(
      hit && "route" in hit ? requestJson(hit, { query: "", body: undefined, idempotencyKey: undefined }) : hit,
    ).toEqual({ book: { name: "shelves/s%2F1/books/b %40" } });
  });

  it("tells a path it does not know (404) from a method the path does not take (405)", () => {
    expect(router.match("GET", "/v1/nowhere")).toBeUndefined();
    // A known verb belongs to its route whatever the method: not book "b2:publish".
    expect(router.match("GET", "/v1/shelves/s1/books/b2:publish")).toEqual({ allowed: ["POST"] });
    expect(router.match("HEAD", "/v1/shelves/s1/books/b2:watch")).toEqual({ allowed: ["GET"] });
    // The empty segment before a known verb: that verb's route with the variable empty (refused by the
    // method naming it), not book ":watch" nor a 405 from the plain route.
    expect(build("GET /v1/shelves/s1/books/:watch")).toEqual({ rpc: "Watch", json: { shelf: "s1", book: "" } });
    expect(router.match("POST", "/v1/shelves/s1/books/:watch")).toEqual({ allowed: ["GET"] });
    expect(router.match("GET", "/v1/shelves//books/:watch")).toBeUndefined();
    // An unknown verb is part of the last segment's value, as in any template without a verb.
    expect(build("GET /v1/shelves/s1/books/b2:unknownverb")).toMatchObject({ json: { book: "b2:unknownverb" } });
    expect(router.match("DELETE", "/v1/shelves/s1/books/b2")).toEqual({
      allowed: expect.arrayContaining(["GET", "PATCH"]),
    });
    expect(router.match("GET", "/v1/shelves//books/b2")).toBeUndefined();
    // `**` too (docs/rest.md: an empty segment, a trailing slash included, is no route): Envoy drops a
    // trailing empty segment ("a/" is "a"), grpc-gateway keeps it ("a/"); neither is read here. `**`
    // over no segment at all is a match (http.proto: zero or more).
    for (const path of ["/v1/files/a/", "/v1/files/a//b", "/v1/files/", "/v1/files//"]) {
      expect(router.match("GET", path), path).toBeUndefined();
    }
    expect(build("GET /v1/files")).toEqual({ rpc: "ReadFile", json: { path: "" } });
    // A variable that is not valid percent-encoded UTF-8 matches, and is refused naming its field.
    expect((build("GET /v1/shelves/%E0%A4%A/books/b2") as ConnectError).rawMessage).toBe(
      "shelf: is not valid percent-encoded UTF-8 in the path",
    );
    // Literals match as sent: an encoded literal is not the literal.
    expect(router.match("GET", "/v1/%73helves/s1/books/b2")).toBeUndefined();
    expect(router.owns("/%76%31/books")).toBe(true);
    expect(router.owns("/v1/anything")).toBe(true);
    expect(router.owns("/transcode.v1.Library/GetBook")).toBe(false);
  });

  it("routes only annotated methods: Internal has no REST route", () => {
    expect(router.routes.map((r) => r.method.name)).not.toContain("Internal");
  });

  it.each([
    ["v1/books", "must start with /"],
    ["/v1/{nope}", "nope is not a singular scalar field"],
    ["/v1/{tags}", "tags is not a singular scalar field"],
    ["/v1/**/x", "** must be the last segment"],
    ["/v1//x", "empty segment"],
    ["/v1/x:b@d", "bad verb"],
  ])("refuses the template %s (%s)", (template, why) => {
    expect(() => compileTemplate(template, library.method.search as never)).toThrow(why);
  });
});

describe("query parameters", () => {
  it.each([
    ["GET /v1/books?tags=a&tags=b", { tags: ["a", "b"] }],
    ["GET /v1/books?filter.author=ann&filter.kind=KIND_EBOOK", { filter: { author: "ann", kind: "KIND_EBOOK" } }],
    ["GET /v1/books?kinds=KIND_PAPER&kinds=2", { kinds: ["KIND_PAPER", 2] }],
    ["GET /v1/books?pageSize=6", { pageSize: 6 }],
    [
      "GET /v1/books?in_stock=true&min_pages=9007199254740993&max_price=1.5",
      { inStock: true, minPages: "9007199254740993", maxPrice: 1.5 },
    ],
    ["GET /v1/books?filter.since=2026-01-02T03:04:05Z", { filter: { since: "2026-01-02T03:04:05Z" } }],
    // A wrapper is its wrapped scalar, read as one (grpc-gateway parses BoolValue with ParseBool).
    ["GET /v1/books?featured=true&min_rating=%2B4", { featured: true, minRating: 4 }],
    // A sign, as grpc-gateway's strconv reads it; a decimal exponent for a double.
    ["GET /v1/books?page_size=%2B5&min_pages=%2B7&max_price=1.5e2", { pageSize: 5, minPages: "7", maxPrice: 150 }],
  ])("%s → %j", (line, json) => {
    expect(build(line)).toEqual({ rpc: "Search", json });
  });

  it.each([
    ["GET /v1/books?nope=1", "nope: is not a field of transcode.v1.SearchRequest"],
    ["GET /v1/books?page_size=5&pageSize=6", "pageSize: is given more than once"],
    ["GET /v1/books?in_stock=true&in_stock=false", "in_stock: is given more than once"],
    ["GET /v1/books?in_stock=yes", "in_stock: expected true or false"],
    ["GET /v1/books?page_size=abc", 'page_size: "abc" is not a valid int32'],
    ["GET /v1/books?pageSize=99999999999", 'pageSize: "99999999999" is not a valid int32'],
    ["GET /v1/books?min_pages=1.5", 'min_pages: "1.5" is not a valid int64'],
    ["GET /v1/books?max_price=cheap", 'max_price: "cheap" is not a valid double'],
    ["GET /v1/books?filter.since=yesterday", 'filter.since: "yesterday" is not a valid google.protobuf.Timestamp'],
    // Decimal only, as grpc-gateway reads a path or query integer (proto3 JSON's parser takes these).
    ["GET /v1/books?page_size=0x10", 'page_size: "0x10" is not a valid int32'],
    ["GET /v1/books?pageSize=1e3", 'pageSize: "1e3" is not a valid int32'],
    ["GET /v1/books?min_pages=0x10", 'min_pages: "0x10" is not a valid int64'],
    ["GET /v1/books?max_price=0x10", 'max_price: "0x10" is not a valid double'],
    ["GET /v1/books?max_price=%205", 'max_price: " 5" is not a valid double'],
    [
      "GET /v1/books?filter.since.seconds=5",
      "filter.since.seconds: is inside filter.since, a google.protobuf.Timestamp: give filter.since whole",
    ],
    ["GET /v1/books?tags=a&page_size=1&max_price=x&page_size=2", 'max_price: "x" is not a valid double'], // the first refusal, in query order
    ["GET /v1/books?tags=a&page_size=1&max_price=2&page_size=2", "page_size: is given more than once"],
    ["GET /v1/books?kinds=KIND_NOPE", 'kinds: "KIND_NOPE" is not a value of transcode.v1.Kind'],
    ["GET /v1/books?featured=yes", "featured: expected true or false"],
    ["GET /v1/books?min_rating=0x10", 'min_rating: "0x10" is not a valid int32'],
    // Out of the scalar's range (refused by proto3 JSON, not by the text's form): the same type named.
    ["GET /v1/books?min_rating=3000000000", 'min_rating: "3000000000" is not a valid int32'],
    // A number no value has: grpc-gateway (enum ByNumber) and Envoy (protobuf's ToEnum) refuse it.
    ["GET /v1/books?filter.kind=99", 'filter.kind: "99" is not a value of transcode.v1.Kind'],
    ["GET /v1/books?kinds=1&kinds=-1", 'kinds: "-1" is not a value of transcode.v1.Kind'],
    ["GET /v1/books?filter=x", "filter: is a message"],
    ["GET /v1/books?labels.a=b", "labels"],
    ["GET /v1/shelves/s1/books?shelf=s2", "shelf: is set by the path or the body"],
  ])("%s is INVALID_ARGUMENT naming the field (%s)", (line, message) => {
    const r = build(line);
    expect(r).toBeInstanceOf(ConnectError);
    expect((r as ConnectError).code).toBe(Code.InvalidArgument);
    expect((r as ConnectError).rawMessage).toContain(message);
  });
});

it("a value proto3 JSON refuses names its field in a BadRequest detail, as the client wrote it", () => {
  const r = build("GET /v1/books?tags=a&filter.since=2026-01-02T03:04:05Z&pageSize=x");
  expect(r).toBeInstanceOf(ConnectError);
  const [detail] = (r as ConnectError).findDetails(BadRequestSchema);
  expect(detail?.fieldViolations.map((v) => v.field)).toEqual(["pageSize"]);
});

it("a query or path refusal's violation is shaped as a service's InvalidArgumentError: the field, and why alone", () => {
  for (const [line, body, field, why] of [
    ["GET /v1/books?page_size=abc", undefined, "page_size", '"abc" is not a valid int32'],
    ["GET /v1/books?nope=1", undefined, "nope", "is not a field of transcode.v1.SearchRequest"],
    ["PATCH /v1/shelves/s1/books/b2", { id: "b3" }, "book.id", 'the body says "b3" and the path "b2"'],
  ] as const) {
    const r = build(line, body) as ConnectError;
    const service = new InvalidArgumentError(field, why);
    expect({ line, message: r.rawMessage, details: r.findDetails(BadRequestSchema) }).toEqual({
      line,
      message: service.message,
      details: service.details,
    });
  }
});

it("quotes at most 100 characters of what the client sent, and names a path variable by its field path", () => {
  for (const line of [`GET /v1/books?page_size=${"x".repeat(5000)}`, `GET /v1/books?${"k".repeat(5000)}=1`]) {
    const r = build(line) as ConnectError;
    expect(r.code).toBe(Code.InvalidArgument);
    expect(r.rawMessage.length).toBeLessThan(300);
    const [detail] = r.findDetails(BadRequestSchema);
    expect(detail?.fieldViolations[0]?.field.length).toBeLessThanOrEqual(100);
    expect(detail?.fieldViolations[0]?.description.length).toBeLessThan(300);
  }
  const r = build("PATCH /v1/shelves/s1/books/b2", { id: `${"b".repeat(5000)}` }) as ConnectError;
  expect(r.rawMessage).toMatch(/^book\.id: the body says "b{99}…" and the path "b2"$/);
});

it("a refusal of the JSON names the field protobuf-es leaves unnamed: each holder of the type, a well-known type as one", () => {
  const m = router.match("GET", "/v1/books");
  if (!m || !("route" in m)) throw new Error("no route");
  const refusal = (json: JsonObject) => {
    try {
      checkRequest(m.route, json);
      return "accepted";
    } catch (err) {
      return (err as ConnectError).rawMessage;
    }
  };
  expect(refusal({ filter: { since: "nope" } })).toBe(
    "filter.since: not a valid google.protobuf.Timestamp (invalid RFC 3339 string)",
  );
  expect(refusal({ kinds: ["NOPE"] })).toBe('kinds or filter.kind: "NOPE" is not a Kind value');
  expect(refusal({ tags: 5 })).toBe("tags: expected Array, got 5");
});

describe("request and response bodies", () => {
  it('body "*": the whole request, with the path variables', () => {
    expect(build("POST /v1/shelves/s1/books/b2:publish", { note: "hi" })).toEqual({
      rpc: "Publish",
      json: { note: "hi", shelf: "s1", book: "b2" },
    });
  });

  it('body "*" takes no query parameters, and a body that contradicts the path is refused', () => {
    expect((build("POST /v1/shelves/s1/books/b2:publish?note=x", {}) as ConnectError).code).toBe(Code.InvalidArgument);
    const r = build("POST /v1/shelves/s1/books/b2:publish", { shelf: "s9" }) as ConnectError;
    expect(r.rawMessage).toContain("shelf: the body says");
    expect(build("POST /v1/shelves/s1/books/b2:publish", { shelf: "s1" })).toMatchObject({ json: { shelf: "s1" } });
  });

  it("a field body: the body is that field, the rest comes from the path and the query", () => {
    expect(build("PATCH /v1/shelves/s1/books/b2?etag=e1", { name: "Dune", tags: ["sf"] })).toEqual({
      rpc: "UpdateBook",
      json: { shelf: "s1", etag: "e1", book: { name: "Dune", tags: ["sf"], id: "b2" } },
    });
  });

  it("refuses a body where the route takes none, bodies that are not objects, and unknown fields", () => {
    expect((build("GET /v1/books", { tags: ["x"] }) as ConnectError).rawMessage).toContain("takes no request body");
    expect((build("POST /v1/shelves/s1/books/b2:publish", [1]) as ConnectError).rawMessage).toContain("JSON object");
    expect((build("POST /v1/shelves/s1/books/b2:publish", { bogus: 1 }) as ConnectError).rawMessage).toContain(
      '"bogus" is unknown',
    );
  });

  it("Idempotency-Key: the header is the request's idempotency_key; a body that says otherwise is refused", () => {
    expect(build("POST /v1/shelves/s1/books/b2:publish", {}, "k-1")).toMatchObject({ json: { idempotencyKey: "k-1" } });
    expect(build("POST /v1/shelves/s1/books/b2:publish", { idempotency_key: "k-1" }, "k-1")).toMatchObject({
      json: { idempotencyKey: "k-1" },
    });
    const r = build("POST /v1/shelves/s1/books/b2:publish", { idempotencyKey: "k-2" }, "k-1") as ConnectError;
    expect(r.rawMessage).toContain("idempotency_key: the Idempotency-Key header and the body disagree");
  });

  it("response_body: the answer is that field", () => {
    const publish = router.routes.find((r) => r.method.name === "Publish");
    const search = router.routes.find((r) => r.method.name === "Search");
    if (!publish || !search) throw new Error("fixture routes missing");
    expect(responseJson(publish, { book: { id: "b2" } })).toEqual({ id: "b2" });
    expect(responseJson(publish, {})).toEqual({});
    expect(responseJson(search, { books: [] })).toEqual({ books: [] });
    // A scalar field at its default is left out of the response's JSON; the answer is that default,
    // as grpc-gateway writes the field (`""`), not null.
    const readFile = router.routes.find((r) => r.method.name === "ReadFile");
    if (!readFile) throw new Error("fixture routes missing");
    expect(responseJson(readFile, { path: "a/b" })).toBe("a/b");
    expect(responseJson(readFile, {})).toBe("");
  });
});

describe("errors", () => {
  it.each([
    [Code.Canceled, 499],
    [Code.Unknown, 500],
    [Code.InvalidArgument, 400],
    [Code.DeadlineExceeded, 504],
    [Code.NotFound, 404],
    [Code.AlreadyExists, 409],
    [Code.PermissionDenied, 403],
    [Code.ResourceExhausted, 429],
    [Code.FailedPrecondition, 400],
    [Code.Aborted, 409],
    [Code.OutOfRange, 400],
    [Code.Unimplemented, 501],
    [Code.Internal, 500],
    [Code.Unavailable, 503],
    [Code.DataLoss, 500],
    [Code.Unauthenticated, 401],
  ])("code %i answers HTTP %i with a google.rpc.Status body", (code, http) => {
    // As REST answers it (rest-serve.ts); a shed call (retry-after) is 429, not the 413 of a body too large.
    expect(connectHttpStatus(code, "why", true)).toBe(http);
    const { status } = statusJson(errorToJson(new ConnectError("why", code), undefined) as JsonObject);
    expect(status).toEqual({ code, message: "why", details: [] });
  });
});
