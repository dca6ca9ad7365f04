/**
 * The order of fault settings (ChaosService.SetFaults with a generation): replicas given two
 * operators' settings in either order keep the same one; an older one is refused with ABORTED.
 */
import { status } from "@grpc/grpc-js";
import { describe, expect, it } from "vitest";
import { FaultInjector } from "./chaos.js";
import { ServiceError } from "./errors.js";

const refused = (f: () => unknown) => {
  try {
    f();
  } catch (err) {
    return err instanceof ServiceError ? err.code : err;
  }
  return "taken";
};

describe("FaultInjector.setAt", () => {
  it("keeps the same one of two settings of one generation, in whichever order they come", () => {
    const [one, two] = [new FaultInjector(), new FaultInjector()];
    one.setAt({ latencyMs: 5 }, 1n);
    expect(one.setAt({ latencyMs: 105 }, 1n)).toEqual({
      faults: expect.objectContaining({ latencyMs: 105 }),
      generation: 1n,
    });
    two.setAt({ latencyMs: 105 }, 1n);
    expect(refused(() => two.setAt({ latencyMs: 5 }, 1n))).toBe(status.ABORTED);
    expect(two.current).toEqual(one.current);
  });

  it("takes a later generation whatever its settings, refuses an earlier one, takes the same one again", () => {
    const f = new FaultInjector();
    f.setAt({ down: true }, 3n);
    expect(refused(() => f.setAt({ latencyMs: 60_000 }, 2n))).toBe(status.ABORTED);
    expect(f.setAt({ down: true }, 3n).generation).toBe(3n);
    expect(f.setAt({}, 4n)).toEqual({
      faults: { latencyMs: 0, errorRate: 0, errorCode: 0, down: false },
      generation: 4n,
    });
  });

  it("generation 0 replaces whatever is in force and keeps the generation; invalid settings are refused first", () => {
    const f = new FaultInjector();
    f.setAt({ latencyMs: 9 }, 7n);
    expect(f.setAt({ errorRate: 0.5 }, 0n)).toMatchObject({ faults: { errorRate: 0.5, latencyMs: 0 }, generation: 7n });
    expect(refused(() => f.setAt({ errorRate: 2 }, 8n))).toBe(status.INVALID_ARGUMENT);
    expect(f.setAt({ errorRate: 0.75 }, 7n).faults.errorRate).toBe(0.75);
  });
});
