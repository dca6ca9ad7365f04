/** Assertions for gRPC outcomes: on codes and field names, never message text. */
import { expect } from "vitest";
import { Code, InvalidArgumentError, RpcError } from "../platform/errors.js";

/**
 * Awaits `p`, expects it to fail with `code`, and (when given) a
 * google.rpc.BadRequest violation naming `field`. Returns the error.
 */
export async function expectRpcError(p: Promise<unknown>, code: Code, field?: string): Promise<RpcError> {
  const err = await p.then(
    (v) => {
      throw new Error(
        `expected ${Code[code]}, got success: ${JSON.stringify(v, (_, x) => (typeof x === "bigint" ? String(x) : x))}`,
      );
    },
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(RpcError);
  const rpc = err as RpcError;
  expect(rpc.codeName).toBe(Code[code]);
  if (field !== undefined) expect(rpc.fieldViolations.map((v) => v.field)).toContain(field);
  return rpc;
}

/** The field an INVALID_ARGUMENT thrown by `f` names; "no error" when `f` returns. */
export function violatedField(f: () => unknown): string {
  try {
    f();
  } catch (e) {
    return e instanceof InvalidArgumentError ? e.field : `not InvalidArgumentError: ${e}`;
  }
  return "no error";
}
