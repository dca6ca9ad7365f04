/**
 * The idle circuit's probe on a fake clock: a real cockatiel breaker of the policy (policy.ts
 * breakerOf), timers, Date and performance faked together, the probe a scripted function. The
 * real-gRPC side (a health check over the instance's connection, the gauges) is in resilience.test.ts.
 */
import { Metadata, status } from "@grpc/grpc-js";
import { CircuitState } from "cockatiel";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { HealthCheckResponse_ServingStatus } from "../gen/health/v1/health_pb.js";
import { RpcError } from "./errors.js";
import type { CallOptions } from "./grpc-client.js";
import { healthProbe, watchIdleCircuit } from "./idle-probe.js";
import { breakerOf } from "./policy.js";
import { DEFAULT_POLICY } from "./policy-config.js";

const WAIT = 1_000;
const unavailable = () => new RpcError(status.UNAVAILABLE, "down", new Metadata());

beforeEach(() => {
  vi.useFakeTimers({ toFake: ["setTimeout", "clearTimeout", "Date", "performance"] });
});
afterEach(() => {
  vi.useRealTimers();
});

/** A watched circuit of the policy opening at 2 consecutive failures, and its scripted probe. */
function circuit() {
  const c = breakerOf({ ...DEFAULT_POLICY, breakerConsecutiveFailures: 2, breakerHalfOpenAfterMs: WAIT });
  const probe = { calls: 0, healthy: false, hang: false, signals: [] as AbortSignal[] };
  const watch = watchIdleCircuit(c.breaker, {
    afterMs: c.probeAfterMs,
    probation: c.probation,
    probe: async (signal) => {
      probe.calls++;
      probe.signals.push(signal);
      if (probe.hang) {
        await new Promise((_, reject) =>
          signal.addEventListener("abort", () => reject(new RpcError(status.CANCELLED, "", new Metadata()))),
        );
      }
      if (!probe.healthy) throw unavailable();
    },
  });
  const call = (ok: boolean) =>
    watch.breaker
      .execute(() => (ok ? Promise.resolve() : Promise.reject(unavailable())))
      .then(
        () => "ok",
        (err: unknown) => (err instanceof RpcError ? "failed" : "refused"),
      );
  return { breaker: c.breaker, watch, probe, call };
}

describe("watchIdleCircuit", () => {
  it("probes an open circuit no call comes to once per wait, and closes it when the probe passes", async () => {
    const { breaker, watch, probe, call } = circuit();
    await call(false);
    await call(false);
    expect(breaker.state).toBe(CircuitState.Open);

    await vi.advanceTimersByTimeAsync(WAIT - 1);
    expect(probe.calls).toBe(0);
    await vi.advanceTimersByTimeAsync(1);
    expect(probe.calls).toBe(1);
    expect(breaker.state).toBe(CircuitState.Open);
    // Each failed probe opens it for a whole wait again: ten waits, ten probes.
    await vi.advanceTimersByTimeAsync(WAIT * 10);
    expect(probe.calls).toBe(11);
    expect(vi.getTimerCount()).toBe(1);

    probe.healthy = true;
    await vi.advanceTimersByTimeAsync(WAIT);
    expect(probe.calls).toBe(12);
    expect(breaker.state).toBe(CircuitState.Closed);
    // Closed: nothing more to probe, no timer left.
    expect(vi.getTimerCount()).toBe(0);
    await vi.advanceTimersByTimeAsync(WAIT * 5);
    expect(probe.calls).toBe(12);
    watch.stop();
  });

  it("leaves the probe to the calls while they come, and probes a wait after the last", async () => {
    const { breaker, probe, call } = circuit();
    await call(false);
    await call(false);
    // A call every tenth of the wait, refused while open.
    for (let t = 0; t < WAIT - 100; t += 100) {
      await vi.advanceTimersByTimeAsync(100);
      expect(await call(true)).toBe("refused");
    }
    await vi.advanceTimersByTimeAsync(WAIT - 1);
    expect(probe.calls).toBe(0);
    await vi.advanceTimersByTimeAsync(1);
    expect(probe.calls).toBe(1);
    expect(breaker.state).toBe(CircuitState.Open);
  });

  it("a call past the wait is the half-open probe, as cockatiel has it: the health check is not asked", async () => {
    const { breaker, probe, call } = circuit();
    await call(false);
    await call(false);
    await vi.advanceTimersByTimeAsync(WAIT - 100);
    expect(await call(true)).toBe("refused");
    await vi.advanceTimersByTimeAsync(100);
    expect(await call(true)).toBe("ok");
    expect(breaker.state).toBe(CircuitState.Closed);
    await vi.advanceTimersByTimeAsync(WAIT * 3);
    expect(probe.calls).toBe(0);
  });

  it("a circuit the probe closed opens at its first failure; a success first ends the probation", async () => {
    const { breaker, probe, call } = circuit();
    probe.healthy = true;
    await call(false);
    await call(false);
    await vi.advanceTimersByTimeAsync(WAIT);
    expect(breaker.state).toBe(CircuitState.Closed);
    expect(await call(false)).toBe("failed");
    expect(breaker.state).toBe(CircuitState.Open);

    await vi.advanceTimersByTimeAsync(WAIT);
    expect(breaker.state).toBe(CircuitState.Closed);
    expect(await call(true)).toBe("ok");
    expect(await call(false)).toBe("failed");
    expect(breaker.state).toBe(CircuitState.Closed);
    expect(await call(false)).toBe("failed");
    expect(breaker.state).toBe(CircuitState.Open);
  });

  it("stop() clears its timer and cancels a probe in flight; nothing is probed after it", async () => {
    const { watch, probe, call } = circuit();
    await call(false);
    await call(false);
    expect(vi.getTimerCount()).toBe(1);
    watch.stop();
    expect(vi.getTimerCount()).toBe(0);
    await vi.advanceTimersByTimeAsync(WAIT * 5);
    expect(probe.calls).toBe(0);

    const other = circuit();
    other.probe.hang = true;
    await other.call(false);
    await other.call(false);
    await vi.advanceTimersByTimeAsync(WAIT);
    expect(other.probe.calls).toBe(1);
    expect(other.watch.probing()).toBe(true);
    expect(other.probe.signals[0]?.aborted).toBe(false);
    other.watch.stop();
    expect(other.probe.signals[0]?.aborted).toBe(true);
    await vi.advanceTimersByTimeAsync(WAIT * 5);
    expect(other.probe.calls).toBe(1);
    expect(vi.getTimerCount()).toBe(0);
  });
});

