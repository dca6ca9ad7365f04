/**
 * Typed configuration from environment variables, parsed and validated once.
 *
 * A service declares its variables as a spec of small readers (`str`, `int`,
 * `bool`, `oneOf`) and calls {@link parseEnv} once in its `config.ts`. Every
 * problem is collected and reported together, each naming its variable, so a
 * bad deployment fails at start with one readable message instead of later
 * with a confusing one.
 */

import { withoutPassword } from "./redact.js";

/** Default size at which the span file (span-file.ts) is rotated, bytes. */
export const DEFAULT_TRACE_FILE_MAX_BYTES = 50 * 1024 * 1024;

/** Thrown by {@link parseEnv}; `problems` lists one line per bad variable. */
export class ConfigError extends Error {
  override readonly name = "ConfigError";
  constructor(readonly problems: readonly string[]) {
    super(`invalid configuration:\n  ${problems.join("\n  ")}`);
  }
}

/**
 * The exit code of a start refused for a reason a restart cannot change (EX_CONFIG): its
 * configuration ({@link ConfigError}) or its data ({@link StartRefused}). `make run` does not
 * restart a process that exits with it, as it does any other.
 */
export const EXIT_REFUSED = 78;

/**
 * Thrown while starting for a reason a restart cannot change, other than a variable's value (a
 * database written by a newer build); the message names it and what to change. The process
 * exits {@link EXIT_REFUSED} with that one line.
 */
export class StartRefused extends Error {
  override readonly name = "StartRefused";
}

/** `load()`'s configuration, or its problems on stderr and exit 78 (EX_CONFIG), as a service does: no stack trace. */
export function configOrExit<C>(load: () => C): C {
  try {
    return load();
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    process.stderr.write(`${err.message}\n`);
    process.exit(EXIT_REFUSED);
  }
}

/** Reads one variable: returns its value or throws a message naming the problem. */
export interface EnvReader<T> {
  read(name: string, raw: string | undefined): T;
}

class Invalid extends Error {}

/** A string; `def` when unset, empty or only spaces. Without a default the variable is required. */
export function str(def?: string): EnvReader<string> {
  return {
    read(name, raw) {
      // Only spaces is unset, as for every other reader: DATABASE_URL=" " chose PostgreSQL at host "base".
      if (raw !== undefined && raw.trim() !== "") return raw;
      if (def !== undefined) return def;
      throw new Invalid(`${name} is required`);
    },
  };
}

const DECIMAL_INT = /^[+-]?(0|[1-9]\d*)$/;
const DECIMAL = /^[+-]?(\d+(\.\d*)?|\.\d+)(e[+-]?\d+)?$/i;

/** An integer in [min, max], in decimal digits (no 0x, exponent or leading zero); `def` when unset or empty. */
export function int(def: number, opts: { min?: number; max?: number } = {}): EnvReader<number> {
  const min = opts.min ?? Number.MIN_SAFE_INTEGER;
  const max = opts.max ?? Number.MAX_SAFE_INTEGER;
  return {
    read(name, raw) {
      if (raw === undefined || raw.trim() === "") return def;
      // Decimal digits only: Number() took SHUTDOWN_GRACE_MS=0x10 for 16 ms and GRPC_PORT=1e3 for 1000.
      if (!DECIMAL_INT.test(raw.trim())) throw new Invalid(`${name}=${JSON.stringify(raw)} is not a decimal integer`);
      const n = Number(raw.trim());
      if (n < min || n > max) throw new Invalid(`${name}=${n} is out of range ${min}..${max}`);
      return n;
    },
  };
}

/** An optional integer in [min, max]: undefined when unset or empty. */
function optionalInt(opts: { min?: number; max?: number } = {}): EnvReader<number | undefined> {
  const inner = int(0, opts);
  return {
    read(name, raw) {
      return raw === undefined || raw.trim() === "" ? undefined : inner.read(name, raw);
    },
  };
}

