/**
 * Fault injection for demos and chaos tests: added latency, an error rate
 * with a chosen status code, and "hard down". Settable from env at start and
 * at run time through shopmesh.chaos.v1.ChaosService, which every shopmesh
 * server hosts. Faults apply to business RPCs and to event handling (a slow
 * or dead service is slow or dead for its consumers too), never to health,
 * reflection or the chaos service itself.
 */
import type { MessageInitShape } from "@bufbuild/protobuf";
import { status } from "@grpc/grpc-js";
import { BreakerState, type ChaosService, type Faults, type FaultsSchema } from "../gen/shopmesh/chaos/v1/chaos_pb.js";
import { bool, int, num } from "./config.js";
import { InvalidArgumentError, ServiceError } from "./errors.js";
import type { Interceptor, ServiceImpl } from "./grpc.js";
import type { DownstreamSample } from "./metrics.js";

/** Env variables that set the initial faults of a process. */
export const faultEnv = {
  /** Delay added before every business RPC, in ms. */
  FAULT_LATENCY_MS: int(0, { min: 0, max: 60_000 }),
  /** Fraction of business RPCs that fail, 0..1. */
  FAULT_ERROR_RATE: num(0, { min: 0, max: 1 }),
  /** gRPC status code for injected errors (default UNAVAILABLE = 14). */
  FAULT_ERROR_CODE: int(status.UNAVAILABLE, { min: 1, max: 16 }),
  /** When true every business RPC fails with UNAVAILABLE. */
  FAULT_DOWN: bool(false),
  /** Chaos: SIGKILL the process right before its outbox relay publishes the first event. */
  FAULT_CRASH_BEFORE_PUBLISH: bool(false),
  /** Chaos: SIGKILL the process after an event consumer commits its first effect, before the ack. */
  FAULT_CRASH_AFTER_COMMIT: bool(false),
} as const;

type FaultSettings = Omit<Faults, "$typeName" | "$unknown">;

/** Holds a process's current faults; applies them as an interceptor. */
export class FaultInjector {
  private faults: FaultSettings;
  /** The generation of the settings in force (ChaosService.SetFaults): 0 until one with a generation is taken. */
  private generation = 0n;

  constructor(
    initial: Partial<FaultSettings> = {},
    private readonly random: () => number = Math.random,
  ) {
    this.faults = FaultInjector.validate({ latencyMs: 0, errorRate: 0, errorCode: 0, down: false, ...initial });
  }

  /** Faults from the {@link faultEnv} variables. */
  static fromConfig(c: {
    FAULT_LATENCY_MS: number;
    FAULT_ERROR_RATE: number;
    FAULT_ERROR_CODE: number;
    FAULT_DOWN: boolean;
  }) {
    return new FaultInjector({
      latencyMs: c.FAULT_LATENCY_MS,
      errorRate: c.FAULT_ERROR_RATE,
      errorCode: c.FAULT_ERROR_CODE,
      down: c.FAULT_DOWN,
    });
  }

  private static validate(f: FaultSettings): FaultSettings {
    if (!Number.isInteger(f.latencyMs) || f.latencyMs < 0 || f.latencyMs > 60_000)
      throw new InvalidArgumentError("faults.latency_ms", "must be 0..60000");
    if (!(f.errorRate >= 0 && f.errorRate <= 1))
      throw new InvalidArgumentError("faults.error_rate", "must be 0.0..1.0");
    if (!Number.isInteger(f.errorCode) || f.errorCode < 0 || f.errorCode > 16)
      throw new InvalidArgumentError("faults.error_code", "must be a gRPC status code 1..16, or 0 for UNAVAILABLE");
    return { latencyMs: f.latencyMs, errorRate: f.errorRate, errorCode: f.errorCode, down: f.down };
  }

  /** The faults in force. */
  get current(): FaultSettings {
    return { ...this.faults };
  }

  /** Replaces the faults in force; throws INVALID_ARGUMENT for out-of-range values. */
  set(f: Partial<FaultSettings>): FaultSettings {
    return this.setAt(f, 0n).faults;
  }

