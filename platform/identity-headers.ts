/**
 * Identity metadata grpc-js would not hand a handler, refused before it drops it. grpc-js keeps a
 * metadata value only in printable ASCII and logs and drops any other (a latin1 `josé`, a no-break
 * space): a call that carried a subject, malformed, reached its handler carrying none — and payment's
 * GetPayment takes a call with no identity for a trusted service's (domain.ts `canSee`), so it showed
 * alice's payment to a caller who sent `x-shopmesh-subject: josé`. A `-bin` spelling of either key is
 * another key to grpc-js, which identity.ts never reads: the same caller, seen as none. Both are
 * identity the gateway never writes, so both are UNAUTHENTICATED, as identity.ts answers the rest.
 */
import * as grpc from "@grpc/grpc-js";
import { IDENTITY_KEYS } from "./identity.js";
import { screeningStreams } from "./screened-streams.js";

const KEYS: ReadonlySet<string> = new Set([IDENTITY_KEYS.subject, IDENTITY_KEYS.roles]);
/** What grpc-js keeps of a non-binary metadata value (its LEGAL_NON_BINARY_VALUE_REGEX). */
const KEPT = /^[ -~]*$/;

/** Why the header list `raw` (names and values in turn, as sent) holds identity a handler would not see, or undefined. */
export function unreadableIdentity(raw: readonly string[]): string | undefined {
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i] as string;
    if (name.endsWith("-bin") && KEYS.has(name.slice(0, -4))) return `${name} is not how identity is written`;
    if (KEYS.has(name) && !KEPT.test(raw[i + 1] ?? "")) return `${name} is not printable ASCII`;
  }
  return undefined;
}

/** Makes `server` answer UNAUTHENTICATED, before grpc-js reads it, a call whose identity {@link unreadableIdentity} finds. Call before binding. */
export function refusingUnreadableIdentity(server: grpc.Server): void {
  screeningStreams(server, "refuse identity grpc-js would drop", (_stream, _headers, raw) => {
    const why = unreadableIdentity(raw);
    return why === undefined
      ? undefined
      : { code: grpc.status.UNAUTHENTICATED, message: `malformed caller identity: ${why}` };
  });
}
