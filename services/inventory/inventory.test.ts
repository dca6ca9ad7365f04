/**
 * InventoryService over real gRPC: the app on an ephemeral port with a real
 * database (SQLite or PostgreSQL, per the run), called through the generated
 * typed client.
 */
import { isMessage } from "@bufbuild/protobuf";
import { sql } from "kysely";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { PreconditionFailureSchema } from "../../gen/google/rpc/error_details_pb.js";
import { InventoryService, ReservationStatus } from "../../gen/shopmesh/inventory/v1/inventory_pb.js";
import { Code } from "../../platform/errors.js";
import type { Client } from "../../platform/grpc-client.js";
import { identityMetadata } from "../../platform/identity.js";
import { silentLogger } from "../../platform/log.js";
import { snapshot as dbSnapshot } from "../../test/db.js";
import { expectRpcError } from "../../test/rpc.js";
import { type ServiceUnderTest, startServiceUnderTest } from "../../test/system.js";
import { type InventoryApp, startInventory } from "./app.js";
import { DEMO_CATALOGUE } from "./catalogue.js";
import { loadConfig } from "./config.js";
import { MAX_STOCK } from "./domain.js";

let sut: ServiceUnderTest<InventoryApp, typeof InventoryService>;
let app: InventoryApp;
let inventory: Client<typeof InventoryService>;

beforeAll(async () => {
  sut = await startServiceUnderTest("inventory", InventoryService, (env) =>
    startInventory(loadConfig(env), silentLogger()),
  );
  ({ app, client: inventory } = sut);
});
afterAll(() => sut?.[Symbol.asyncDispose]());

/** Every row of the service's database, to prove a rejected call changed nothing. */
const snapshot = () => dbSnapshot(app.store.db);
const stock = () => dbSnapshot(app.store.db, ["products"]);

const admin = { metadata: identityMetadata({ subject: "ops", roles: ["admin"] }) };
let seq = 0;
const key = () => `test-key-${++seq}`;

describe("catalogue", () => {
  it("seeds the demo catalogue and pages through it in id order", async () => {
    const seen: string[] = [];
    let pageToken = "";
    do {
      const page = await inventory.listProducts({ pageSize: 4, pageToken });
      expect(page.products.length).toBeLessThanOrEqual(4);
      seen.push(...page.products.map((p) => p.id));
      pageToken = page.nextPageToken;
    } while (pageToken);
    expect(seen).toEqual(DEMO_CATALOGUE.map((p) => p.id).sort());
  });

  it("uses the default page size for 0 and rejects out-of-range sizes and foreign tokens", async () => {
    expect((await inventory.listProducts({})).products).toHaveLength(DEMO_CATALOGUE.length);
    await expectRpcError(inventory.listProducts({ pageSize: 101 }), Code.INVALID_ARGUMENT, "page_size");
    await expectRpcError(inventory.listProducts({ pageSize: -1 }), Code.INVALID_ARGUMENT, "page_size");
    await expectRpcError(inventory.listProducts({ pageToken: "not-a-token" }), Code.INVALID_ARGUMENT, "page_token");
  });

  it("gets a product with price and stock; unknown is NOT_FOUND, empty id INVALID_ARGUMENT", async () => {
    const { product } = await inventory.getProduct({ productId: "ceramic-mug" });
    expect(product?.unitPrice).toMatchObject({ currencyCode: "USD", amountMinor: 1500n });
    expect(product?.available).toBe(200);
    await expectRpcError(inventory.getProduct({ productId: "no-such-thing" }), Code.NOT_FOUND);
    await expectRpcError(inventory.getProduct({ productId: "" }), Code.INVALID_ARGUMENT, "product_id");
  });
});

