/** Env parsing: defaults, ranges, and one error naming every bad variable. */
import { describe, expect, it } from "vitest";
import { bool, ConfigError, commonEnv, type EnvReader, int, num, oneOf, parseEnv, str, target } from "./config.js";

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

/** The value `reader` makes of `raw`, or the problem it names. */
function read<T>(reader: { read(name: string, raw: string | undefined): T }, raw: string): T | string {
  try {
    return parseEnv({ X: reader }, { X: raw }).X as T;
  } catch (err) {
    return (err as ConfigError).problems.join("\n");
  }
}

describe("hostile values", () => {
  it("an integer is decimal digits: hex, binary, octal, exponents and leading zeros are refused, not converted", () => {
    // Number() read SHUTDOWN_GRACE_MS=0x10 as 16 ms and GRPC_PORT=1e3 as 1000, silently.
    for (const raw of ["0x10", "0b11", "0o7", "1e3", "010", "5s", "5000ms", "1.5", "1e309", "9007199254740993"]) {
      expect(read(int(5), raw), raw).toMatch(/^X=.* is not a decimal integer|out of range/);
    }
    expect(read(int(5), "0x10")).toBe('X="0x10" is not a decimal integer');
    expect(read(int(5), " 42 ")).toBe(42);
    expect(read(int(5), "-3")).toBe(-3);
    expect(read(int(5), "0")).toBe(0);
  });

  it("a number is decimal: hex and the like are refused", () => {
    expect(read(num(0), "0x1")).toBe('X="0x1" is not a decimal number');
    expect(read(num(0), "Infinity")).toBe('X="Infinity" is not a decimal number');
    expect(read(num(0), "0.25")).toBe(0.25);
    expect(read(num(0), ".5")).toBe(0.5);
    expect(read(num(0), "1e-3")).toBe(0.001);
  });

  it("a string of only spaces is unset, as for every other reader (DATABASE_URL=' ' chose PostgreSQL at host 'base')", () => {
    expect(read(str("d"), "   ")).toBe("d");
    expect(read(str(), " ")).toBe("X is required");
    expect(read(commonEnv.DATABASE_URL, " ")).toBe("");
  });

  it("NATS_URL is off or URLs a NATS client can dial, refused in a line otherwise", () => {
    const nats = commonEnv.NATS_URL;
    expect(read(nats, "off")).toBe("off");
    expect(read(nats, "nats://a:4222,tls://b:4223,c")).toBe("nats://a:4222,tls://b:4223,c");
    for (const raw of ["nats://127.0.0.1:99999", "nats://", "http://x:4222", "nats://a,,nats://b", "off,nats://a"]) {
      expect(read(nats, raw), raw).toMatch(/^X=.* must be off or NATS server URLs/);
    }
    // A password in it is not repeated in the problem (it is printed, and logged).
    expect(read(nats, "nats://u:secret@h:0")).not.toContain("secret");
  });

  it("DATABASE_URL is empty or a postgres:// URL, and a problem with it never repeats its password", () => {
    const url = commonEnv.DATABASE_URL;
    expect(read(url, "postgres://u:p@h:5432/db")).toBe("postgres://u:p@h:5432/db");
    for (const ok of ["postgresql://h/db", "postgres://u@/db", "socket:/var/run/postgresql?db=x", "/tmp shopmesh"]) {
      expect(read(url, ok), ok).toBe(ok);
    }
    expect(read(url, "not a url")).toMatch(/^X must be a postgres:\/\/ URL/);
    expect(read(url, "mysql://u:hunter2@h/db")).not.toContain("hunter2");
    expect(read(url, "postgres://h:99999/db")).toMatch(/^X must be a postgres/);
  });

  it("a gRPC target is host:port, ipv4:/ipv6: lists, dns:///name:port, registry:///name or unix:path", () => {
    for (const ok of [
      "127.0.0.1:50051",
      "inventory:50051",
      "[::1]:50051",
      "ipv4:10.0.0.1:1,10.0.0.2:2",
      "ipv6:[::1]:50051",
      "dns:///inventory.shopmesh.svc:50051",
      "registry:///inventory",
      "unix:/tmp/x.sock",
    ]) {
      expect(read(target("d:1"), ok), ok).toBe(ok);
    }
    // Before: "ipv4:" and "registry:///" died at start with a stack trace; a port past 65535 was
    // taken and every call failed.
    for (const bad of ["ipv4:", "registry:///", "127.0.0.1:99999", "127.0.0.1", "dns:///x", "http://x:1", "a:1,b:2"]) {
      expect(read(target("d:1"), bad), bad).toMatch(/^X=.* must be a gRPC target/);
    }
    expect(read(target("d:1"), " ")).toBe("d:1");
  });

  it("OTEL_EXPORTER_OTLP_ENDPOINT is empty or an http(s) URL (notaurl threw from the exporter: a stack trace, exit 1)", () => {
    const otlp = commonEnv.OTEL_EXPORTER_OTLP_ENDPOINT;
    expect(read(otlp, "http://otel-collector:4318")).toBe("http://otel-collector:4318");
    expect(read(otlp, "")).toBe("");
    for (const bad of ["notaurl", "otel-collector:4318", "grpc://c:4317", "http://c:99999"]) {
      expect(read(otlp, bad), bad).toMatch(/^X=.* must be an http:\/\/ or https:\/\/ URL/);
    }
  });
});

describe("hostile values (review)", () => {
  it("NATS_URL refuses ws:// and wss://, which the Node client refuses at connect (a stack trace, exit 1, restarted for ever)", () => {
    for (const raw of ["ws://a:443", "wss://a:443", "nats://a:4222,WSS://b:443"]) {
      expect(read(commonEnv.NATS_URL, raw), raw).toMatch(/^X=.* must be off or NATS server URLs/);
    }
  });

  it("a refused URL never repeats its password, whatever the password holds (a base64 one holds '/')", () => {
    const cases: [EnvReader<string>, string, string][] = [
      [commonEnv.DATABASE_URL, "postgres://shop:Zm9v/YmFy+@db/shop", "Zm9v/YmFy+"],
      [commonEnv.DATABASE_URL, "postgres://shop:a b@db:99999/shop", "a b"],
      [commonEnv.DATABASE_URL, "postgres://shop:a,b@db:99999/shop", "a,b"],
      [commonEnv.DATABASE_URL, "postgres://db:99999/shop?password=hunter2", "hunter2"],
      [commonEnv.NATS_URL, "nats://pay:Zm9v/YmFy@127.0.0.1:4222", "Zm9v/YmFy"],
      [commonEnv.NATS_URL, "nats://pay:p@ss@127.0.0.1:4222", "p@ss"],
      [commonEnv.NATS_URL, "pay:hunter2@127.0.0.1:99999", "hunter2"],
      [commonEnv.NATS_URL, "nats://a:4222,pay:hunter2@b:99999", "hunter2"],
    ];
    for (const [reader, raw, password] of cases) {
      const said = read(reader, raw);
      expect(said, raw).toMatch(/^X\b.* must be/);
      expect(said, raw).not.toContain(password);
    }
  });
});

it("a long refused number is refused at once (the decimal pattern backtracked: 1 s on 30 kB of digits, 19 s on 120 kB)", () => {
  const started = performance.now();
  expect(read(num(0), `${"1".repeat(120_000)}x`)).toMatch(/is not a decimal number$/);
  expect(performance.now() - started).toBeLessThan(1_000);
});
