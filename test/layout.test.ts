/**
 * How the system's processes are started: from their build, the services and
 * the gateway with the node flags `make run` and `make bench` share, any
 * other script without them.
 */
import { existsSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { expect, it } from "vitest";
import { DEFAULT_PORTS } from "../contracts/ports.js";
import { UPSTREAMS } from "../gateway/routes.js";
import { nodeCommand, ROOT, SERVICE_NAMES, SYSTEM, systemNodeFlags } from "../scripts/layout.js";

/** Every process of the system, by its folder. */
const FOLDERS = SYSTEM.map((p) => (p.name === "gateway" ? "gateway" : `services/${p.name}`));

it("every service and the gateway has a bounded young generation", () => {
  for (const dir of FOLDERS) {
    expect(
      systemNodeFlags(`${dir}/main.ts`),
      `${dir}: add its main.ts to HEAP_LIMITS in scripts/layout.ts`,
    ).toContainEqual(expect.stringMatching(/^--max-semi-space-size=\d+$/));
  }
});

it("the saga's processes bound how far the old generation grows between full collections; the hot read paths do not", () => {
  for (const s of ["order", "payment", "notification", "history"]) {
    expect(systemNodeFlags(`services/${s}/main.ts`), s).toContainEqual(
      expect.stringMatching(/^--heap-growing-percent=\d+$/),
    );
  }
  for (const main of ["gateway/main.ts", "services/inventory/main.ts"]) {
    expect(systemNodeFlags(main).join(" "), main).not.toContain("--heap-growing-percent");
  }
});

it("a service or the gateway runs its build with its node flags before the caller's", () => {
  const [cmd, args] = nodeCommand("services/order/main.ts", ["--cpu-prof"]);
  expect(cmd).toBe(process.execPath);
  expect(args).toEqual([
    ...systemNodeFlags("services/order/main.ts"),
    "--cpu-prof",
    join(ROOT, "dist", "services", "order", "main.js"),
  ]);
});

it("any other script runs its build without them", () => {
  expect(systemNodeFlags("bench/load.ts")).toEqual([]);
  expect(nodeCommand("bench/load.ts")[1]).toEqual([join(ROOT, "dist", "bench", "load.js")]);
});

it("names the missing build", () => {
  expect(() => nodeCommand("services/nope/main.ts")).toThrow(/make build/);
});

it("runs every service there is, and every upstream the gateway routes to (a missing one answered 503)", () => {
  const folders = readdirSync(join(ROOT, "services")).filter((d) => existsSync(join(ROOT, "services", d, "main.ts")));
  expect([...SERVICE_NAMES].sort(), "SYSTEM in scripts/layout.ts").toEqual(folders.sort());
  for (const u of UPSTREAMS) expect(SERVICE_NAMES, `add ${u} to SYSTEM in scripts/layout.ts`).toContain(u);
  expect(Object.keys(DEFAULT_PORTS).sort(), "DEFAULT_PORTS in contracts/ports.ts").toEqual([...SERVICE_NAMES].sort());
});

it("gives each process ports of its own: a new service's copied metrics port crashed one of the two at every start", () => {
  const ports = SYSTEM.flatMap((p) => [p.port, p.metrics]);
  expect(new Set(ports).size, "SYSTEM's ports and metrics ports in scripts/layout.ts").toBe(ports.length);
});
