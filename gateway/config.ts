/** Gateway configuration: every variable it reads, parsed once. */
import { bool, type ConfigOf, commonEnv, int, oneOf, parseEnv, policyEnv, str } from "../platform/index.js";

/**
 * Development-only HS256 key. It signs the tokens `make token` prints and
 * works only because it is public: set JWT_SECRET, JWT_PUBLIC_KEY or
 * JWT_JWKS_URL for anything that is not a laptop.
 */
export const DEV_JWT_SECRET = "shopmesh-dev-secret-do-not-use-in-production";

const spec = {
  LOG_LEVEL: commonEnv.LOG_LEVEL,
  LOG_FORMAT: commonEnv.LOG_FORMAT,
  SHUTDOWN_GRACE_MS: commonEnv.SHUTDOWN_GRACE_MS,
  NATS_URL: commonEnv.NATS_URL,
  NATS_STREAM_REPLICAS: commonEnv.NATS_STREAM_REPLICAS,
  OTEL_EXPORTER_OTLP_ENDPOINT: commonEnv.OTEL_EXPORTER_OTLP_ENDPOINT,
  TRACE_FILE: commonEnv.TRACE_FILE,
  METRICS_PORT: commonEnv.METRICS_PORT,
  /** HTTP listen address. */
  HTTP_HOST: str("0.0.0.0"),
  /** HTTP port: Connect (JSON and binary), gRPC-Web and gRPC, over HTTP/1.1 and cleartext HTTP/2. */
  HTTP_PORT: int(8080, { min: 0, max: 65535 }),
  /** Upstream gRPC targets: host:port, dns:///name:port (Kubernetes) or registry:///name (NATS KV). */
  INVENTORY_TARGET: str("127.0.0.1:50051"),
  PAYMENT_TARGET: str("127.0.0.1:50052"),
  ORDER_TARGET: str("127.0.0.1:50053"),
  NOTIFICATION_TARGET: str("127.0.0.1:50054"),
  HISTORY_TARGET: str("127.0.0.1:50055"),
  /** HS256 shared secret (default: the public development key). */
  JWT_SECRET: str(DEV_JWT_SECRET),
  /** PEM public key (SPKI) for RS256/ES256 tokens; takes precedence over JWT_SECRET. */
  JWT_PUBLIC_KEY: str(""),
  /** Algorithm of JWT_PUBLIC_KEY. */
  JWT_PUBLIC_KEY_ALG: oneOf(["RS256", "ES256"], "RS256"),
  /** JWKS URL for RS256/ES256 tokens; takes precedence over both keys above. */
  JWT_JWKS_URL: str(""),
  /** Required `iss` claim. */
  JWT_ISSUER: str("shopmesh-dev"),
  /** Required `aud` claim. */
  JWT_AUDIENCE: str("shopmesh"),
  /** Requests per second per authenticated principal (token bucket refill). */
  RATE_LIMIT_RPS: int(50, { min: 1, max: 1_000_000 }),
  /** Burst per principal (bucket size). */
  RATE_LIMIT_BURST: int(100, { min: 1, max: 1_000_000 }),
  /** Requests per second per client IP, before authentication. */
  RATE_LIMIT_IP_RPS: int(200, { min: 1, max: 1_000_000 }),
  /** Burst per client IP. */
  RATE_LIMIT_IP_BURST: int(400, { min: 1, max: 1_000_000 }),
  /** Largest request body in bytes. */
  MAX_BODY_BYTES: int(1_048_576, { min: 1_024, max: 64 * 1_048_576 }),
  /** Comma-separated origins allowed by CORS ("*" for any); empty disables CORS. */
  CORS_ORIGINS: str("http://localhost:3000,http://127.0.0.1:3000"),
  /** Behind a proxy you control (e.g. the Istio ingress): take the client IP from the last X-Forwarded-For hop it appended. */
  TRUST_PROXY: bool(false),
  /** Deadline of a composed GetOrderDetails call, in ms. */
  COMPOSITION_TIMEOUT_MS: int(2_000, { min: 50, max: 60_000 }),
  ...policyEnv("UPSTREAM"),
} as const;

export type GatewayConfig = ConfigOf<typeof spec>;

/** Parses the gateway configuration from `env`; throws ConfigError naming each bad variable. */
export function loadConfig(env: Readonly<Record<string, string | undefined>>): GatewayConfig {
  return parseEnv(spec, env);
}
