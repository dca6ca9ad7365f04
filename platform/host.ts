/**
 * The part every service's wiring shares: telemetry, fault injection, the
 * event machinery (outbox relay, consumers), the gRPC server, registration
 * for client-side discovery — and a shutdown in the one safe order:
 * deregister (clients stop picking this instance), drain calls, stop the
 * app's own work, stop consuming and publishing, close the database, stop
 * serving metrics. A service's `app.ts` opens its store, says what to serve
 * and consume, and adds only what is its own.
 */
import { type Bus, busAuthOf } from "./bus.js";
import type { EventCatalogue } from "./catalogue.js";
import { FaultInjector } from "./chaos.js";
import type { ConsumerSpec } from "./consumer-spec.js";
import { type Eventing, startEventing } from "./eventing.js";
import { watchReadiness } from "./health.js";
import type { Logger } from "./log.js";
import type { Outbox } from "./outbox.js";
import { announce } from "./registry.js";
import { type ServiceBinding, startGrpcServer } from "./server.js";
import type { Db } from "./sql.js";
import { type AppTelemetry, startAppTelemetry } from "./telemetry.js";

/** The config a host reads (commonEnv + faultEnv). */
export interface HostConfig {
  readonly GRPC_HOST: string;
  readonly GRPC_PORT: number;
  readonly GRPC_ADVERTISE_HOST: string;
  readonly DISCOVERY_REGISTER: boolean;
  readonly NATS_URL: string;
  readonly NATS_USER: string;
  readonly NATS_PASSWORD: string;
  readonly NATS_STREAM_REPLICAS: number;
  readonly METRICS_PORT: number | undefined;
  readonly METRICS_HOST: string;
  readonly SHUTDOWN_GRACE_MS: number;
  readonly FAULT_LATENCY_MS: number;
  readonly FAULT_ERROR_RATE: number;
  readonly FAULT_ERROR_CODE: number;
  readonly FAULT_DOWN: boolean;
  readonly FAULT_CRASH_BEFORE_PUBLISH: boolean;
  readonly FAULT_CRASH_AFTER_COMMIT: boolean;
}

/** What the host gives the app while it builds its services. */
export interface HostContext {
  readonly telemetry: AppTelemetry;
  /** The NATS connection, when the bus is on (e.g. for registry:/// upstreams). */
  readonly bus: Bus | undefined;
}

/** What the app builds: the gRPC services to serve, and parts of its own it wants handed back (`P`). */
export interface Built<P> {
  readonly services: readonly ServiceBinding[];
  readonly parts: P;
}

/** Options of {@link startHost}. */
export interface HostOptions<P> {
  /** Service name: logs, metrics, traces, events' source, registry entry. */
  readonly name: string;
  readonly config: HostConfig;
  readonly log: Logger;
  /** The service's database (its consumers' inbox lives there too). */
  readonly db: Db;
  /** The events on the bus (contracts/events.ts). */
  readonly catalogue: EventCatalogue;
  /** The service's outbox, if it publishes events. */
  readonly outbox?: Outbox;
  /** The service's event consumers, if any. */
  readonly consumers?: readonly ConsumerSpec[];
  /**
   * No other process writes this database (the order service on SQLite: `make run` starts one):
   * the relay takes back at start the outbox claims a crashed process left, instead of waiting them out.
   */
  readonly soleWriter?: boolean;
  /** Builds the services (and the app's own parts) once the bus and telemetry exist. */
  readonly build: (ctx: HostContext) => Built<P> | Promise<Built<P>>;
  /**
   * The app's own shutdown, after calls drained and before the bus stops (e.g. stop sagas, close
   * channels). `parts` is undefined when the start failed before they were built.
   */
  readonly stopApp?: (parts: P | undefined) => Promise<void> | void;
  /** Closes the app's database; also called when the start fails. */
  readonly close: () => Promise<void> | void;
}

/** A running service host. */
export interface Host<P = undefined> {
  readonly port: number;
  readonly address: string;
  readonly telemetry: AppTelemetry;
  readonly events: Eventing;
  /** What the app's `build` handed back. */
  readonly parts: P;
  /** Shuts down in order (see the module comment). */
  stop(): Promise<void>;
}

