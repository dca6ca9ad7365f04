/**
 * The README's first-screen calls work verbatim: every `curl` and
 * `npx buf curl` command in it is run against a real gateway in front of the
 * real system (only the host:port and $TOKEN are substituted), and its
 * `make demo` sample is what `make demo` prints. grpcurl is
 * not installable here; its lines use the same paths and reflection that
 * `buf curl --list-methods` proves in gateway.test.ts.
 */
import { execFile } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { GatewayApp } from "../gateway/app.js";
import { signDevToken } from "../gateway/auth.js";
import { DEV_JWT_SECRET } from "../gateway/config.js";
import { built, ROOT } from "./fixtures.js";
import { type System, startSystem, startTestGateway } from "./system.js";

const run = promisify(execFile);
let sys: System;
let gw: GatewayApp;

beforeAll(async () => {
  sys = await startSystem();
  gw = await startTestGateway(sys);
});
afterAll(async () => {
  await gw.stop();
  await sys[Symbol.asyncDispose]();
});

/** Shell commands of the README's code blocks that start with `prefix`, continuation lines joined. */
function readmeCommands(prefix: RegExp): string[] {
  const text = readFileSync(join(ROOT, "README.md"), "utf8").replace(/\\\n\s*/g, "");
  const blocks = [...text.matchAll(/```sh\n([\s\S]*?)```/g)].map((m) => m[1] ?? "");
  return blocks.flatMap((b) => b.split("\n")).filter((l) => prefix.test(l));
}

describe("README", () => {
  it("its curl and buf curl calls through the gateway work verbatim", async () => {
    const commands = readmeCommands(/^(ORDER=\$\()?(curl|npx buf curl) .*localhost:8080/);
    expect(commands.length).toBeGreaterThanOrEqual(2);
    const token = await signDevToken(
      { JWT_SECRET: DEV_JWT_SECRET, JWT_ISSUER: "shopmesh-dev", JWT_AUDIENCE: "shopmesh" },
      "alice",
      ["customer"],
    );
    const host = gw.url.replace("http://", "");
    const env: Record<string, string> = { TOKEN: token };
    const sh = async (cmd: string) =>
      (
        await run("bash", ["-c", cmd.replaceAll("localhost:8080", host)], {
          cwd: ROOT,
          env: { ...process.env, ...env },
        })
      ).stdout;
    const seen = new Set<string>();
    for (const cmd of commands) {
      const stdout = await sh(cmd);
      if (cmd.includes("/v1/products/")) {
        seen.add("rest get");
        expect(JSON.parse(stdout), cmd).toMatchObject({ id: "coffee-beans", unitPrice: { currencyCode: "USD" } });
      } else if (cmd.startsWith("ORDER=")) {
        seen.add("rest post");
        const id = await sh(`${cmd}\nprintf '%s' "$ORDER"`);
        // The POST inside, again: "the same key again returns the same order" (as it is now).
        const post = cmd.replace(/^ORDER=\$\(/, "").replace(/ \| node -p .*\)$/, "");
        expect(post, cmd).toMatch(/^curl -s -X POST .*\/v1\/orders .*tok_visa"\}'$/);
        const order = JSON.parse(await sh(post));
        expect(order, cmd).toMatchObject({ id, customerId: "alice" });
        env.ORDER = id;
      } else if (cmd.includes(":watch")) {
        seen.add("rest watch");
        const lines = stdout
          .trim()
          .split("\n")
          .map((l) => JSON.parse(l));
        expect(lines.at(-1), cmd).toMatchObject({ result: { id: env.ORDER, status: "ORDER_STATUS_CONFIRMED" } });
      } else {
        seen.add("rpc");
        expect(JSON.parse(stdout), cmd).toMatchObject({ product: { id: "coffee-beans" } });
      }
    }
    expect([...seen].sort()).toEqual(["rest get", "rest post", "rest watch", "rpc"]);
  });

  it("its `make demo` sample is what make demo prints, ids and address aside", async () => {
    const readme = readFileSync(join(ROOT, "README.md"), "utf8");
    const sample = /```\n(placing [\s\S]*?)```/.exec(readme)?.[1];
    expect(sample, "README's make demo sample").toBeDefined();
    // `make demo` as a user types it (node_modules counts as installed: no `npm ci` under other suites).
    const { stdout } = await run("make", ["--no-print-directory", "-o", "node_modules/.package-lock.json", "demo"], {
      cwd: ROOT,
      env: { ...process.env, ORDER_TARGET: sys.order.address, INVENTORY_TARGET: sys.inventory.address },
    });
    const shape = (text: string) =>
      text
        .trimEnd()
        .split("\n")
        .map((l) =>
          l
            .replace(/\b(ord|res|pay)_[0-9a-z]+/g, "$1_<id>")
            .replace(/ through \S+ as /, " through <address> as ")
            .trimEnd(),
        );
    expect(shape(stdout)).toEqual(shape(sample ?? ""));
  });

  it("its token command prints a token the gateway accepts", async () => {
    const { stdout } = await run(process.execPath, [...built("scripts/token.ts"), "alice", "customer"], { cwd: ROOT });
    const res = await fetch(`${gw.url}/shopmesh.inventory.v1.InventoryService/GetProduct`, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${stdout.trim()}` },
      body: '{"product_id":"coffee-beans"}',
    });
    expect(res.status).toBe(200);
  });
});