/** A number in [min, max], decimal (0.25, .5, 1e-3); `def` when unset or empty. */
export function num(def: number, opts: { min?: number; max?: number } = {}): EnvReader<number> {
  const min = opts.min ?? -Infinity;
  const max = opts.max ?? Infinity;
  return {
    read(name, raw) {
      if (raw === undefined || raw.trim() === "") return def;
      const n = Number(raw.trim());
      if (!DECIMAL.test(raw.trim()) || !Number.isFinite(n)) {
        throw new Invalid(`${name}=${JSON.stringify(raw)} is not a decimal number`);
      }
      if (n < min || n > max) throw new Invalid(`${name}=${n} is out of range ${min}..${max}`);
      return n;
    },
  };
}

const TRUE = new Set(["1", "true", "yes", "on"]);
const FALSE = new Set(["0", "false", "no", "off"]);

/** A boolean (1/0, true/false, yes/no, on/off); `def` when unset or empty. */
export function bool(def: boolean): EnvReader<boolean> {
  return {
    read(name, raw) {
      if (raw === undefined || raw.trim() === "") return def;
      const v = raw.trim().toLowerCase();
      if (TRUE.has(v)) return true;
      if (FALSE.has(v)) return false;
      throw new Invalid(`${name}=${JSON.stringify(raw)} is not a boolean (use true or false)`);
    },
  };
}

/** A string matching `re` (`what` says what that means); `def` when unset. */
function matching(re: RegExp, def: string, what: string): EnvReader<string> {
  return {
    read(name, raw) {
      const v = raw === undefined ? def : raw.trim();
      if (re.test(v)) return v;
      throw new Invalid(`${name}=${JSON.stringify(raw)} must be ${what}`);
    },
  };
}

/** One of a fixed set of strings; `def` when unset or empty. */
export function oneOf<const T extends string>(values: readonly T[], def: T): EnvReader<T> {
  return {
    read(name, raw) {
      if (raw === undefined || raw.trim() === "") return def;
      const v = raw.trim() as T;
      if (values.includes(v)) return v;
      throw new Invalid(`${name}=${JSON.stringify(raw)} must be one of ${values.join(", ")}`);
    },
  };
}

const HOST = /^([\w-]+(\.[\w-]+)*\.?|\[[\da-f:.]+\])$/i;
const isPort = (p: string | undefined) => p !== undefined && /^\d{1,5}$/.test(p) && +p >= 1 && +p <= 65535;

/** `host:port`, the port 1..65535. */
function isHostPort(s: string): boolean {
  const m = /^(.+):(\d+)$/.exec(s);
  return m !== null && HOST.test(m[1] as string) && isPort(m[2]);
}

/** One NATS server as the Node client dials it, `[nats|tls://][user[:pass]@]host[:port][/path]` (ws:// threw at connect). */
function isNatsServer(s: string): boolean {
  const m = /^(?:(?:nats|tls):\/\/)?(?:[^@/\s]*@)?([^/\s:]+|\[[\da-f:.]+\])(?::(\d+))?(\/\S*)?$/i.exec(s);
  return m !== null && HOST.test(m[1] as string) && (m[2] === undefined || isPort(m[2])) && s !== "off";
}

/**
 * NATS server URLs, comma separated, or `off` (any case); `def` when unset or empty. A port past
 * 65535 or an empty one died at connect with a TypeError's stack trace; "OFF" was dialled as a host.
 */
function natsUrls(def: string): EnvReader<string> {
  return {
    read(name, raw) {
      if (raw === undefined || raw.trim() === "") return def;
      if (raw.trim().toLowerCase() === "off") return "off";
      const servers = raw.split(",").map((x) => x.trim());
      if (servers.every(isNatsServer)) return servers.join(",");
      throw new Invalid(
        `${name}=${JSON.stringify(withoutPassword(raw))} must be off or NATS server URLs, comma separated ` +
          "(nats://host:4222, tls://host:4222, or host[:port]; not ws:// or wss://, which this client cannot dial)",
      );
    },
  };
}