/**
 * Waits for a step of the stop (`what`: the app's own work, the event handlers in progress, the
 * database's close) until the stop's grace (`deadline`, from performance.now()) runs out, a second at
 * least, saying so while it waits; then leaves it (`left` says why that is safe) for the process to
 * exit. A handler held there (a lock an operator's transaction holds, a slow disk, injected latency),
 * the saga sweep behind such a lock, and then the pool's close, which waits for their connections,
 * kept the process past its grace without a word, until killed (Kubernetes, `make run`).
 */
async function stepWithin(step: () => Promise<void> | void, deadline: number, log: Logger, what: string, left: string) {
  const done = Promise.resolve()
    .then(step)
    .then(() => "done" as const);
  let timer: NodeJS.Timeout | undefined;
  const by = (ms: number) =>
    Promise.race([done, new Promise<"late">((r) => (timer = setTimeout(r, ms, "late")))]).finally(() =>
      clearTimeout(timer),
    );
  if ((await by(100)) === "done") return;
  const waitMs = Math.round(Math.max(1_000, deadline - performance.now()));
  log.info({ waitMs }, `waiting for ${what}`);
  if ((await by(waitMs)) === "done") return;
  log.warn({ waitMs }, `${what}: still not done at the end of the grace; ${left}`);
  done.catch((err: unknown) => log.warn({ err }, `${what}: failed`));
}

/** Starts a service: telemetry, events, server, registration. A failed start releases what it started. */
export async function startHost<P = undefined>(o: HostOptions<P>): Promise<Host<P>> {
  const { config, log } = o;
  const telemetry = await startAppTelemetry(o.name, config, log);
  const faults = FaultInjector.fromConfig(config);
  let events: Eventing | undefined;
  let built: Built<P> | undefined;
  try {
    events = await startEventing({
      url: config.NATS_URL,
      replicas: config.NATS_STREAM_REPLICAS,
      ...busAuthOf(config),
      service: o.name,
      catalogue: o.catalogue,
      db: o.db,
      log,
      telemetry,
      faults,
      crashBeforePublish: config.FAULT_CRASH_BEFORE_PUBLISH,
      crashAfterCommit: config.FAULT_CRASH_AFTER_COMMIT,
      soleWriter: o.soleWriter ?? false,
      ...(o.outbox ? { outbox: o.outbox } : {}),
      ...(o.consumers ? { consumers: o.consumers } : {}),
    });
    built = await o.build({ telemetry, bus: events.bus });
    const server = await startGrpcServer({
      host: config.GRPC_HOST,
      port: config.GRPC_PORT,
      services: built.services,
      faults,
      log,
      telemetry,
    });
    const registration = config.DISCOVERY_REGISTER
      ? await announce(events.bus, o.name, config.GRPC_ADVERTISE_HOST, server.port, log, config.NATS_STREAM_REPLICAS)
      : undefined;
    const readiness = watchReadiness(o.db, server.setReady, log);
    const running = events;
    const { parts } = built;
    let stopped: Promise<void> | undefined;
    return {
      port: server.port,
      address: server.address,
      telemetry,
      events: running,
      parts,
      // Once: a second stop (a test that stopped a service, then its system) waits for the first.
      stop() {
        stopped ??= (async () => {
          const deadline = performance.now() + config.SHUTDOWN_GRACE_MS;
          readiness.stop();
          await registration?.stop();
          await server.stop(config.SHUTDOWN_GRACE_MS);
          const adopted = "left: what it holds (saga leases) runs out and is taken over, as after a crash";
          await stepWithin(() => o.stopApp?.(parts), deadline, log, "the service's own work to stop", adopted);
          const redelivered = "left: their events, never acknowledged, are redelivered";
          await stepWithin(() => running.stop(), deadline, log, "the event handlers in progress", redelivered);
          const rolledBack = "left: what its connections hold rolls back as the process exits";
          await stepWithin(o.close, deadline, log, "the database to close", rolledBack);
          await telemetry.close();
        })();
        return stopped;
      },
    };
  } catch (err) {
    // A failed start (port taken, say) must not leave consumers writing to a database nobody owns.
    await o.stopApp?.(built?.parts);
    await events?.stop();
    await o.close();
    await telemetry.close();
    throw err;
  }
}
