/** The in-process test system (system.ts) as the tests meet it when a part of it cannot start. */
import { execFileSync } from "node:child_process";
import { expect, it } from "vitest";
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
