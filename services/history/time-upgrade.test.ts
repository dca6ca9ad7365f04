/**
 * A history view written before event times were held to what a Timestamp's JSON form can say
 * (0001-01-01 to 9999-12-31): an order listed by a time outside it made its customer's whole
 * history answer 500 on REST and Connect, and ingestion's clamp (factOf) left the rows already
 * stored as they were. The upgrade brings them in. Real store, SQLite or PostgreSQL per the run.
 */
import { create, toJson } from "@bufbuild/protobuf";
import { sql } from "kysely";
import { afterAll, expect, it } from "vitest";
import {
  ListOrderHistoryRequestSchema,
  ListOrderHistoryResponseSchema,
} from "../../gen/shopmesh/history/v1/history_pb.js";
import { openDatabase } from "../../platform/db.js";
import type { CallContext } from "../../platform/grpc.js";
import { identityMetadata } from "../../platform/identity.js";
import { TestDatabases } from "../../test/db.js";
import { tempDir } from "../../test/fixtures.js";
import { createHistoryApi } from "./api.js";
import { EARLIEST_TIMESTAMP_MS } from "./domain.js";
import { HistoryStore, MIGRATIONS } from "./store.js";

const dir = tempDir();
afterAll(() => dir[Symbol.dispose]());

/** The schema as the previous version left it (its first 5 migrations). */
const BEFORE = { sqlite: MIGRATIONS.sqlite.slice(0, 5), postgres: MIGRATIONS.postgres.slice(0, 5) };

it("an order listed before year 1 or past year 9999 by the previous version is listed at the bound after the upgrade, the history readable as JSON", async () => {
  const location = await new TestDatabases(dir.path).location("history");
  const old = await openDatabase(location, BEFORE);
  try {
    for (const [id, at] of [
      ["ord-bc", Date.parse("-000001-06-01T00:00:00Z")],
      ["ord-far", 1e16],
      ["ord-ok", Date.parse("2026-12-05T00:00:00Z")],
    ] as const) {
      await old.run(sql`INSERT INTO order_history (order_id, customer_id, status, items, reason, last_event_at,
          last_event_type, last_event_id) VALUES (${id}, 'tim', 'PENDING', '[]', '', ${at}, 'OrderPlaced', ${`e-${id}`})`);
    }
  } finally {
    await old.close();
  }
  const store = await HistoryStore.open(location);
  try {
    const ctx = { metadata: identityMetadata({ subject: "tim", roles: ["customer"] }) } as CallContext;
    const answer = await createHistoryApi({ store }).listOrderHistory(create(ListOrderHistoryRequestSchema), ctx);
    const json = toJson(ListOrderHistoryResponseSchema, create(ListOrderHistoryResponseSchema, answer)) as {
      entries: { orderId: string; lastEventAt: string }[];
    };
    expect(json.entries.map((e) => [e.orderId, e.lastEventAt])).toEqual([
      ["ord-far", "9999-12-31T23:59:59.999Z"],
      ["ord-ok", "2026-12-05T00:00:00Z"],
      ["ord-bc", "0001-01-01T00:00:00Z"],
    ]);
    expect((await store.listByCustomer("tim", undefined, 10)).at(-1)?.lastEventAt).toBe(EARLIEST_TIMESTAMP_MS);
  } finally {
    await store.close();
  }
});