/** A PostgreSQL URL (postgres://, postgresql://, socket:, or a socket directory), or empty (SQLite). Its value is not repeated in a problem unless without its password. */
function postgresUrl(): EnvReader<string> {
  return {
    read(name, raw) {
      if (raw === undefined || raw.trim() === "") return "";
      const v = raw.trim();
      if (v.startsWith("/")) return v; // "<socket directory> <database>", as pg reads it
      try {
        // A host left out before the path ("postgres://user@/db": the socket's default) parses as pg parses it.
        const u = new URL(URL.canParse(v) ? v : v.replace("@/", "@localhost/"));
        if (/^(postgres(ql)?|socket):$/.test(u.protocol) && (u.port === "" || isPort(u.port))) return v;
      } catch {}
      throw new Invalid(
        `${name} must be a postgres:// URL (postgres://user:password@host:5432/database), or empty for SQLite; ` +
          `got ${JSON.stringify(withoutPassword(v))}`,
      );
    },
  };
}

/** An http:// or https:// URL, or empty (off). "notaurl" threw from the OTLP exporter: a stack trace, exit 1. */
export function httpUrl(): EnvReader<string> {
  return {
    read(name, raw) {
      const v = raw?.trim() ?? "";
      if (v === "" || (URL.canParse(v) && /^https?:$/.test(new URL(v).protocol))) return v;
      throw new Invalid(`${name}=${JSON.stringify(withoutPassword(v))} must be an http:// or https:// URL, or empty`);
    },
  };
}

/** Whether `v` is a target platform/endpoints.ts follows (see its module comment), or grpc-js's `unix:path`. */
function isTarget(v: string): boolean {
  if (v.startsWith("registry:")) return /^registry:\/\/\/?[A-Za-z0-9_-]{1,64}$/.test(v);
  if (v.startsWith("dns:")) return isHostPort(v.replace(/^dns:(\/\/[^/]*)?\/?/, ""));
  if (v.startsWith("ipv4:") || v.startsWith("ipv6:")) return v.slice(5).split(",").every(isHostPort);
  if (v.startsWith("unix:")) return v.length > "unix:".length;
  return isHostPort(v);
}

/**
 * A gRPC target: `host:port`, `ipv4:a:port,b:port`, `dns:///name:port`, `registry:///name` or
 * `unix:path`; `def` when unset or empty. "ipv4:" and "registry:///" died at start with a stack
 * trace, and a port past 65535 was taken, every call to it failing.
 */
export function target(def: string): EnvReader<string> {
  return {
    read(name, raw) {
      if (raw === undefined || raw.trim() === "") return def;
      if (isTarget(raw.trim())) return raw.trim();
      throw new Invalid(
        `${name}=${JSON.stringify(raw)} must be a gRPC target: host:port, ipv4:host:port,..., dns:///name:port, ` +
          "registry:///name or unix:path",
      );
    },
  };
}

/**
 * The problems of the `registry:///` targets among `names` in `c` when NATS_URL is off: they could
 * never find an instance (the process died at start with a stack trace).
 */
export function registryWithoutBus(c: Readonly<Record<string, unknown>>, names: readonly string[]): string[] {
  if (c.NATS_URL !== "off") return [];
  return names
    .filter((n) => String(c[n]).startsWith("registry:"))
    .map((n) => `${n}=${String(c[n])} needs the event bus, and NATS_URL is off: set NATS_URL, or a host:port target`);
}

/** The parsed shape of a spec. */
export type ConfigOf<S extends Record<string, EnvReader<unknown>>> = {
  readonly [K in keyof S]: S[K] extends EnvReader<infer T> ? T : never;
};

/**
 * Parses `env` against `spec` (keys are the variable names) into a frozen
 * object. Throws {@link ConfigError} listing every bad variable.
 */
export function parseEnv<S extends Record<string, EnvReader<unknown>>>(
  spec: S,
  env: Readonly<Record<string, string | undefined>>,
): ConfigOf<S> {
  const out: Record<string, unknown> = {};
  const problems: string[] = [];
  for (const [name, reader] of Object.entries(spec)) {
    try {
      out[name] = reader.read(name, env[name]);
    } catch (err) {
      if (!(err instanceof Invalid)) throw err;
      problems.push(err.message);
    }
  }
  if (problems.length > 0) throw new ConfigError(problems);
  return Object.freeze(out) as ConfigOf<S>;
}

