/**
 * Process lifecycle: validated config, tracing, the logger, the service, and
 * a clean shutdown on SIGTERM/SIGINT/SIGHUP (a second signal exits at once).
 */
import { constants } from "node:os";
import { installLeanAsyncBind } from "./async-bind.js";
import { configOrExit, EXIT_REFUSED, StartRefused } from "./config.js";
import { grpcLogsTo } from "./grpc-log.js";
import { createLogger, flushLogs, type Logger } from "./log.js";
import { SqliteConnection } from "./sqlite-driver.js";
import { startProcessTelemetry } from "./tracing.js";
import { WalSync } from "./wal-sync.js";

/** Something that can be stopped, e.g. a running service. */
export interface Stoppable {
  stop(): Promise<void>;
}

/** The config every process reads (see `commonEnv`). */
export interface ProcessConfig {
  readonly LOG_LEVEL: string;
  readonly LOG_FORMAT: "json" | "pretty";
  readonly OTEL_EXPORTER_OTLP_ENDPOINT: string;
  readonly TRACE_FILE: string;
  readonly TRACE_FILE_MAX_BYTES: number;
  readonly TRACE_SAMPLE_RATIO: number;
  readonly TRACE_READ_SAMPLE_RATIO: number;
}

/**
 * Runs the process of service `name`: `loadConfig` (a ConfigError exits 78
 * with a message naming each bad variable, as does a StartRefused from `start`), the lean `AsyncResource.bind`
 * (async-bind.ts), tracing, the logger, then
 * `start`; on SIGTERM, SIGINT or SIGHUP stops the service, flushes traces and exits
 * 0 (or 1 if stopping failed); SIGUSR1 opens no inspector. The signal handlers come first: a process
 * still starting (waiting for NATS or its database) exits at once on a
 * signal — not yet ready nor announced, it has taken no traffic, and an
 * event it may have begun is redelivered as after a crash — and node running
 * as PID 1 in a container, which has no default handlers, never ignores one.
 */
export async function runService<C extends ProcessConfig>(
  name: string,
  loadConfig: () => C,
  start: (config: C, log: Logger) => Promise<Stoppable>,
): Promise<void> {
  const config = configOrExit(loadConfig);
  let log: Logger | undefined;
  let service: Stoppable | undefined;
  let stopTracing: () => Promise<void> = async () => {};
  let stopping = false;
  const onSignal = (signal: NodeJS.Signals) => {
    if (!service) {
      log?.info({ signal }, "signal while starting: exiting");
      process.exit(0);
    }
    if (stopping) {
      log?.warn({ signal }, "second signal: exiting now");
      process.exit(128 + constants.signals[signal]); // as a shell reports it: 143 for SIGTERM, 130 for SIGINT
    }
    stopping = true;
    log?.info({ signal }, "shutting down");
    service
      .stop()
      .then(() => stopTracing())
      .then(
        () => {
          log?.info("stopped");
          process.exit(0);
        },
        (err: unknown) => {
          log?.error({ err }, "shutdown failed");
          process.exit(1);
        },
      );
  };
  process.on("SIGTERM", onSignal);
  process.on("SIGINT", onSignal);
  // A terminal closed over a process started by hand, a supervisor hanging up: Node's default for
  // SIGHUP ended it at once, its calls cut and nothing drained.
  process.on("SIGHUP", onSignal);
  // SIGUSR2 keeps Node's default (ends the process): the test and bench preloads take it as their own
  // control signal (test/fixtures/clock-step.ts steps the wall clock, bench/gc-watch.ts profiles GC).

  // Node's default for SIGUSR1 opens its inspector on 127.0.0.1:9229, and whatever reaches that port
  // (another process in the pod: a sidecar) may then run any code in this one. A listener replaces
  // that default (Node 20 has no --disable-sigusr1); --inspect still opens it on purpose.
  process.on("SIGUSR1", () =>
    log?.warn({ signal: "SIGUSR1" }, "SIGUSR1 ignored: the inspector opens only with --inspect"),
  );
  // A database log that could not be flushed takes no more writes: exit, to be restarted (by
  // `make run`, Kubernetes) and recover from what is on disk. No graceful stop: it would write.
  WalSync.onBroken = (err) => {
    log?.fatal({ err }, "the database log could not be flushed: exiting, to be restarted");
    flushLogs();
    process.exit(1);
  };
  // So does a file whose storage failed under a statement (an I/O error, its file system turned
  // read-only): answering UNAVAILABLE for good, with health SERVING, it kept its share of the traffic.
  SqliteConnection.onStorageFailed = (err, file) => {
    log?.fatal({ err }, `the database ${file}'s storage failed (an I/O error, or read-only): exiting, to be restarted`);
    flushLogs();
    process.exit(1);
  };
  // Before any HTTP/2 request: each would otherwise leave a bound function's hidden classes in the old generation.
  installLeanAsyncBind();
  // Tracing first: everything after it may create spans.
  const tracing = await startProcessTelemetry(name, config).then(
    (stop) => ({ stop }),
    (err: unknown) => ({ err }),
  );
  log = await createLogger({ service: name, level: config.LOG_LEVEL, format: config.LOG_FORMAT });
  grpcLogsTo(log); // grpc-js's own lines (a service's port, the gateway's clients): JSON, clipped, like every other
  if ("err" in tracing) {
    // A TRACE_FILE whose directory cannot be made (or written) was a stack trace before any log line.
    const why = tracing.err instanceof Error ? tracing.err.message : String(tracing.err);
    const fix = config.TRACE_FILE ? ": set TRACE_FILE to a file this process can write" : "";
    log.fatal({ err: tracing.err }, `tracing could not start: ${why}${fix}`);
    flushLogs();
    process.exit(EXIT_REFUSED);
  }
  stopTracing = tracing.stop;
  try {
    service = await start(config, log);
  } catch (err) {
    if (err instanceof StartRefused) {
      // Said once, in a line, with the code `make run` does not restart: a restart cannot change it.
      log.fatal(err.message);
      flushLogs();
      process.exit(EXIT_REFUSED);
    }
    const port = portInUse(err);
    if (port === undefined) log.fatal({ err }, `could not start: ${err instanceof Error ? err.message : String(err)}`);
    else {
      // One line a person can act on, instead of a stack trace: which port, and what moves it.
      const vars = Object.entries(config).flatMap(([k, v]) => (k.endsWith("_PORT") && Number(v) === port ? [k] : []));
      const move = vars.length ? `set ${vars.join(" or ")} to a free port` : "move it";
      log.fatal({ port }, `port ${port} is in use: stop what holds it, or ${move}`);
    }
    flushLogs();
    process.exit(1);
  }
}

/** The port of an "address in use" error (Node's listen, or grpc-js's bind that wraps it), or undefined. */
function portInUse(err: unknown): number | undefined {
  if (!(err instanceof Error)) return undefined;
  const e = err as NodeJS.ErrnoException & { port?: number };
  if (e.code === "EADDRINUSE" && typeof e.port === "number") return e.port;
  const m = /EADDRINUSE[^\n]*?:(\d+)\b/.exec(err.message);
  return m ? Number(m[1]) : undefined;
}
