/** Payment service configuration: every variable it reads, parsed once. */
import { DEFAULT_PORTS } from "../../contracts/ports.js";
import { type ConfigOf, commonEnv, faultEnv, int, parseEnv, str } from "../../platform/index.js";

const spec = {
  ...commonEnv,
  ...faultEnv,
  /** gRPC port (0 = any free port). */
  GRPC_PORT: int(DEFAULT_PORTS.payment, { min: 0, max: 65535 }),
  /** SQLite file of this service. */
  DB_PATH: str(".data/payment.db"),
} as const;

/** The parsed payment configuration. */
export type PaymentConfig = ConfigOf<typeof spec>;

/** Parses the payment configuration from `env`; throws ConfigError naming each bad variable. */
export function loadConfig(env: Readonly<Record<string, string | undefined>>): PaymentConfig {
  return parseEnv(spec, env);
}
