/** Pure inventory rules. */
import { describe, expect, it } from "vitest";
import { NotFoundError } from "../../platform/errors.js";
import { OutOfStockError, type ProductRecord, planReservation } from "./domain.js";

const product = (id: string, available: number, currency = "USD"): ProductRecord => ({
  id,
  name: id,
  priceMinor: 100,
  currency,
  available,
  reserved: 0,
});
const stock = (...ps: ProductRecord[]) => new Map(ps.map((p) => [p.id, p]));

describe("planReservation", () => {
  it("reserves all lines when every product has enough, totalling the price", () => {
    expect(
      planReservation(
        [
          { productId: "a", quantity: 2 },
          { productId: "b", quantity: 1 },
        ],
        stock(product("a", 2), product("b", 5)),
      ),
    ).toEqual({
      kind: "reserve",
      lines: [
        { productId: "a", quantity: 2 },
        { productId: "b", quantity: 1 },
      ],
      totalMinor: 300,
      currency: "USD",
    });
  });

  it("lists every short product and reserves nothing", () => {
    const plan = planReservation(
      [
        { productId: "a", quantity: 3 },
        { productId: "b", quantity: 1 },
        { productId: "c", quantity: 9 },
      ],
      stock(product("a", 2), product("b", 5), product("c", 0)),
    );
    expect(plan).toEqual({
      kind: "short",
      shortages: [
        { productId: "a", requested: 3, available: 2 },
        { productId: "c", requested: 9, available: 0 },
      ],
    });
    expect(new OutOfStockError(plan.kind === "short" ? plan.shortages : []).details).toHaveLength(1);
  });

  it("refuses unknown products and mixed currencies", () => {
    expect(() => planReservation([{ productId: "x", quantity: 1 }], stock())).toThrow(NotFoundError);
    expect(() =>
      planReservation(
        [
          { productId: "a", quantity: 1 },
          { productId: "b", quantity: 1 },
        ],
        stock(product("a", 1), product("b", 1, "EUR")),
      ),
    ).toThrow(/currencies/);
  });
});
