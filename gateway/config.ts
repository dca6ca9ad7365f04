/** Gateway configuration: every variable it reads, parsed once. */

import { localTarget } from "../contracts/ports.js";
// The runtime's modules by name, not its entry file: make token and make load read this configuration
// and would otherwise load the whole runtime (bus, databases, telemetry) to print a line.
import {
  bool,
  ConfigError,
  type ConfigOf,
  commonEnv,
  type EnvReader,
  httpUrl,
  int,
  oneOf,
  parseEnv,
  registryWithoutBus,
  str,
  target,
} from "../platform/config.js";
import { DEFAULT_POLICY, policyEnv, policyProblems } from "../platform/policy-config.js";
import { UPSTREAMS, type Upstream } from "./routes.js";

/**
 * Development-only HS256 key. It signs the tokens `make token` prints and
 * works only because it is public: set JWT_SECRET, JWT_PUBLIC_KEY or
 * JWT_JWKS_URL for anything that is not a laptop.
 */
export const DEV_JWT_SECRET = "shopmesh-dev-secret-do-not-use-in-production";

/** The variable that names an upstream's address. */
type TargetVariable<U extends Upstream> = `${Uppercase<U>}_TARGET`;

/** The variable of an upstream's address: `ORDER_TARGET`. */
export function targetVariable<U extends Upstream>(upstream: U): TargetVariable<U> {
  return `${upstream.toUpperCase()}_TARGET` as TargetVariable<U>;
}

/**
 * A `*_TARGET` variable for each of the routing table's upstreams (host:port, dns:///name:port in
 * Kubernetes, or registry:///name for the NATS KV registry), defaulting to its service's address in
 * `make run` (`contracts/ports.ts`: an upstream without a port there does not compile).
 */
function targets() {
  return Object.fromEntries(UPSTREAMS.map((u) => [targetVariable(u), target(localTarget(u))])) as {
    readonly [U in Upstream as TargetVariable<U>]: EnvReader<string>;
  };
}

