/**
 * Who is signed in: a bearer token for the gateway, kept in sessionStorage
 * (per tab, gone when the tab closes) with the subject and roles read from
 * it for display. The gateway verifies every call; what the page reads from
 * the token only decides what it shows.
 */
import { Code, ConnectError } from "@connectrpc/connect";
import { type Claims, identityFromClaims } from "../../gateway/claims.js";
import { base64urlBytes, repeatedInToken } from "../../gateway/jwt-members.js";
import { CALL_TIMEOUT_MS } from "./api.js";
import { forget, readStored, store } from "./stored.js";

/** A signed-in user. */
export interface Session {
  readonly token: string;
  readonly subject: string;
  readonly roles: readonly string[];
  /** When the token expires, epoch ms. */
  readonly expiresAt: number;
}

/** The users the development sign-in knows. */
export const DEV_USERS = [
  { user: "alice", label: "Alice", note: "customer" },
  { user: "bob", label: "Bob", note: "customer" },
  { user: "operator", label: "Operator", note: "admin: operator panel" },
] as const;

/** The development sign-in does not exist on this gateway (it uses a real signing key). */
export class SignInUnavailableError extends Error {
  override name = "SignInUnavailableError";
}

const KEY = "shopmesh.session";

/** What {@link loadSession} found in the tab's storage. */
export interface StoredSession {
  /** The stored session, when there is one its token is still usable by its shape and not expired. */
  readonly session?: Session;
  /** Whether a session was stored that could not be used (and is forgotten now): the user should be told. */
  readonly dropped: boolean;
}

/**
 * The stored session, if there is one, its token is still usable by its shape and it has not expired.
 * Who is signed in is read from the token, as the gateway reads it, never from what was stored beside
 * it: an edited entry holding bob's token under alice's name and roles would show alice, her cart and
 * the operator panel while every call was bob's. An entry that cannot be used is forgotten.
 */
export function loadSession(now = Date.now()): StoredSession {
  const s = readStored(KEY) as { token?: unknown; expiresAt?: unknown } | undefined;
  if (s === undefined) return { dropped: false };
  try {
    if (typeof s === "object" && s !== null && typeof s.token === "string") {
      const read = sessionFromToken(s.token, now);
      const expiresAt = typeof s.expiresAt === "number" ? s.expiresAt : read.expiresAt;
      if (expiresAt > now) return { session: { ...read, expiresAt }, dropped: false };
    }
  } catch {
    // A token the gateway would refuse is the same as none.
  }
  forget(KEY);
  return { dropped: true };
}

/** Keeps `s` for this tab, where the browser lets the page: otherwise it lasts while the page is open. */
export function saveSession(s: Session): void {
  store(KEY, s);
}

/** Signs out in this tab. */
export function clearSession(): void {
  forget(KEY);
}

/** A compact JWT: base64url header, payload and signature. */
const JWT = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/;

/**
 * Reads subject, roles and expiry from a JWT's payload. Not verified (the gateway does that), but
 * refused as the gateway refuses it for its shape, by the gateway's own rules (gateway/claims.ts,
 * gateway/jwt-members.ts): a member named twice, no usable `sub`, an unknown role, no `exp` or `iat`,
 * and, by this browser's clock, expired — a page signed in with one was a shop every call refused.
 */
export function sessionFromToken(pasted: string, now = Date.now()): Session {
  // A token copied from a wrapped terminal has line breaks in it: they are no part of it (and no
  // header may carry them, so every call would fail in fetch itself, as if the shop were unreachable).
  // Nor is an "authorization" header's scheme, copied along with it.
  const token = pasted.replace(/^\s*bearer\s+/i, "").replace(/\s+/g, "");
  if (!JWT.test(token)) throw new Error("that is not a JWT (three base64url parts separated by dots)");
  let claims: unknown;
  try {
    claims = JSON.parse(new TextDecoder().decode(base64urlBytes(token.split(".")[1] ?? "")));
  } catch {
    throw new Error("the token's payload is not readable JSON");
  }
  if (typeof claims !== "object" || claims === null || Array.isArray(claims)) {
    throw new Error("the token's payload is not a JSON object");
  }
  const twice = repeatedInToken(token);
  if (twice !== undefined) {
    throw new Error(`the token names ${JSON.stringify(twice.slice(0, 64))} twice: the gateway refuses it`);
  }
  let identity: ReturnType<typeof identityFromClaims>;
  try {
    // Its longest lifetime is the gateway's setting, which the page does not know: the gateway judges it.
    identity = identityFromClaims(claims as Claims, Number.POSITIVE_INFINITY);
  } catch (err) {
    throw new Error(`the gateway refuses it: ${(err as Error).message}`);
  }
  const expiresAt = ((claims as Claims).exp as number) * 1000;
  if (expiresAt <= now) throw new Error(`the token expired at ${new Date(expiresAt).toISOString()}`);
  return { token, subject: identity.subject, roles: identity.roles, expiresAt };
}

/**
 * Asks the gateway's development sign-in for a token for `user`.
 * Throws {@link SignInUnavailableError} where the path does not exist (404).
 */
export async function devSignIn(user: string, signal?: AbortSignal): Promise<Session> {
  // Like every call (api.ts), one the gateway never answers ends DEADLINE_EXCEEDED.
  const deadline = AbortSignal.timeout(CALL_TIMEOUT_MS);
  const timedOut = (err: unknown): never => {
    throw deadline.aborted ? new ConnectError("sign-in timed out", Code.DeadlineExceeded) : err;
  };
  const res = await fetch("/dev/token", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ user }),
    signal: signal ? AbortSignal.any([signal, deadline]) : deadline,
  }).catch(timedOut);
  if (res.status === 404) throw new SignInUnavailableError("development sign-in is not available on this gateway");
  // The deadline may fire while the body arrives, too: said as the same timeout, not as a failed sign-in.
  const body = (await res.json().catch((err: unknown) => (deadline.aborted ? timedOut(err) : {}))) as {
    token?: string;
    subject?: string;
    roles?: string[];
    expiresInSeconds?: number;
    message?: string;
  };
  if (!res.ok || !body.token) throw new Error(body.message ?? `sign-in failed (HTTP ${res.status})`);
  const s = sessionFromToken(body.token);
  return {
    ...s,
    subject: body.subject ?? s.subject,
    roles: body.roles ?? s.roles,
    expiresAt: body.expiresInSeconds ? Date.now() + body.expiresInSeconds * 1000 : s.expiresAt,
  };
}

/** Whether `s` may use the operator panel. */
export function isOperator(s: Session | undefined): boolean {
  return s?.roles.includes("admin") ?? false;
}