describe("healthProbe", () => {
  /** A health client answering `answer` (or failing with it), noting the options it was called with. */
  const health = (answer: HealthCheckResponse_ServingStatus | RpcError) => {
    const seen: { service: string; opts?: CallOptions }[] = [];
    const client = {
      check: async (req: { service?: string }, opts?: CallOptions) => {
        seen.push({ service: req.service ?? "", ...(opts ? { opts } : {}) });
        if (answer instanceof RpcError) throw answer;
        return { status: answer };
      },
      watch: () => {
        throw new Error("not used");
      },
      list: async () => {
        throw new Error("not used");
      },
    };
    return { client: client as never, seen };
  };

  it("passes on SERVING for the service's own name, with the policy's deadline and the watch's signal", async () => {
    const h = health(HealthCheckResponse_ServingStatus.SERVING);
    const signal = new AbortController().signal;
    await expect(healthProbe(h.client, "shopmesh.payment.v1.PaymentService", 250)(signal)).resolves.toBeUndefined();
    expect(h.seen).toEqual([{ service: "shopmesh.payment.v1.PaymentService", opts: { timeoutMs: 250, signal } }]);
  });

  it.each([
    HealthCheckResponse_ServingStatus.NOT_SERVING,
    HealthCheckResponse_ServingStatus.UNKNOWN,
    HealthCheckResponse_ServingStatus.SERVICE_UNKNOWN,
  ])("fails UNAVAILABLE (a failure to the breaker) on status %s", async (answer) => {
    const err = await healthProbe(health(answer).client, "s", 250)(new AbortController().signal).catch((e) => e);
    expect(err).toBeInstanceOf(RpcError);
    expect((err as RpcError).code).toBe(status.UNAVAILABLE);
  });

  it.each([
    ["UNIMPLEMENTED (no health service)", status.UNIMPLEMENTED],
    ["NOT_FOUND (another service on its port)", status.NOT_FOUND],
    ["CANCELLED", status.CANCELLED],
  ])("fails UNAVAILABLE on an error the breaker would not count: %s", async (_name, code) => {
    const answer = new RpcError(code, "no", new Metadata());
    const err = await healthProbe(health(answer).client, "s", 250)(new AbortController().signal).catch((e) => e);
    expect(err).toBeInstanceOf(RpcError);
    expect((err as RpcError).code).toBe(status.UNAVAILABLE);
    expect((err as RpcError).cause).toBe(answer);
  });

  it("fails with the call's own error (unreachable, timed out) as it is", async () => {
    const down = new RpcError(status.DEADLINE_EXCEEDED, "slow", new Metadata());
    await expect(healthProbe(health(down).client, "s", 250)(new AbortController().signal)).rejects.toBe(down);
  });
});