const spec = {
  LOG_LEVEL: commonEnv.LOG_LEVEL,
  LOG_FORMAT: commonEnv.LOG_FORMAT,
  SHUTDOWN_GRACE_MS: commonEnv.SHUTDOWN_GRACE_MS,
  NATS_URL: commonEnv.NATS_URL,
  NATS_USER: commonEnv.NATS_USER,
  NATS_PASSWORD: commonEnv.NATS_PASSWORD,
  OTEL_EXPORTER_OTLP_ENDPOINT: commonEnv.OTEL_EXPORTER_OTLP_ENDPOINT,
  TRACE_FILE: commonEnv.TRACE_FILE,
  TRACE_FILE_MAX_BYTES: commonEnv.TRACE_FILE_MAX_BYTES,
  TRACE_SAMPLE_RATIO: commonEnv.TRACE_SAMPLE_RATIO,
  TRACE_READ_SAMPLE_RATIO: commonEnv.TRACE_READ_SAMPLE_RATIO,
  METRICS_PORT: commonEnv.METRICS_PORT,
  METRICS_HOST: commonEnv.METRICS_HOST,
  /** HTTP listen address: loopback unless you mean to expose the gateway (Kubernetes sets 0.0.0.0). */
  HTTP_HOST: str("127.0.0.1"),
  /** HTTP port: Connect (JSON and binary), gRPC-Web and gRPC, over HTTP/1.1 and cleartext HTTP/2. */
  HTTP_PORT: int(8080, { min: 0, max: 65535 }),
  ...targets(),
  /** HS256 shared secret (default: the public development key). */
  JWT_SECRET: str(DEV_JWT_SECRET),
  /** PEM public key (SPKI) for RS256/ES256 tokens; takes precedence over JWT_SECRET. */
  JWT_PUBLIC_KEY: str(""),
  /** Algorithm of JWT_PUBLIC_KEY. */
  JWT_PUBLIC_KEY_ALG: oneOf(["RS256", "ES256"], "RS256"),
  /** JWKS URL for RS256/ES256 tokens; takes precedence over both keys above. */
  JWT_JWKS_URL: httpUrl(),
  /** Required `iss` claim. */
  JWT_ISSUER: str("shopmesh-dev"),
  /** Required `aud` claim. */
  JWT_AUDIENCE: str("shopmesh"),
  /** Longest token lifetime accepted (`exp - iat`), in seconds. */
  JWT_MAX_LIFETIME_S: int(86_400, { min: 60, max: 30 * 86_400 }),
  /** Clock difference tolerated on `iat`, `nbf` and `exp`, in seconds. */
  JWT_CLOCK_SKEW_S: int(30, { min: 0, max: 600 }),
  /** Requests per second per authenticated principal (token bucket refill). */
  RATE_LIMIT_RPS: int(50, { min: 1, max: 1_000_000 }),
  /** Burst per principal (bucket size). */
  RATE_LIMIT_BURST: int(100, { min: 1, max: 1_000_000 }),
  /** Requests per second per client IP, before authentication. */
  RATE_LIMIT_IP_RPS: int(200, { min: 1, max: 1_000_000 }),
  /** Burst per client IP. */
  RATE_LIMIT_IP_BURST: int(400, { min: 1, max: 1_000_000 }),
  /**
   * Largest request body in bytes (after decompression too). 64 KiB: the largest valid request, a
   * 50-line order, is under 10 KB of JSON, and a body costs its decoding — 1 MB took the gateway
   * 0.03-0.5 s of CPU and the order service up to as much again, tens of small calls' worth each,
   * within every rate limit. At most 4 MiB: the services refuse a larger message (their gRPC receive limit), and
   * that refusal — RESOURCE_EXHAUSTED, retried for a read, counted by the upstream's circuit breaker —
   * let one client's oversized calls open it for all.
   */
  MAX_BODY_BYTES: int(65_536, { min: 1_024, max: 4 * 1_048_576 }),
  /** Time a connection may take to send complete request headers (also: to send its first byte), in ms. */
  HTTP_HEADERS_TIMEOUT_MS: int(10_000, { min: 100, max: 300_000 }),
  /** Time a client may take to send a whole request, body included, in ms. */
  HTTP_REQUEST_TIMEOUT_MS: int(30_000, { min: 100, max: 3_600_000 }),
  /** A connection with no request in progress is closed after this long, in ms. */
  HTTP_IDLE_TIMEOUT_MS: int(30_000, { min: 100, max: 3_600_000 }),
  /** Open connections allowed from one client address (0: no limit). Behind a proxy, that is the proxy. */
  HTTP_MAX_CONNECTIONS_PER_IP: int(256, { min: 0, max: 1_000_000 }),
  /** Open connections allowed in all. */
  HTTP_MAX_CONNECTIONS: int(10_000, { min: 1, max: 1_000_000 }),
  /** Concurrent streams (calls) per HTTP/2 connection. */
  HTTP2_MAX_CONCURRENT_STREAMS: int(100, { min: 1, max: 10_000 }),
  /**
   * A call during which no byte moves either way for this long is cut, in ms: a client that does not
   * read its answer cannot hold it (and its memory). A WatchOrder quiet for longer ends; watch again.
   */
  HTTP_STREAM_IDLE_TIMEOUT_MS: int(60_000, { min: 100, max: 3_600_000 }),
  /** Calls in progress allowed from one client address; more are refused with 429 until some end. */
  HTTP_MAX_CALLS_PER_IP: int(256, { min: 1, max: 1_000_000 }),
  /** Calls in progress allowed in all. */
  HTTP_MAX_CALLS: int(4_096, { min: 1, max: 1_000_000 }),
  /** Streams (WatchOrder) one principal may hold open, from any number of addresses; more are refused with 429. */
  HTTP_MAX_STREAMS_PER_PRINCIPAL: int(32, { min: 1, max: 1_000_000 }),
  /**
   * Continue a client's W3C `traceparent` (only for clients that are tracers you run). Otherwise each
   * request starts its own trace and links the client's: no client can switch tracing off or join another trace.
   */
  TRUST_TRACEPARENT: bool(false),
  /** Comma-separated origins allowed by CORS ("*" for any); empty disables CORS. */
  CORS_ORIGINS: str("http://localhost:3000,http://127.0.0.1:3000"),
  /** Behind a proxy you control (e.g. the Istio ingress): take the client IP from the last X-Forwarded-For hop it appended. */
  TRUST_PROXY: bool(false),
  /**
   * The operator panel may set services' injected faults (OperatorService.SetServiceFaults): for
   * local runs and the kind fault overlay only. Off, the RPC is UNIMPLEMENTED and the panel hides it.
   */
  FAULT_INJECTION: bool(false),
  /**
   * The fast paths for routed unary calls — gRPC forwarded as bytes, Connect unary, REST (passthrough.ts,
   * connect-unary.ts, rest-serve.ts). false sends every call through connect-es's general handlers, which
   * give the same answers more slowly: to compare the two, or to rule a fast path out.
   */
  FAST_PATHS: bool(true),
  /** Deadline of a composed GetOrderDetails call, in ms. */
  COMPOSITION_TIMEOUT_MS: int(2_000, { min: 50, max: 60_000 }),
  /**
   * Resilience policy of calls to the upstreams (UPSTREAM_TIMEOUT_MS, ...). The bulkhead is sized so that
   * one client's allowed burst (RATE_LIMIT_IP_BURST) never meets it; beyond it, calls are shed with 429.
   */
  ...policyEnv("UPSTREAM", { ...DEFAULT_POLICY, bulkheadLimit: 128, bulkheadQueue: 512 }),
} as const;

