/**
 * Module boundaries, enforced rather than hoped for (STYLE.md 4, 5, 16):
 * the runtime knows no business, services never reach into each other, the
 * gateway reaches services only over the wire, and nothing re-exports
 * wholesale. Reads the import lines of every source file.
 */
import { readdirSync, readFileSync, statSync } from "node:fs";
import { join, relative } from "node:path";
import { describe, expect, it } from "vitest";
import { ROOT } from "./fixtures.js";

/** Every non-test .ts file under `dir` (relative to the root). */
function sources(dir: string): string[] {
  const out: string[] = [];
  for (const name of readdirSync(join(ROOT, dir))) {
    const path = join(dir, name);
    if (statSync(join(ROOT, path)).isDirectory()) out.push(...sources(path));
    else if (name.endsWith(".ts") && !name.endsWith(".test.ts")) out.push(path);
  }
  return out;
}

/** The module specifiers `file` imports, resolved to repository paths for relative ones. */
function importsOf(file: string): string[] {
  const text = readFileSync(join(ROOT, file), "utf8");
  return [...text.matchAll(/^(?:import|export)[^;]*?from "([^"]+)";/gms)].map(([, spec]) =>
    spec?.startsWith(".") ? relative(ROOT, join(ROOT, file, "..", spec)) : (spec ?? ""),
  );
}

/** Every contract under gen/shopmesh/ but the runtime's own (common types, the chaos service): a new service's too. */
const BUSINESS_CONTRACTS = /^gen\/shopmesh\/(?!common\/|chaos\/)/;

describe("module boundaries", () => {
  it("platform imports no service, no gateway, no contracts side and no business contract", () => {
    const offending = sources("platform").flatMap((f) =>
      importsOf(f)
        .filter((i) => /^(services|gateway|contracts|scripts)\//.test(i) || BUSINESS_CONTRACTS.test(i))
        .map((i) => `${f} -> ${i}`),
    );
    expect(offending).toEqual([]);
  });

  it("contracts/ builds on gen/ and the runtime only", () => {
    const offending = sources("contracts").flatMap((f) =>
      importsOf(f)
        .filter((i) => /^(services|gateway|scripts)\//.test(i))
        .map((i) => `${f} -> ${i}`),
    );
    expect(offending).toEqual([]);
  });

  it("a service imports gen/, platform/, contracts/ and its own folder, never another service or the gateway", () => {
    const offending = sources("services").flatMap((f) => {
      const own = f.split("/")[1];
      return importsOf(f)
        .filter((i) => i.startsWith("gateway/") || (i.startsWith("services/") && i.split("/")[1] !== own))
        .map((i) => `${f} -> ${i}`);
    });
    expect(offending).toEqual([]);
  });

  it("the gateway reaches services only over the wire", () => {
    const offending = sources("gateway").flatMap((f) =>
      importsOf(f)
        .filter((i) => i.startsWith("services/"))
        .map((i) => `${f} -> ${i}`),
    );
    expect(offending).toEqual([]);
  });

  it("the web shop, a browser bundle, reaches outside web/ only for gen/ and the pure rules it shares with the gateway", () => {
    // What it shares imports only what it shares: no Node module, no runtime, nothing that needs a server.
    const shared = ["gateway/claims.ts", "gateway/jwt-members.ts", "platform/identity-rule.ts", "platform/clip.ts"];
    const sharedJs = shared.map((f) => f.replace(/\.ts$/, ".js"));
    const repo = /^(web|gen|gateway|platform|services|contracts|scripts|test|bench)\//;
    const offending = [
      ...sources("web/src").flatMap((f) =>
        importsOf(f)
          .filter((i) => repo.test(i) && !i.startsWith("web/") && !i.startsWith("gen/") && !sharedJs.includes(i))
          .map((i) => `${f} -> ${i}`),
      ),
      ...shared.flatMap((f) =>
        importsOf(f)
          .filter((i) => !sharedJs.includes(i))
          .map((i) => `${f} -> ${i}`),
      ),
    ];
    expect(offending).toEqual([]);
  });

  // What a module loads, following its relative imports (type-only ones load nothing): files and packages.
  const loadedBy = (start: string): Set<string> => {
    const loaded = new Set<string>();
    const visit = (file: string) => {
      if (loaded.has(file)) return;
      loaded.add(file);
      const text = readFileSync(join(ROOT, file), "utf8").replace(/^(?:import|export) type [^;]*;/gms, "");
      for (const [, spec = ""] of text.matchAll(/^(?:import|export)[^;]*?from "([^"]+)";/gms)) {
        if (spec.startsWith(".")) visit(relative(ROOT, join(ROOT, file, "..", spec)).replace(/\.js$/, ".ts"));
        else loaded.add(spec);
      }
    };
    visit(start);
    return loaded;
  };
  const RUNTIME = /^(platform\/(index|bus|db|host)\.ts|@nats-io\/|kysely|better-sqlite3|pg$|@connectrpc\/)/;

  it("the load generator, started for every round of make bench and make compare, loads no bus, database or runtime entry", () => {
    // platform/index.ts loads all of the runtime: ~0.4 s of CPU at each round's start, which make compare has dozens of.
    const loaded = loadedBy("bench/load.ts");
    expect(loaded).toContain("platform/grpc-client.ts");
    expect([...loaded].filter((m) => RUNTIME.test(m))).toEqual([]);
  });

  it("the operator commands load the runtime's modules by name, never its entry file (all of the runtime)", () => {
    // Through the entry file each started on ~0.9 s of CPU before doing anything (make events, make demo:
    // 0.35-0.4 s now). make restore loads the services' migrations, which load it: it runs for minutes.
    const commands = ["token", "events", "demo", "trace", "alerts", "backup", "history-rebuild", "run", "load"];
    const loading = commands.filter((c) => loadedBy(`scripts/${c}.ts`).has("platform/index.ts"));
    expect(loading).toEqual([]);
  });

  it("make token, which prints a line, loads the gateway's configuration and nothing of the runtime beyond it", () => {
    // Through the runtime's entry file it took ~0.9 s of CPU (0.3 s now); tests and docs ask for a token often.
    const loaded = loadedBy("scripts/token.ts");
    expect(loaded).toContain("gateway/config.ts");
    expect([...loaded].filter((m) => RUNTIME.test(m) || /^@grpc\/|^@opentelemetry\/|^cockatiel$/.test(m))).toEqual([]);
  });

  it("nothing re-exports wholesale, and the runtime and the gateway keep one idea per file (≤ 350 lines)", () => {
    const all = ["platform", "contracts", "services", "gateway", "scripts"].flatMap(sources);
    expect(all.filter((f) => /^export \* from/m.test(readFileSync(join(ROOT, f), "utf8")))).toEqual([]);
    const long = ["platform", "gateway"]
      .flatMap(sources)
      .map((f) => [f, readFileSync(join(ROOT, f), "utf8").split("\n").length] as const)
      .filter(([, n]) => n > 350);
    expect(long).toEqual([]);
  });
});
