/**
 * Deadlines and cancellation end to end, from a hostile or careless client: timeout headers sent to
 * a service directly, client deadlines and cancellations through the gateway on each protocol while
 * sagas run, and what each leaves behind.
 */
import { create, toBinary } from "@bufbuild/protobuf";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { InventoryService, ListProductsRequestSchema } from "../gen/shopmesh/inventory/v1/inventory_pb.js";
import { IDENTITY_KEYS } from "../platform/identity.js";
import { type Client, silentLogger } from "../platform/index.js";
import { type InventoryApp, startInventory } from "../services/inventory/app.js";
import { loadConfig as inventoryConfig } from "../services/inventory/config.js";
import { envelope, h2Request, h2Session } from "./raw.js";
import { type ServiceUnderTest, startServiceUnderTest } from "./system.js";

describe("a grpc-timeout sent to a service directly (not through the gateway)", () => {
  let sut: ServiceUnderTest<InventoryApp, typeof InventoryService> | undefined;
  let inventory: Client<typeof InventoryService>;
  beforeAll(async () => {
    sut = await startServiceUnderTest("inventory", InventoryService, (env) =>
      // Each call takes 200 ms, so a deadline shorter than that ends it.
      startInventory(inventoryConfig({ ...env, FAULT_LATENCY_MS: "200" }), silentLogger()),
    );
    inventory = sut.client;
  });
  afterAll(() => sut?.[Symbol.asyncDispose]());

  const list = async (timeout: string) => {
    await using s = await h2Session(`http://${sut?.app.address}`);
    return await h2Request(
      s,
      {
        ":path": "/shopmesh.inventory.v1.InventoryService/ListProducts",
        "content-type": "application/grpc",
        te: "trailers",
        [IDENTITY_KEYS.subject]: "alice",
        "grpc-timeout": timeout,
      },
      envelope(toBinary(ListProductsRequestSchema, create(ListProductsRequestSchema))),
    );
  };

  // grpc-js's server answered INTERNAL (a server error) to a value it could not read, and read a
  // value that is not one (a sign, a ninth digit, a space, a list) as the digits it found in it.
  // The gateway answers all of them INVALID_ARGUMENT, in connect-es's words.
  it("refuses a malformed value INVALID_ARGUMENT, as the gateway does, never INTERNAL", async () => {
    for (const t of ["soon", "", "-1m", "123456789m", "1 m", "1.5S", "1m,2m", "S", "1x"]) {
      const r = await list(t);
      expect([r.grpcStatus, r.grpcMessage], JSON.stringify(t)).toEqual([
        3,
        `protocol error: invalid grpc timeout value: ${t}`,
      ]);
    }
    await expect(inventory.listProducts({})).resolves.toBeDefined();
  });

  // grpc-js's server truncates the timeout to 32 bits: 3,000,000 s (~35 days, what grpc-go sends for a
  // context of that length) became a negative one, and the call failed DEADLINE_EXCEEDED at once.
  it("serves a call whose deadline is further off than a timer can wait (over ~24.8 days)", async () => {
    for (const t of ["3000000S", "2147484S", "99999999H", "99999999M"]) {
      const r = await list(t);
      expect(r.grpcStatus, t).toBe(0);
    }
  });

  it("ends a call with a zero or short deadline DEADLINE_EXCEEDED, and serves one with room", async () => {
    expect((await list("0m")).grpcStatus).toBe(4);
    expect((await list("0S")).grpcStatus).toBe(4);
    expect((await list("50m")).grpcStatus).toBe(4);
    expect((await list("30S")).grpcStatus).toBe(0);
    expect((await list("00000030S")).grpcStatus).toBe(0);
  });
});
