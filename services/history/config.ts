/** History service configuration: every variable it reads, parsed once. */
import { DEFAULT_PORTS } from "../../contracts/ports.js";
import { bool, type ConfigOf, commonEnv, faultEnv, int, parseEnv, str } from "../../platform/index.js";

const spec = {
  // commonEnv brings NATS_URL (default nats://127.0.0.1:4222).
  ...commonEnv,
  ...faultEnv,
  /** gRPC port (0 = any free port). */
  GRPC_PORT: int(DEFAULT_PORTS.history, { min: 0, max: 65535 }),
  /** SQLite file of this service. */
  DB_PATH: str(".data/history.db"),
  /** The rebuild (rebuild.ts) only: swap in a rebuilt view although it lacks orders the live one has (their events aged out). */
  ALLOW_LOSS: bool(false),
  /** The rebuild only, for tests: kill the rebuild with SIGKILL once this many events of a stream are replayed (0: never). */
  FAULT_REBUILD_CRASH_AFTER: int(0, { min: 0, max: 1_000_000_000 }),
} as const;

/** The parsed history configuration. */
export type HistoryConfig = ConfigOf<typeof spec>;

/** Parses the history configuration from `env`; throws ConfigError naming each bad variable. */
export function loadConfig(env: Readonly<Record<string, string | undefined>>): HistoryConfig {
  return parseEnv(spec, env);
}