  /**
   * Replaces the faults in force with `f` of `generation`, unless the settings in force come after it:
   * a higher generation, or the same one and greater settings (so that replicas given two operators'
   * settings in either order all keep the same one). Throws ABORTED for settings that come before;
   * generation 0 replaces whatever is in force and keeps the generation.
   */
  setAt(f: Partial<FaultSettings>, generation: bigint): { faults: FaultSettings; generation: bigint } {
    const next = FaultInjector.validate({ latencyMs: 0, errorRate: 0, errorCode: 0, down: false, ...f });
    if (generation > 0n) {
      const older =
        generation === this.generation ? compareFaults(next, this.faults) < 0 : generation < this.generation;
      if (older) {
        throw new ServiceError(
          status.ABORTED,
          `faults of generation ${this.generation} are in force; generation ${generation} comes before them`,
        );
      }
      this.generation = generation;
    }
    this.faults = next;
    return { faults: this.current, generation: this.generation };
  }

  /** Interceptor applying the faults before the handler runs. */
  readonly interceptor: Interceptor = async (ctx, next) => {
    const f = this.faults;
    if (f.down) throw new ServiceError(status.UNAVAILABLE, "service unavailable (fault injection: down)");
    if (f.latencyMs > 0) {
      await sleep(f.latencyMs, ctx.signal);
      // The caller gave up (deadline or cancel) while we waited: do not run the handler.
      if (ctx.signal.aborted) throw new ServiceError(status.CANCELLED, "call cancelled during injected latency");
    }
    if (f.errorRate > 0 && this.random() < f.errorRate) {
      throw new ServiceError(f.errorCode || status.UNAVAILABLE, "injected fault");
    }
    return next();
  };

  /**
   * Applied before an event is handled: waits the injected latency; answers
   * "skip" while the service is hard down or an injected error hits (the
   * event is then redelivered later, as if the process were unreachable).
   */
  async beforeEvent(): Promise<"handle" | "skip"> {
    const f = this.faults;
    if (f.down) return "skip";
    if (f.latencyMs > 0) await new Promise((r) => setTimeout(r, f.latencyMs));
    return f.errorRate > 0 && this.random() < f.errorRate ? "skip" : "handle";
  }

  /** The ChaosService implementation bound to this injector. */
  /** The chaos service of a server whose calls to others are `downstreams` (breakers and bulkheads, by name). */
  service(downstreams: () => Record<string, DownstreamSample> = () => ({})): ServiceImpl<typeof ChaosService> {
    const toMsg = (): MessageInitShape<typeof FaultsSchema> => this.current;
    return {
      setFaults: (req) => this.setAt(req.faults ?? {}, req.generation),
      getFaults: () => ({ faults: toMsg(), generation: this.generation }),
      getResilience: () => ({
        downstreams: Object.entries(downstreams())
          .sort(([a], [b]) => a.localeCompare(b))
          .map(([name, d]) => ({
            name,
            breaker: BREAKER[d.breaker] ?? BreakerState.UNSPECIFIED,
            inFlight: d.inFlight,
            queued: d.queued,
            endpoints: d.endpoints.map((e) => ({
              address: e.address,
              breaker: BREAKER[e.breaker] ?? BreakerState.UNSPECIFIED,
            })),
          })),
      }),
    };
  }
}

/** Orders two settings field by field (any fixed total order will do: it only breaks ties). */
function compareFaults(a: FaultSettings, b: FaultSettings): number {
  return (
    a.latencyMs - b.latencyMs ||
    a.errorRate - b.errorRate ||
    a.errorCode - b.errorCode ||
    Number(a.down) - Number(b.down)
  );
}

const BREAKER: Record<string, BreakerState> = {
  closed: BreakerState.CLOSED,
  open: BreakerState.OPEN,
  "half-open": BreakerState.HALF_OPEN,
  isolated: BreakerState.ISOLATED,
};

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    signal.addEventListener(
      "abort",
      () => {
        clearTimeout(t);
        resolve();
      },
      { once: true },
    );
  });
}