/** Variables every shopmesh process reads, with their defaults. */
export const commonEnv = {
  /** pino level: trace, debug, info, warn, error, fatal, silent. */
  LOG_LEVEL: oneOf(["trace", "debug", "info", "warn", "error", "fatal", "silent"], "info"),
  /** `json` (one JSON object per line, for machines) or `pretty` (for people). */
  LOG_FORMAT: oneOf(["json", "pretty"], "json"),
  /** Host to listen on: loopback by default, so a laptop never exposes services that trust identity metadata. */
  GRPC_HOST: str("127.0.0.1"),
  /** Replicas of each JetStream stream this process creates: 1 locally, 3 on a 3-node cluster. */
  NATS_STREAM_REPLICAS: int(1, { min: 1, max: 5 }),
  /** Host other processes reach this one at, as registered for client-side discovery. */
  GRPC_ADVERTISE_HOST: str("127.0.0.1"),
  /**
   * Register this instance in the NATS KV service registry, for callers with `registry:///` targets
   * (`make run`). False where callers find services by DNS (Kubernetes): the registry is then no
   * start dependency at all.
   */
  DISCOVERY_REGISTER: bool(true),
  /** NATS server URL(s), comma separated; "off" runs without the event bus (events wait in the outbox). */
  NATS_URL: natsUrls("nats://127.0.0.1:4222"),
  /**
   * The NATS user this process connects as, with NATS_PASSWORD (platform/bus-access.ts: each may
   * publish only its own events); empty: an anonymous connection, for a server without users.
   */
  NATS_USER: str(""),
  NATS_PASSWORD: str(""),
  /** Longest wait for in-flight calls on shutdown before they are cut, in ms. */
  SHUTDOWN_GRACE_MS: int(10_000, { min: 0, max: 120_000 }),
  /** OTLP/HTTP collector base URL (e.g. http://otel-collector:4318); empty: no OTLP export. */
  OTEL_EXPORTER_OTLP_ENDPOINT: httpUrl(),
  /** Append finished spans as JSON lines to this file (what `make trace` reads); empty: off. */
  TRACE_FILE: str(""),
  /** Size at which TRACE_FILE is rotated to `<file>.1` (so spans on disk stay under twice this), bytes. */
  TRACE_FILE_MAX_BYTES: int(DEFAULT_TRACE_FILE_MAX_BYTES, { min: 4096, max: 10 * 1024 * 1024 * 1024 }),
  /**
   * Share of new traces recorded, 0..1 (parent-based: a call inside a sampled trace is always
   * recorded, one inside an unsampled trace never). 1 records every order, as `make trace` expects.
   */
  TRACE_SAMPLE_RATIO: num(1, { min: 0, max: 1 }),
  /**
   * Share of new traces recorded whose first call only reads (a method declared
   * `idempotency_level = NO_SIDE_EFFECTS`: browsing, lookups), 0..1. Reads are most of the
   * traffic and each trace costs CPU; orders and every other change follow TRACE_SAMPLE_RATIO.
   */
  TRACE_READ_SAMPLE_RATIO: num(0.1, { min: 0, max: 1 }),
  /** Port of the /metrics and /healthz endpoint; unset: off, 0: any free port. */
  METRICS_PORT: optionalInt({ min: 0, max: 65535 }),
  /** PostgreSQL URL (postgres://user:pass@host:5432/db); empty: the SQLite file DB_PATH. */
  DATABASE_URL: postgresUrl(),
  /** The service's schema in DATABASE_URL's database; empty: shopmesh_<service>. */
  DATABASE_SCHEMA: matching(/^([a-z_][a-z0-9_]{0,62})?$/, "", "a lower-case SQL identifier"),
  /** Connections in the PostgreSQL pool. */
  DATABASE_POOL_SIZE: int(10, { min: 1, max: 200 }),
  /** Host the /metrics endpoint listens on (Kubernetes sets 0.0.0.0 for the scraper). */
  METRICS_HOST: str("127.0.0.1"),
} as const;
