/**
 * Process lifecycle: start a service from validated config, and shut it down
 * cleanly on SIGTERM/SIGINT (a second signal exits at once).
 */
import { ConfigError } from "./config.js";
import type { Logger } from "./log.js";

/** Something that can be stopped, e.g. a running service. */
export interface Stoppable {
  stop(): Promise<void>;
}

/**
 * Runs a process: `loadConfig` (a ConfigError exits 78 with the message
 * naming each bad variable), then `start`; on SIGTERM or SIGINT calls
 * `stop()` and exits 0, or 1 if stopping failed.
 */
export async function runProcess<C>(
  loadConfig: () => C,
  start: (config: C) => Promise<{ log: Logger; service: Stoppable }>,
): Promise<void> {
  let config: C;
  try {
    config = loadConfig();
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`${err.message}\n`);
      process.exit(78); // EX_CONFIG
    }
    throw err;
  }
  const { log, service } = await start(config);
  let stopping = false;
  const onSignal = (signal: NodeJS.Signals) => {
    if (stopping) {
      log.warn({ signal }, "second signal: exiting now");
      process.exit(130);
    }
    stopping = true;
    log.info({ signal }, "shutting down");
    service.stop().then(
      () => {
        log.info("stopped");
        process.exit(0);
      },
      (err: unknown) => {
        log.error({ err }, "shutdown failed");
        process.exit(1);
      },
    );
  };
  process.on("SIGTERM", onSignal);
  process.on("SIGINT", onSignal);
}
