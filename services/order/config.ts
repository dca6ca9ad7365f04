/** Order service configuration: every variable it reads, parsed once. */
import { DEFAULT_PORTS, localTarget } from "../../contracts/ports.js";
import {
  backoffProblems,
  ConfigError,
  type ConfigOf,
  commonEnv,
  faultEnv,
  int,
  oneOf,
  parseEnv,
  policyEnv,
  policyProblems,
  registryWithoutBus,
  str,
  target,
} from "../../platform/index.js";

const spec = {
  ...commonEnv,
  ...faultEnv,
  /** gRPC port (0 = any free port). */
  GRPC_PORT: int(DEFAULT_PORTS.order, { min: 0, max: 65535 }),
  /** SQLite file of this service (when DATABASE_URL is unset). */
  DB_PATH: str(".data/order.db"),
  /** gRPC target of the inventory service: host:port, dns:///name:port or registry:///inventory. */
  INVENTORY_TARGET: target(localTarget("inventory")),
  /** gRPC target of the payment service. */
  PAYMENT_TARGET: target(localTarget("payment")),
  /** Saga mode for PlaceOrder requests that leave it unspecified. */
  SAGA_DEFAULT_MODE: oneOf(["ORCHESTRATION", "CHOREOGRAPHY"], "ORCHESTRATION"),
  /** How long a forward saga step may keep failing transiently before the order is compensated, in ms. */
  SAGA_STEP_BUDGET_MS: int(15_000, { min: 100, max: 3_600_000 }),
  /** First saga-level retry backoff, in ms. */
  SAGA_RETRY_BASE_MS: int(200, { min: 1, max: 60_000 }),
  /** Largest saga-level retry backoff, in ms. */
  SAGA_RETRY_MAX_MS: int(5_000, { min: 1, max: 600_000 }),
  /** How long a saga lease lasts unrenewed: a dead replica's sagas are adopted by another within this, in ms. */
  SAGA_LEASE_MS: int(5_000, { min: 100, max: 600_000 }),
  /** Resilience policy of calls to inventory (INVENTORY_TIMEOUT_MS, INVENTORY_RETRY_MAX_ATTEMPTS, ...). */
  ...policyEnv("INVENTORY"),
  /** Resilience policy of calls to payment (PAYMENT_TIMEOUT_MS, PAYMENT_BULKHEAD_LIMIT, ...). */
  ...policyEnv("PAYMENT"),
} as const;

export type OrderConfig = ConfigOf<typeof spec>;

/** Parses the order configuration from `env`; throws ConfigError naming each bad variable. */
export function loadConfig(env: Readonly<Record<string, string | undefined>>): OrderConfig {
  const c = parseEnv(spec, env);
  const problems = [
    ...registryWithoutBus(c, ["INVENTORY_TARGET", "PAYMENT_TARGET"]),
    ...backoffProblems(c, "SAGA_RETRY_BASE_MS", "SAGA_RETRY_MAX_MS"),
    ...policyProblems("INVENTORY", c),
    ...policyProblems("PAYMENT", c),
  ];
  if (problems.length > 0) throw new ConfigError(problems);
  return c;
}
