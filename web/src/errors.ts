/**
 * What went wrong, for people: every failed call becomes a title, a
 * sentence saying what happened and when to retry, and whether retrying can
 * help. Decided by the status code (and Retry-After), never by message text.
 */
import { Code, ConnectError } from "@connectrpc/connect";
import { BadRequestSchema } from "../../gen/google/rpc/error_details_pb.js";

/** A failure as the page shows it. */
export interface Problem {
  readonly title: string;
  readonly detail: string;
  /** The status code, when the gateway answered one. */
  readonly code: Code | undefined;
  /** Seconds to wait before retrying, from the gateway's Retry-After. */
  readonly retryAfterS: number | undefined;
  /** Whether trying the same thing again later may succeed. */
  readonly retryable: boolean;
  /** The request fields a refusal names (google.rpc.BadRequest), e.g. "quantity": the page marks their controls. */
  readonly fields?: readonly string[];
}

function retryAfter(err: ConnectError): number | undefined {
  const raw = err.metadata.get("retry-after");
  const s = raw === null ? Number.NaN : Number(raw);
  return Number.isFinite(s) && s >= 0 ? Math.ceil(s) : undefined;
}

/** Describes `err` (anything a call threw). */
export function describeError(err: unknown): Problem {
  if (err instanceof TypeError || (err instanceof ConnectError && err.cause instanceof TypeError)) {
    // fetch itself failed (the transport wraps that as UNKNOWN): no answer at all.
    return {
      title: "The shop cannot be reached",
      detail: "The gateway did not answer. Check your connection or that the shop is running, then try again.",
      code: undefined,
      retryAfterS: undefined,
      retryable: true,
    };
  }
  const e = ConnectError.from(err);
  const base = { code: e.code, retryAfterS: undefined, retryable: false };
  switch (e.code) {
    case Code.ResourceExhausted: {
      const s = retryAfter(e);
      return {
        ...base,
        title: "Too many requests (429)",
        detail: `The shop is limiting requests right now. Try again ${s === undefined ? "in a few seconds" : `in ${s} s`}.`,
        retryAfterS: s,
        retryable: true,
      };
    }
    case Code.Unavailable: {
      const s = retryAfter(e);
      return {
        ...base,
        title: "Service unavailable (503)",
        detail: `A service the shop needs is not answering (it may be down or restarting). Try again ${
          s === undefined ? "in a few seconds" : `in ${s} s`
        }.`,
        retryAfterS: s,
        retryable: true,
      };
    }
    case Code.DeadlineExceeded:
      return {
        ...base,
        title: "Timed out",
        detail: "The shop took too long to answer. Try again in a few seconds.",
        retryable: true,
      };
    case Code.Unauthenticated:
      return { ...base, title: "Signed out", detail: "Your sign-in is no longer valid. Sign in again." };
    case Code.PermissionDenied:
      return { ...base, title: "Not allowed", detail: "Your account may not do this." };
    case Code.NotFound:
      return { ...base, title: "Not found", detail: e.rawMessage };
    case Code.InvalidArgument:
      return {
        ...base,
        title: "Not possible",
        detail: e.rawMessage,
        fields: e.findDetails(BadRequestSchema).flatMap((d) => d.fieldViolations.map((v) => v.field)),
      };
    case Code.FailedPrecondition:
    case Code.AlreadyExists:
    case Code.OutOfRange:
      return { ...base, title: "Not possible", detail: e.rawMessage };
    case Code.Unimplemented:
      return { ...base, title: "Not available here", detail: "This gateway does not offer this." };
    case Code.Canceled:
      return { ...base, title: "Cancelled", detail: "The request was cancelled." };
    default:
      return {
        ...base,
        title: "Something went wrong",
        detail: e.rawMessage || "The shop could not complete the request. Try again.",
        retryable: true,
      };
  }
}

/** True when `err` is a ConnectError with `code`. */
export function hasCode(err: unknown, code: Code): boolean {
  return err instanceof ConnectError && err.code === code;
}
