/**
 * Caller identity as services see it. The gateway verifies the client's JWT
 * and sets these metadata entries itself (stripping any the client sent);
 * services trust them because only the gateway (and, in the local demo,
 * trusted tools) can reach them — in Kubernetes an Istio AuthorizationPolicy
 * enforces that.
 */
import { Metadata, status } from "@grpc/grpc-js";
import { ServiceError } from "./errors.js";

/** Metadata keys carrying the verified identity. */
export const IDENTITY_KEYS = { subject: "x-shopmesh-subject", roles: "x-shopmesh-roles" } as const;

/** A verified caller. */
export interface Identity {
  /** Stable subject id (the JWT `sub`), used as the customer id. */
  readonly subject: string;
  /** Roles, e.g. ["customer"] or ["admin"]. */
  readonly roles: readonly string[];
}

/** The identity in `metadata`, or undefined when none was set. */
export function identityOf(metadata: Metadata): Identity | undefined {
  const subject = metadata.get(IDENTITY_KEYS.subject)[0];
  if (typeof subject !== "string" || subject === "") return undefined;
  const roles = String(metadata.get(IDENTITY_KEYS.roles)[0] ?? "")
    .split(",")
    .map((r) => r.trim())
    .filter(Boolean);
  return { subject, roles };
}

/** The caller's identity; UNAUTHENTICATED when the call carries none. */
export function requireIdentity(metadata: Metadata): Identity {
  const id = identityOf(metadata);
  if (!id) throw new ServiceError(status.UNAUTHENTICATED, "this call needs a caller identity");
  return id;
}

/** Metadata carrying `identity`, for trusted callers (the gateway, tools, tests). */
export function identityMetadata(identity: Identity, into: Metadata = new Metadata()): Metadata {
  into.set(IDENTITY_KEYS.subject, identity.subject);
  if (identity.roles.length > 0) into.set(IDENTITY_KEYS.roles, identity.roles.join(","));
  return into;
}
