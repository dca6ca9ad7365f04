/**
 * The Python client's contract test (clients/python, pytest) against a real
 * system and gateway: stubs generated from proto/ by protoc and grpcio, gRPC
 * over cleartext HTTP/2, the way a team outside this repository would call
 * it. Needs python3 with grpcio, protobuf and pytest, protoc and
 * grpc_python_plugin (.ci/run installs them from Debian).
 */
import { execFile } from "node:child_process";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, expect, it } from "vitest";
import type { GatewayApp } from "../gateway/app.js";
import { signDevToken } from "../gateway/auth.js";
import { DEV_JWT_SECRET } from "../gateway/config.js";
import { runToEnd } from "./fixtures.js";
import { type System, startSystem, startTestGateway } from "./system.js";

const PACKAGES = "protobuf-compiler protobuf-compiler-grpc python3-grpcio python3-protobuf python3-pytest";
const claims = { JWT_SECRET: DEV_JWT_SECRET, JWT_ISSUER: "shopmesh-dev", JWT_AUDIENCE: "shopmesh" };

let sys: System;
let gw: GatewayApp;

beforeAll(async () => {
  sys = await startSystem();
  gw = await startTestGateway(sys);
});
afterAll(async () => {
  await gw?.stop();
  await sys?.[Symbol.asyncDispose]();
});

/**
 * The first interpreter that has grpc, protobuf and pytest: python3 on PATH,
 * else Debian's, where apt-get puts python3-grpcio when PATH leads to
 * another Python (pyenv, a venv).
 */
async function python(): Promise<string | undefined> {
  for (const candidate of ["python3", "/usr/bin/python3"]) {
    try {
      await promisify(execFile)(candidate, ["-c", "import grpc, google.protobuf, pytest"]);
      return candidate;
    } catch {}
  }
  return undefined;
}

it("passes the Python client's contract test through the gateway (pytest, gRPC)", async () => {
  const interpreter = await python();
  expect(interpreter, `no python3 with grpc, protobuf and pytest: apt-get install ${PACKAGES}`).toBeDefined();
  const { code, out } = await runToEnd(interpreter as string, ["-m", "pytest", "-q", join("clients", "python")], {
    env: {
      ...process.env,
      SHOPMESH_GATEWAY: gw.url,
      SHOPMESH_TOKEN: await signDevToken(claims, "alice", ["customer"]),
      SHOPMESH_OTHER_TOKEN: await signDevToken(claims, "bob", ["customer"]),
      PYTHONDONTWRITEBYTECODE: "1",
    },
  });
  // pytest -q ends with its summary: "7 passed in 1.23s" (or "... failed, ... passed in ...").
  const summary = out
    .trim()
    .split("\n")
    .reverse()
    .find((l) => /\b(passed|failed|error|errors|no tests ran)\b/.test(l));
  console.log(`python contract test: ${summary?.replace(/^=+ | =+$/g, "") ?? "(no summary)"}`);
  expect(code, `pytest exited ${code}:\n${out}`).toBe(0);
}, 120_000);