describe("reservations", () => {
  it("reserves, replays the first result for the same key, and releases idempotently", async () => {
    const req = { idempotencyKey: key(), orderId: "ord-1", items: [{ productId: "coffee-beans", quantity: 3 }] };
    const before = (await inventory.getProduct({ productId: "coffee-beans" })).product;
    const first = (await inventory.reserveStock(req)).reservation;
    expect(first?.status).toBe(ReservationStatus.RESERVED);
    expect(first?.total).toMatchObject({ currencyCode: "USD", amountMinor: 7200n });
    const again = (await inventory.reserveStock(req)).reservation;
    expect(again).toEqual(first);
    const after = (await inventory.getProduct({ productId: "coffee-beans" })).product;
    expect(after?.available).toBe((before?.available ?? 0) - 3);
    expect(after?.reserved).toBe((before?.reserved ?? 0) + 3);

    const released = (await inventory.releaseStock({ reservationId: first?.id ?? "" })).reservation;
    expect(released?.status).toBe(ReservationStatus.RELEASED);
    const twice = (await inventory.releaseStock({ reservationId: first?.id ?? "" })).reservation;
    expect(twice?.status).toBe(ReservationStatus.RELEASED);
    expect((await inventory.getProduct({ productId: "coffee-beans" })).product).toMatchObject({
      available: before?.available,
      reserved: before?.reserved,
    });
  });

  it("rejects the same key with a different request as ALREADY_EXISTS", async () => {
    const k = key();
    await inventory.reserveStock({
      idempotencyKey: k,
      orderId: "ord-2",
      items: [{ productId: "ceramic-mug", quantity: 1 }],
    });
    const s = await snapshot();
    await expectRpcError(
      inventory.reserveStock({
        idempotencyKey: k,
        orderId: "ord-2",
        items: [{ productId: "ceramic-mug", quantity: 2 }],
      }),
      Code.ALREADY_EXISTS,
    );
    expect(await snapshot()).toBe(s);
  });

  it("rejects short stock with FAILED_PRECONDITION naming the product, and replays the rejection", async () => {
    const k = key();
    const req = { idempotencyKey: k, orderId: "ord-3", items: [{ productId: "limited-print", quantity: 2 }] };
    const s = await stock();
    const err = await expectRpcError(inventory.reserveStock(req), Code.FAILED_PRECONDITION);
    const pf = err.details.find((d) => isMessage(d, PreconditionFailureSchema));
    expect(pf && isMessage(pf, PreconditionFailureSchema) ? pf.violations.map((v) => v.subject) : []).toEqual([
      "products/limited-print",
    ]);
    // Stock is untouched; only the rejection is remembered under its key.
    expect(await stock()).toBe(s);
    // Even after a restock, the same key answers what it answered first.
    await inventory.restock({ idempotencyKey: key(), productId: "limited-print", quantity: 5 }, admin);
    await expectRpcError(inventory.reserveStock(req), Code.FAILED_PRECONDITION);
  });

  it("rejects bad input with INVALID_ARGUMENT naming the field, and changes nothing", async () => {
    const ok = { idempotencyKey: key(), orderId: "ord-4", items: [{ productId: "ceramic-mug", quantity: 1 }] };
    const cases: [Partial<typeof ok> & Record<string, unknown>, string][] = [
      [{ idempotencyKey: "" }, "idempotency_key"],
      [{ orderId: "" }, "order_id"],
      [{ items: [] }, "items"],
      [{ items: [{ productId: "", quantity: 1 }] }, "items[0].product_id"],
      [{ items: [{ productId: "ceramic-mug", quantity: 0 }] }, "items[0].quantity"],
      [{ items: [{ productId: "ceramic-mug", quantity: -5 }] }, "items[0].quantity"],
      [
        {
          items: [
            { productId: "ceramic-mug", quantity: 1 },
            { productId: "ceramic-mug", quantity: 1 },
          ],
        },
        "items[1].product_id",
      ],
    ];
    const s = await snapshot();
    for (const [patch, field] of cases) {
      await expectRpcError(inventory.reserveStock({ ...ok, ...patch }), Code.INVALID_ARGUMENT, field);
    }
    await expectRpcError(inventory.releaseStock({ reservationId: "" }), Code.INVALID_ARGUMENT, "reservation_id");
    await expectRpcError(
      inventory.restock({ idempotencyKey: key(), productId: "ceramic-mug", quantity: 0 }, admin),
      Code.INVALID_ARGUMENT,
      "quantity",
    );
    await expectRpcError(
      inventory.restock({ idempotencyKey: key(), productId: "ceramic-mug", quantity: -1 }, admin),
      Code.INVALID_ARGUMENT,
      "quantity",
    );
    await expectRpcError(
      inventory.restock({ idempotencyKey: "", productId: "ceramic-mug", quantity: 1 }, admin),
      Code.INVALID_ARGUMENT,
      "idempotency_key",
    );
    expect(await snapshot()).toBe(s);
  });

  it("answers NOT_FOUND for unknown products and reservations without writing anything", async () => {
    const s = await snapshot();
    await expectRpcError(
      inventory.reserveStock({
        idempotencyKey: key(),
        orderId: "ord-5",
        items: [
          { productId: "ceramic-mug", quantity: 1 },
          { productId: "ghost", quantity: 1 },
        ],
      }),
      Code.NOT_FOUND,
    );
    await expectRpcError(inventory.releaseStock({ reservationId: "res_unknown" }), Code.NOT_FOUND);
    await expectRpcError(
      inventory.restock({ idempotencyKey: key(), productId: "ghost", quantity: 1 }, admin),
      Code.NOT_FOUND,
    );
    expect(await snapshot()).toBe(s);
  });

  it("never oversells: 100 concurrent reservations of 1 unit against stock 10 -> 10 reserved, 90 rejected", async () => {
    // The demo catalogue holds exactly 10 grinders and no other test touches them.
    const start = (await inventory.getProduct({ productId: "hand-grinder" })).product;
    expect(start?.available).toBe(10);
    const results = await Promise.allSettled(
      Array.from({ length: 100 }, (_, i) =>
        inventory.reserveStock({
          idempotencyKey: `burst-${i}`,
          orderId: `burst-order-${i}`,
          items: [{ productId: "hand-grinder", quantity: 1 }],
        }),
      ),
    );
    const ok = results.filter((r) => r.status === "fulfilled");
    const rejected = results.filter(
      (r) => r.status === "rejected" && (r.reason as { code?: number }).code === Code.FAILED_PRECONDITION,
    );
    expect(ok).toHaveLength(10);
    expect(rejected).toHaveLength(90);
    const end = (await inventory.getProduct({ productId: "hand-grinder" })).product;
    expect(end?.available).toBe(0);
    expect(end?.reserved).toBe((start?.reserved ?? 0) + 10);
  });

  it("restocks only for an admin identity", async () => {
    const s = await snapshot();
    const req = { idempotencyKey: key(), productId: "paper-filters", quantity: 1 };
    await expectRpcError(inventory.restock(req), Code.UNAUTHENTICATED);
    await expectRpcError(
      inventory.restock(req, { metadata: identityMetadata({ subject: "carol", roles: ["customer"] }) }),
      Code.PERMISSION_DENIED,
    );
    expect(await snapshot()).toBe(s);
  });

  it("never restocks a product past the most it may hold: FAILED_PRECONDITION, and it stays readable", async () => {
    // ~2,100 restocks of the largest allowed quantity used to overflow int32 and break GetProduct.
    await app.store.db.run(sql`UPDATE products SET available = 999999990 - reserved WHERE id = 'ceramic-mug'`);
    const s = await snapshot();
    await expectRpcError(
      inventory.restock({ idempotencyKey: key(), productId: "ceramic-mug", quantity: 11 }, admin),
      Code.FAILED_PRECONDITION,
    );
    expect(await snapshot()).toBe(s);
    const ok = await inventory.restock({ idempotencyKey: key(), productId: "ceramic-mug", quantity: 10 }, admin);
    expect((ok.product?.available ?? 0) + (ok.product?.reserved ?? 0)).toBe(MAX_STOCK);
    expect((await inventory.getProduct({ productId: "ceramic-mug" })).product?.id).toBe("ceramic-mug");
    expect((await inventory.listProducts({ pageSize: 100 })).products.length).toBeGreaterThan(0);
  });

  it("restocks idempotently by key", async () => {
    const k = key();
    const a = (await inventory.restock({ idempotencyKey: k, productId: "paper-filters", quantity: 10 }, admin)).product;
    const b = (await inventory.restock({ idempotencyKey: k, productId: "paper-filters", quantity: 10 }, admin)).product;
    expect(b?.available).toBe(a?.available);
    await expectRpcError(
      inventory.restock({ idempotencyKey: k, productId: "paper-filters", quantity: 11 }, admin),
      Code.ALREADY_EXISTS,
    );
  });

  it("answers a repeated restock with the first answer, the product as that restock left it, whatever came since", async () => {
    // It answered with the product as it was at the repeat: a retry after another restock read as if its own had added more.
    const k = key();
    const first = (await inventory.restock({ idempotencyKey: k, productId: "paper-filters", quantity: 3 }, admin))
      .product;
    await inventory.restock({ idempotencyKey: key(), productId: "paper-filters", quantity: 7 }, admin);
    const again = (await inventory.restock({ idempotencyKey: k, productId: "paper-filters", quantity: 3 }, admin))
      .product;
    expect(again).toEqual(first);
    const now = (await inventory.getProduct({ productId: "paper-filters" })).product;
    expect(now?.available).toBe((first?.available ?? 0) + 7);
  });

  it("answers 20 callers of one restock near the cap alike: the units added once, nobody told it would overflow", async () => {
    // On PostgreSQL the callers that lost the race waited on the product's row, then found it full with
    // the winner's units and answered FAILED_PRECONDITION, though their restock had been made (hc, 2026-12-06).
    await app.store.db.run(sql`UPDATE products SET available = ${MAX_STOCK - 15} - reserved WHERE id = 'hand-grinder'`);
    const req = { idempotencyKey: key(), productId: "hand-grinder", quantity: 10 };
    const answers = await Promise.all(
      Array.from({ length: 20 }, () =>
        inventory.restock(req, admin).then(
          (r) => `OK ${r.product?.available}`,
          (e: unknown) => String(e),
        ),
      ),
    );
    const product = (await inventory.getProduct({ productId: "hand-grinder" })).product;
    expect(new Set(answers)).toEqual(new Set([`OK ${product?.available}`]));
    expect((product?.available ?? 0) + (product?.reserved ?? 0)).toBe(MAX_STOCK - 5);
  });
});
