/** Inventory service configuration: every variable it reads, parsed once. */
import { DEFAULT_PORTS } from "../../contracts/ports.js";
import { bool, type ConfigOf, commonEnv, faultEnv, int, parseEnv, str } from "../../platform/index.js";

const spec = {
  ...commonEnv,
  ...faultEnv,
  /** gRPC port (0 = any free port). */
  GRPC_PORT: int(DEFAULT_PORTS.inventory, { min: 0, max: 65535 }),
  /** SQLite file of this service (when DATABASE_URL is empty). */
  DB_PATH: str(".data/inventory.db"),
  /** Load the demo catalogue into an empty database on start. */
  SEED_CATALOGUE: bool(true),
} as const;

export type InventoryConfig = ConfigOf<typeof spec>;

/** Parses the inventory configuration from `env`; throws ConfigError naming each bad variable. */
export function loadConfig(env: Readonly<Record<string, string | undefined>>): InventoryConfig {
  return parseEnv(spec, env);
}
