/**
 * An open circuit that no call comes to, probed. cockatiel moves an open breaker to half-open only
 * when a call is attempted after its half-open wait: a circuit that opened in an outage with no call
 * after it (payment down at night, no orders since) stayed open for ever after the instance came back
 * — `circuit_breaker_state` 1, ShopmeshCircuitOpen firing, the operator panel showing it open.
 *
 * So once a circuit has been open and seen no call for the half-open wait, its instance's
 * grpc.health.v1 Check (the downstream's readiness, platform/health.ts) takes the half-open turn
 * through the breaker, as a call would: SERVING closes it, a failure (unreachable, NOT_SERVING, a
 * timeout) opens it again for another wait. While calls come, one of them is the half-open probe, as
 * before. A circuit a probe closed is on probation: the first call that fails opens it again at once,
 * as a half-open probe's failure would — an instance can be ready and still fail its calls.
 */
import { Metadata, status } from "@grpc/grpc-js";
import { BrokenCircuitError, type CircuitBreakerPolicy, CircuitState, type IBreaker } from "cockatiel";
import { type Health, HealthCheckResponse_ServingStatus } from "../gen/health/v1/health_pb.js";
import { RpcError } from "./errors.js";
import type { CallOptions, Client } from "./grpc-client.js";
import { FAILURE_CODES } from "./policy.js";
import { detached } from "./propagation.js";

/** A probe refused by the breaker a millisecond early (cockatiel reads whole ms of the wall clock) is tried again after this, ms. */
const EARLY_RETRY_MS = 10;

/**
 * cockatiel's failure counting ({@link IBreaker}) with a probation: after {@link Probation.begin}
 * the next failure opens the circuit whatever the count, the next success ends the probation.
 */
export class Probation implements IBreaker {
  private on = false;

  constructor(private readonly inner: IBreaker) {}

  get state(): unknown {
    return this.inner.state;
  }

  set state(value: unknown) {
    this.inner.state = value;
  }

  /** The next failure opens the circuit. */
  begin(): void {
    this.on = true;
  }

  /** Whether no call has been counted since {@link Probation.begin}. */
  get pending(): boolean {
    return this.on;
  }

  success(state: CircuitState): void {
    this.on = false;
    this.inner.success(state);
  }

  failure(state: CircuitState): boolean {
    const opens = this.inner.failure(state);
    const probation = this.on;
    this.on = false;
    return opens || probation;
  }
}

/** The breaker as its calls see it: every call offered is noted, for the probe to tell a quiet circuit. */
export interface WatchedBreaker {
  readonly state: CircuitState;
  execute<T>(fn: () => PromiseLike<T> | T): Promise<T>;
}

/** What {@link watchIdleCircuit} needs. */
export interface IdleProbeOptions {
  /** The breaker's half-open wait, ms: a circuit open and offered no call this long is probed. */
  readonly afterMs: number;
  /** One check of the instance, through the breaker; rejects as a failing call would. */
  readonly probe: (signal: AbortSignal) => Promise<unknown>;
  /** Put on probation when a probe closes the circuit. */
  readonly probation?: Probation;
}

/**
 * Watches `breaker`: probes it when it has been open with no call for `afterMs` (at most one probe
 * per opening, each opening waiting `afterMs` again). `stop()` clears its timer and cancels a probe
 * in flight; nothing runs after it.
 */
export function watchIdleCircuit(
  breaker: CircuitBreakerPolicy,
  o: IdleProbeOptions,
): { readonly breaker: WatchedBreaker; probing(): boolean; stop(): void } {
  let lastCall = Number.NEGATIVE_INFINITY;
  let timer: NodeJS.Timeout | undefined;
  let probing = false;
  let stopped = false;
  /** On probation, the call in flight that others wait for (settled: cleared before they resume). */
  let trial: Promise<void> | undefined;
  const cancel = new AbortController();
  const arm = (ms: number) => {
    clearTimeout(timer);
    // Outside the trace of the call that opened the circuit: the probe is no request's.
    timer = detached(() => setTimeout(fire, ms));
    timer.unref();
  };
  const fire = () => {
    timer = undefined;
    if (stopped || breaker.state !== CircuitState.Open) return;
    const quiet = performance.now() - lastCall;
    // Calls still come: the first one past the wait is the half-open probe, as cockatiel has it.
    if (quiet < o.afterMs) return arm(o.afterMs - quiet);
    probing = true;
    breaker
      .execute(() => o.probe(cancel.signal))
      .then(
        () => {
          probing = false;
        },
        (err: unknown) => {
          probing = false;
          if (err instanceof BrokenCircuitError && !stopped && breaker.state === CircuitState.Open) arm(EARLY_RETRY_MS);
        },
      );
  };
  const settle = () => {
    trial = undefined;
  };
  // On probation, one call at a time until one is counted, as calls wait behind a half-open probe: a
  // burst after the quiet all reached an instance that is ready yet fails its calls (20 of 20).
  const onProbation = async <T>(fn: () => PromiseLike<T> | T): Promise<T> => {
    while (trial) await trial;
    if (!o.probation?.pending) return breaker.execute(fn);
    const run = breaker.execute(fn);
    trial = run.then(settle, settle);
    return run;
  };
  const changes = breaker.onStateChange((s) => {
    if (stopped) return;
    if (s === CircuitState.Open) return arm(o.afterMs);
    clearTimeout(timer);
    timer = undefined;
    if (s === CircuitState.Closed && probing) o.probation?.begin();
  });
  return {
    breaker: {
      get state() {
        return breaker.state;
      },
      execute: (fn) => {
        lastCall = performance.now();
        // Off probation (nearly always), straight to the breaker: no extra promise on the hot path.
        return trial || o.probation?.pending ? onProbation(fn) : breaker.execute(fn);
      },
    },
    probing: () => probing,
    stop() {
      stopped = true;
      clearTimeout(timer);
      timer = undefined;
      changes.dispose();
      cancel.abort();
    },
  };
}

/**
 * A probe that asks `health` whether `service` is SERVING (its readiness), with a deadline of
 * `timeoutMs`: anything else — another status, or an error — is UNAVAILABLE, a failure to the breaker.
 */
export function healthProbe(
  health: Client<typeof Health>,
  service: string,
  timeoutMs: number,
): (signal: AbortSignal) => Promise<void> {
  return async (signal) => {
    const opts: CallOptions = { timeoutMs, signal };
    // Only SERVING closes the circuit. cockatiel closes a half-open one on an error its policy does not
    // count: UNIMPLEMENTED (no health service) or NOT_FOUND (its port taken by another service) closed it.
    const { status: serving } = await health.check({ service }, opts).catch((err: unknown) => {
      if (err instanceof RpcError && (FAILURE_CODES.has(err.code) || err.broken)) throw err;
      const why = err instanceof Error ? err.message : String(err);
      throw new RpcError(status.UNAVAILABLE, `health check of ${service}: ${why}`, new Metadata(), { cause: err });
    });
    if (serving !== HealthCheckResponse_ServingStatus.SERVING) {
      const name = HealthCheckResponse_ServingStatus[serving];
      throw new RpcError(status.UNAVAILABLE, `health check of ${service}: ${name}`, new Metadata());
    }
  };
}
