/**
 * A hostile round on what a client's input becomes in the logs, metrics, traces and error messages
 * (2026-12-06), through every protocol of the gateway and against a service's gRPC port directly.
 * Each `describe` is one finding; each of its tests fails on the code it was written against.
 */
import http2 from "node:http2";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type ServiceProcess, spawnService, tempDir } from "./fixtures.js";

/** The lines `out` holds from character `from` on that are not one JSON object each. */
function notJson(out: string, from: number): string[] {
  return out
    .slice(from)
    .split("\n")
    .filter((line) => {
      if (line === "") return false;
      try {
        const v: unknown = JSON.parse(line);
        return v === null || typeof v !== "object" || Array.isArray(v);
      } catch {
        return true;
      }
    });
}

/** Sends one empty unary gRPC call of ListProducts to `port` with `headers`; resolves with its grpc-status. */
function call(port: number, headers: Record<string, string>): Promise<string> {
  return new Promise((resolve, reject) => {
    const session = http2.connect(`http://127.0.0.1:${port}`);
    session.on("error", reject);
    const stream = session.request({
      ":method": "POST",
      ":path": "/shopmesh.inventory.v1.InventoryService/ListProducts",
      "content-type": "application/grpc",
      te: "trailers",
      ...headers,
    });
    let status = "";
    stream.on("response", (h) => (status = String(h["grpc-status"] ?? status)));
    stream.on("trailers", (h) => (status = String(h["grpc-status"] ?? status)));
    stream.on("error", reject);
    stream.on("close", () => {
      session.close();
      resolve(status);
    });
    stream.resume();
    stream.end(Buffer.from([0, 0, 0, 0, 0]));
  });
}

describe("a header grpc-js takes for no metadata, sent to a service's port", () => {
  // grpc-js wrote "E Failed to add metadata entry <name>: <value>. Metadata string value "<value>"
  // contains illegal characters ..." to stderr with console.error for each header whose value is not
  // printable ASCII (a tab, Latin-1, a C1 control such as U+009B, CSI): raw, no JSON, the value twice
  // and whole. 100 headers of 600 bytes (60 KB, one call, answered OK) wrote 100 such lines, 137 KB;
  // a call costs a client a few bytes once HPACK has the header. At the default level nothing of it
  // is the operator's business: a malformed header is the caller's fault, as a bad token is.
  const dir = tempDir();
  let svc: ServiceProcess;
  let debug: ServiceProcess;
  beforeAll(async () => {
    const env = { NATS_URL: "off" };
    [svc, debug] = await Promise.all([
      spawnService("inventory", { ...env, DB_PATH: `${dir.path}/inventory.db` }, 60_000),
      spawnService("inventory", { ...env, DB_PATH: `${dir.path}/debug.db`, LOG_LEVEL: "debug" }, 60_000),
    ]);
  }, 70_000);
  afterAll(async () => {
    await svc?.[Symbol.asyncDispose]();
    await debug?.[Symbol.asyncDispose]();
    dir[Symbol.dispose]();
  });

  /** What `proc` writes for a call with 100 headers of 600 bytes that are no metadata. */
  const written = async (proc: ServiceProcess): Promise<{ written: string; notJson: string[] }> => {
    const from = proc.output().length;
    const headers: Record<string, string> = {};
    for (let i = 0; i < 100; i++) headers[`x-h${i}`] = `\u00ff\t\u009b31m${"z".repeat(600)}`;
    expect(await call(proc.port, headers)).toBe("0");
    // The call is answered; whatever it logs is written by then, but stderr may be read a moment later.
    expect(await call(proc.port, {})).toBe("0");
    await new Promise((r) => setTimeout(r, 300));
    return { written: proc.output().slice(from), notJson: notJson(proc.output(), from) };
  };

  it("writes nothing for it at the default level, and the process's output stays JSON lines", async () => {
    const out = await written(svc);
    expect(out.notJson.length, out.notJson.slice(0, 2).join("\n").slice(0, 300)).toBe(0);
    expect(out.written.length, out.written.slice(0, 300)).toBeLessThan(2_000);
  });

  it("at debug, says it in JSON lines of at most a few hundred characters of the header", async () => {
    const out = await written(debug);
    expect(out.notJson.length, out.notJson.slice(0, 2).join("\n").slice(0, 300)).toBe(0);
    const said = out.written.split("\n").filter((l) => l.includes("Failed to add metadata entry"));
    expect(said).toHaveLength(100);
    expect(Math.max(...said.map((l) => l.length))).toBeLessThan(1_000);
  });
});