export type GatewayConfig = ConfigOf<typeof spec>;

/** The shortest HS256 secret accepted, in bytes. */
const MIN_SECRET_BYTES = 32;

/** Addresses only this machine can reach. */
const LOOPBACK = new Set(["127.0.0.1", "::1", "localhost"]);

/** Parses the gateway configuration from `env`; throws ConfigError naming each bad variable. */
export function loadConfig(env: Readonly<Record<string, string | undefined>>): GatewayConfig {
  const c = parseEnv(spec, env);
  const problems = [...registryWithoutBus(c, UPSTREAMS.map(targetVariable)), ...policyProblems("UPSTREAM", c)];
  if (problems.length > 0) throw new ConfigError(problems);
  // One client within its rate limit must never be shed by the gateway's own bulkhead.
  if (c.UPSTREAM_BULKHEAD_LIMIT + c.UPSTREAM_BULKHEAD_QUEUE < c.RATE_LIMIT_IP_BURST) {
    throw new ConfigError([
      `UPSTREAM_BULKHEAD_LIMIT + UPSTREAM_BULKHEAD_QUEUE (${c.UPSTREAM_BULKHEAD_LIMIT} + ${c.UPSTREAM_BULKHEAD_QUEUE}) ` +
        `must be at least RATE_LIMIT_IP_BURST (${c.RATE_LIMIT_IP_BURST}): one client's allowed burst would be shed`,
    ]);
  }
  const devKey = c.JWT_SECRET === DEV_JWT_SECRET && !c.JWT_PUBLIC_KEY && !c.JWT_JWKS_URL;
  if (devKey && !LOOPBACK.has(c.HTTP_HOST)) {
    throw new ConfigError([
      `JWT_SECRET is the public development key, which anyone can sign tokens with: set JWT_SECRET, JWT_PUBLIC_KEY ` +
        `or JWT_JWKS_URL before listening beyond loopback (HTTP_HOST=${c.HTTP_HOST})`,
    ]);
  }
  // RFC 7518 §3.2: an HS256 key of fewer than 256 bits can be searched for offline from any one token
  // (a customer's), and then signs an admin's.
  const hs256 = !c.JWT_PUBLIC_KEY && !c.JWT_JWKS_URL;
  if (hs256 && !devKey && Buffer.byteLength(c.JWT_SECRET) < MIN_SECRET_BYTES) {
    throw new ConfigError([
      `JWT_SECRET has ${Buffer.byteLength(c.JWT_SECRET)} bytes: an HS256 secret needs at least ${MIN_SECRET_BYTES} ` +
        `(256 bits, RFC 7518 §3.2), e.g. \`openssl rand -base64 32\``,
    ]);
  }
  if (c.HTTP_HEADERS_TIMEOUT_MS > c.HTTP_REQUEST_TIMEOUT_MS) {
    throw new ConfigError([
      `HTTP_HEADERS_TIMEOUT_MS (${c.HTTP_HEADERS_TIMEOUT_MS}) must not exceed HTTP_REQUEST_TIMEOUT_MS (${c.HTTP_REQUEST_TIMEOUT_MS})`,
    ]);
  }
  return c;
}
