/** Notification service configuration: every variable it reads, parsed once. */
import { DEFAULT_PORTS } from "../../contracts/ports.js";
import { type ConfigOf, commonEnv, faultEnv, int, parseEnv, str } from "../../platform/index.js";

const spec = {
  // commonEnv brings NATS_URL (default nats://127.0.0.1:4222).
  ...commonEnv,
  ...faultEnv,
  /** gRPC port (0 = any free port). */
  GRPC_PORT: int(DEFAULT_PORTS.notification, { min: 0, max: 65535 }),
  /** SQLite file of this service. */
  DB_PATH: str(".data/notification.db"),
} as const;

/** The parsed notification configuration. */
export type NotificationConfig = ConfigOf<typeof spec>;

/** Parses the notification configuration from `env`; throws ConfigError naming each bad variable. */
export function loadConfig(env: Readonly<Record<string, string | undefined>>): NotificationConfig {
  return parseEnv(spec, env);
}
