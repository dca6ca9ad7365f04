/** The in-process test system (system.ts) as the tests meet it when a part of it cannot start. */
import { execFileSync, spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { expect, it } from "vitest";
import { ROOT } from "./fixtures.js";
import { startSystem } from "./system.js";

/** The nats-servers this (forked) test process runs. */
const natsServers = () => {
  try {
    return execFileSync("pgrep", ["-P", String(process.pid), "-x", "nats-server"], { encoding: "utf8" }).trim();
  } catch {
    return ""; // pgrep exits 1 when it finds none
  }
};

it("stops what it started when a later part cannot start: no nats-server or service outlives the failure", async () => {
  expect(natsServers()).toBe("");
  // History, the last part, refuses its configuration: inventory, payment, order and notification run by then.
  await expect(startSystem({ history: { GRPC_PORT: "not a port" } })).rejects.toThrow(/GRPC_PORT/);
  expect(natsServers()).toBe("");
});

it.each([
  ["exits", "process.exit(0)"],
  ["is ended by a signal (a worker's SIGTERM)", 'process.kill(process.pid, "SIGTERM")'],
])("a test process that %s without stopping its nats-server takes it and its data along", async (_, end) => {
  // A worker that crashes or is ended by a timeout never runs its teardown.
  const script = `import { startNats } from "./test/nats.ts"; const n = await startNats(); console.log(n.port, n.dir); ${end};`;
  const ran = spawnSync(process.execPath, ["--import", "tsx", "--input-type=module", "-e", script], {
    cwd: ROOT,
    encoding: "utf8",
  });
  const [port, dir = ""] = ran.stdout.trim().split(" ");
  expect(Number(port), ran.stderr).toBeGreaterThan(0);
  const server = () => {
    try {
      return execFileSync("pgrep", ["-f", `nats-server .* -p ${port}$`], { encoding: "utf8" }).trim();
    } catch {
      return "";
    }
  };
  for (let i = 0; i < 40 && server(); i++) await new Promise((r) => setTimeout(r, 50));
  expect(server()).toBe("");
  expect(dir).toContain("shopmesh-nats-");
  expect(existsSync(dir), dir).toBe(false);
});
