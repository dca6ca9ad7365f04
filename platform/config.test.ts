/** Env parsing: defaults, ranges, and one error naming every bad variable. */
import { describe, expect, it } from "vitest";
import { bool, ConfigError, commonEnv, int, num, oneOf, parseEnv, str } from "./config.js";

const spec = {
  PORT: int(50051, { min: 0, max: 65535 }),
  DB: str(),
  ON: bool(false),
  RATE: num(0, { min: 0, max: 1 }),
  MODE: oneOf(["a", "b"], "a"),
};

describe("parseEnv", () => {
  it("applies defaults and parses values into a frozen object", () => {
    const c = parseEnv(spec, { DB: "x.db", ON: "yes", RATE: "0.5", MODE: "b" });
    expect(c).toEqual({ PORT: 50051, DB: "x.db", ON: true, RATE: 0.5, MODE: "b" });
    expect(Object.isFrozen(c)).toBe(true);
  });

  it("reports every bad variable by name in one error", () => {
    let err: unknown;
    try {
      parseEnv(spec, { PORT: "70000", ON: "maybe", RATE: "x", MODE: "c" });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ConfigError);
    const problems = (err as ConfigError).problems.join("\n");
    for (const name of ["PORT", "DB", "ON", "RATE", "MODE"]) expect(problems).toContain(name);
  });
});

describe("local defaults", () => {
  it("listen on loopback only: a laptop never exposes services that trust identity metadata", () => {
    const c = parseEnv(commonEnv, {});
    expect(c.GRPC_HOST).toBe("127.0.0.1");
    expect(c.METRICS_HOST).toBe("127.0.0.1");
  });
});
