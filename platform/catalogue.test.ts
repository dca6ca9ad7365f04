/** The pure rules of the catalogue: which subjects a consumer's filter selects, and a consumer's filter. */
import { describe, expect, it } from "vitest";
import { EVENTS } from "../contracts/events.js";
import { SagaMode } from "../gen/shopmesh/common/v1/common_pb.js";
import { consumerFilter, selects } from "./catalogue.js";

describe("selects", () => {
  it("reads NATS wildcards: * one token, > one or more, none every subject", () => {
    const cases: [string | undefined, string, boolean][] = [
      [undefined, "inventory.stock.reserved.choreography", true],
      ["inventory.stock.reserved.choreography", "inventory.stock.reserved.choreography", true],
      ["inventory.stock.reserved.choreography", "inventory.stock.released.choreography", false],
      ["inventory.*.*.choreography", "inventory.stock.released.choreography", true],
      ["inventory.*.*.choreography", "inventory.stock.released.orchestration", false],
      ["inventory.*.*.choreography", "inventory.stock.released", false],
      ["inventory.*.*.choreography", "inventory.stock.released.choreography.x", false],
      ["payment.payment.refunded.*", "payment.payment.refunded.none", true],
      ["inventory.>", "inventory.stock.reserved.none", true],
      ["inventory.>", "inventory", false],
    ];
    expect(cases.map(([f, s]) => selects(f, s))).toEqual(cases.map(([, , want]) => want));
  });
});

describe("consumerFilter", () => {
  it("is one type's subject, a mode's wildcard, or none", () => {
    const handler = async () => {};
    const reserved = ["shopmesh.inventory.v1.StockReserved", handler] as const;
    const released = ["shopmesh.inventory.v1.StockReleased", handler] as const;
    const choreography = SagaMode.CHOREOGRAPHY;
    expect(consumerFilter(EVENTS, { stream: "INVENTORY", handlers: [reserved], sagaMode: choreography })).toBe(
      "inventory.stock.reserved.choreography",
    );
    expect(
      consumerFilter(EVENTS, { stream: "INVENTORY", handlers: [reserved, released], sagaMode: choreography }),
    ).toBe("inventory.*.*.choreography");
    expect(consumerFilter(EVENTS, { stream: "INVENTORY", handlers: [reserved, released] })).toBeUndefined();
  });
});
