/** Page sizes and page tokens: what a client may send, and what it gets for anything else. */
import { describe, expect, it } from "vitest";
import { violatedField as field } from "../test/rpc.js";
import { decodePageToken, encodePageToken, Pages, pageSize } from "./paging.js";

const shape = { t: "integer", id: "string" } as const;
const LIST = "shopmesh.order.v1.OrderService/ListOrders";

describe("pageSize", () => {
  it("defaults 0, accepts 1..max, refuses the rest rather than capping", () => {
    expect(pageSize(0)).toBe(20);
    expect(pageSize(1)).toBe(1);
    expect(pageSize(100)).toBe(100);
    expect(pageSize(0, "page_size", 10)).toBe(10);
    for (const bad of [101, -1, 1.5, Number.NaN]) expect(field(() => pageSize(bad))).toBe("page_size");
  });
});

describe("page tokens", () => {
  it("round-trip the cursor they were made from", () => {
    const token = encodePageToken(LIST, { t: 1_700_000_000_000, id: "ord_1" });
    expect(decodePageToken(LIST, token, shape)).toEqual({ t: 1_700_000_000_000, id: "ord_1" });
    expect(decodePageToken(LIST, "", shape)).toBeUndefined();
  });

  it("refuse made-up, altered, truncated and mis-shaped tokens, naming page_token", () => {
    const real = encodePageToken(LIST, { t: 1, id: "a" });
    const [body, sum] = real.split(".") as [string, string];
    const forged = Buffer.from(JSON.stringify({ t: 2, id: "a" })).toString("base64url");
    const cases = [
      "bm9wZQ", // base64 of "nope", no checksum
      forged, // plausible JSON without a checksum
      `${forged}.${sum}`, // someone else's checksum
      `${body}.${sum.slice(1)}`, // truncated
      `${real}.x`, // extra part
      encodePageToken(LIST, { t: "1", id: "a" }), // wrong type, correct checksum
      encodePageToken(LIST, { t: 1.5, id: "a" }), // not an integer
      encodePageToken(LIST, { t: 1 }), // missing key
      encodePageToken(LIST, { t: 1, id: "a", extra: "b" }), // extra key
      encodePageToken(LIST, { t: 1, id: "x".repeat(257) }), // too long
      encodePageToken(LIST, { t: 1, id: "a\u0000b" }), // a NUL, which PostgreSQL's text cannot hold
      "%%%",
      // Characters base64url has not, or not there: Node's decoder skips them, and the token read as
      // the one it was altered from (2026-12-06).
      `${body}!!!.${sum}`,
      `${body.slice(0, 4)}*${body.slice(4)}.${sum}`,
      `${body}==.${sum}`,
      ` ${body}.${sum}`,
      `${body}\n.${sum}`,
      encodePageToken("shopmesh.notification.v1.NotificationService/ListNotifications", { t: 1, id: "a" }), // another List's
    ];
    for (const t of cases)
      expect(
        field(() => decodePageToken(LIST, t, shape)),
        t,
      ).toBe("page_token");
    expect(field(() => decodePageToken(LIST, real, shape, "cursor"))).toBe("no error");
  });
});

describe("Pages", () => {
  it("gives a token only when a further row exists, which only the same List takes", () => {
    const pages = new Pages("shopmesh.inventory.v1.InventoryService/ListProducts", { after: "string" });
    const rows = [{ id: "a" }, { id: "b" }, { id: "c" }];
    const first = pages.of(rows, 2, (r) => ({ after: r.id }));
    expect(first.page).toEqual([{ id: "a" }, { id: "b" }]);
    expect(pages.cursor(first.nextPageToken)).toEqual({ after: "b" });
    expect(pages.of(rows, 3, (r) => ({ after: r.id })).nextPageToken).toBe("");
    const other = new Pages("shopmesh.order.v1.OrderService/ListOrders", { after: "string" });
    expect(field(() => other.cursor(first.nextPageToken))).toBe("page_token");
  });
});
