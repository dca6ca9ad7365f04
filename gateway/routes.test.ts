/** The routing table against the contracts: what is public, what is internal, who may call what. */

import { readdirSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import type { DescService } from "@bufbuild/protobuf";
import { describe, expect, it } from "vitest";
import { routesOf } from "../contracts/http-rules.js";
import { http } from "../gen/google/api/annotations_pb.js";
import { ChaosService } from "../gen/shopmesh/chaos/v1/chaos_pb.js";
import { ROOT } from "../test/fixtures.js";
import { ROUTES } from "./routes.js";

/** Every service generated from proto/shopmesh. */
async function generatedServices(): Promise<DescService[]> {
  const dir = join(ROOT, "gen", "shopmesh");
  const files = readdirSync(dir, { recursive: true, encoding: "utf8" }).filter((f) => f.endsWith("_pb.ts"));
  const modules = await Promise.all(files.map((f) => import(pathToFileURL(join(dir, f)).href)));
  return modules
    .flatMap((m) => Object.values(m as Record<string, { kind?: string }>))
    .filter((v): v is DescService => v?.kind === "service");
}

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

  it("routes exactly the methods that declare a REST route: a route needs both, and the OpenAPI document reads only the annotation", async () => {
    // Every service in gen/shopmesh but the gateway's own (GatewayService, OperatorService): a new
    // service's annotations count here without editing this test.
    const services = (await generatedServices()).filter((s) => !s.typeName.startsWith("shopmesh.gateway."));
    const annotated = services.flatMap((s) =>
      s.methods.filter((m) => routesOf(m, http).length > 0).map((m) => `${s.typeName}/${m.name}`),
    );
    const routed = ROUTES.flatMap((r) => r.methods.map((m) => `${r.service.typeName}/${m}`));
    expect(routed.sort()).toEqual(annotated.sort());
  });
});
