/** The routing table against the contracts: what is public, what is internal, who may call what. */
import { describe, expect, it } from "vitest";
import { ChaosService } from "../gen/shopmesh/chaos/v1/chaos_pb.js";
import { ROUTES } from "./routes.js";

describe("ROUTES", () => {
  it("names only methods the contracts declare, each service once", () => {
    expect(new Set(ROUTES.map((r) => r.service.typeName)).size).toBe(ROUTES.length);
    for (const r of ROUTES) {
      const declared = r.service.methods.map((m) => m.name);
      for (const m of r.methods) expect(declared, `${r.service.typeName}/${m}`).toContain(m);
      for (const m of r.adminOnly ?? []) expect(r.methods, `admin-only ${m} is routed`).toContain(m);
    }
  });

  it("keeps the saga's participant calls and fault injection internal", () => {
    const routed = ROUTES.flatMap((r) => r.methods.map((m) => `${r.service.typeName}/${m}`));
    for (const internal of [
      "shopmesh.inventory.v1.InventoryService/ReserveStock",
      "shopmesh.inventory.v1.InventoryService/ReleaseStock",
      "shopmesh.payment.v1.PaymentService/ChargePayment",
      "shopmesh.payment.v1.PaymentService/RefundPayment",
    ]) {
      expect(routed).not.toContain(internal);
    }
    expect(ROUTES.some((r) => r.service.typeName === ChaosService.typeName)).toBe(false);
    expect(ROUTES.flatMap((r) => r.adminOnly ?? [])).toEqual(["Restock"]);
  });
});
