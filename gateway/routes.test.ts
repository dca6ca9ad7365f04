/** The routing table against the contracts: what is public, what is internal, who may call what. */

import { readdirSync, readFileSync } from "node:fs";
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

describe("docs", () => {
  /** The method names in a cell of a docs table ("ListProducts, Restock (admin)", "a / b"), in order. */
  const names = (cell: string) => [...cell.matchAll(/\b[A-Z]\w*/g)].map((m) => m[0]);

  it("docs/contracts.md lists each routed service's public RPCs as ROUTES routes them, the rest as internal", () => {
    const doc = readFileSync(join(ROOT, "docs", "contracts.md"), "utf8");
    for (const r of ROUTES) {
      const row = new RegExp(`^\\|[^|]*\\|[^|]*\\| \`${r.service.name}\` \\|([^|]*)\\|([^|]*)\\|`, "m").exec(doc);
      expect(row, `a row for ${r.service.name} in docs/contracts.md`).not.toBeNull();
      const internal = r.service.methods.map((m) => m.name).filter((m) => !r.methods.includes(m));
      expect(names(row?.[1] ?? "").sort(), `${r.service.name}'s public RPCs`).toEqual([...r.methods].sort());
      expect(names(row?.[2] ?? "").sort(), `${r.service.name}'s internal RPCs`).toEqual(internal.sort());
      // Both ways: a public RPC marked (admin) that is not is as wrong as an admin's left unmarked.
      const marked = [...(row?.[1] ?? "").matchAll(/(\w+) \(admin/g)].map((m) => m[1]);
      expect(marked.sort(), `${r.service.name}'s RPCs marked (admin)`).toEqual([...(r.adminOnly ?? [])].sort());
    }
  });

  it("docs/deploy.md's caller graph names exactly the RPCs the gateway may call on each upstream", () => {
    const doc = readFileSync(join(ROOT, "docs", "deploy.md"), "utf8");
    const rows = [...doc.matchAll(/^\| ([a-z, ]+) \| gateway: ([^;|]*)/gm)];
    for (const r of ROUTES) {
      const row = rows.find((m) => m[1]?.split(", ").includes(r.upstream));
      expect(row, `a row for ${r.upstream} in docs/deploy.md's caller graph`).toBeDefined();
      // A row may name several upstreams ("notification, history"): it lists all their RPCs, and no other
      // (one the gateway may not call, ChargePayment say, listed there passed).
      const upstreams = row?.[1]?.split(", ") ?? [];
      const routed = ROUTES.filter((u) => upstreams.includes(u.upstream)).flatMap((u) => u.methods);
      expect(names(row?.[2] ?? "").sort(), `${row?.[1]}: the gateway's RPCs`).toEqual(routed.sort());
    }
  });
});
