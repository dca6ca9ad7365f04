/**
 * Caller identity as services see it. The gateway verifies the client's JWT
 * and sets these metadata entries itself (stripping any the client sent);
 * services trust them because only the gateway (and, in the local demo,
 * trusted tools on loopback) can reach them — in Kubernetes an Istio
 * AuthorizationPolicy enforces that.
 *
 * Both sides read identity with the one rule of identity-rule.ts: a subject of
 * {@link SUBJECT} characters, and roles that are exactly names from
 * {@link ROLES}, comma-joined without spaces, each once, and no roles header
 * at all for none. Anything else — a repeated key, a padded, unknown or
 * repeated role, an empty roles header — is refused rather than interpreted, so the
 * gateway and a service can never disagree about who is calling.
 */
import { Metadata, status } from "@grpc/grpc-js";
import { ServiceError } from "./errors.js";
import { type Identity, parseIdentity } from "./identity-rule.js";

/** Metadata keys carrying the verified identity. */
export const IDENTITY_KEYS = { subject: "x-shopmesh-subject", roles: "x-shopmesh-roles" } as const;

function malformed(what: string): ServiceError {
  return new ServiceError(status.UNAUTHENTICATED, `malformed caller identity: ${what}`);
}

/**
 * The identity in `metadata`, or undefined when none was set. Throws
 * UNAUTHENTICATED for metadata that is present but not in the one accepted
 * form (never guesses what it might mean).
 */
export function identityOf(metadata: Metadata): Identity | undefined {
  const subjects = metadata.get(IDENTITY_KEYS.subject);
  const roleValues = metadata.get(IDENTITY_KEYS.roles);
  if (subjects.length === 0 && roleValues.length === 0) return undefined;
  if (subjects.length !== 1) throw malformed(`${IDENTITY_KEYS.subject} must appear once`);
  if (roleValues.length > 1) throw malformed(`${IDENTITY_KEYS.roles} must appear at most once`);
  const raw = roleValues[0] === undefined ? undefined : String(roleValues[0]);
  // As identityMetadata writes it: no header for no roles, each role once.
  const roles = raw === undefined ? [] : raw.split(",");
  if (new Set(roles).size !== roles.length) throw malformed(`${IDENTITY_KEYS.roles} names a role twice`);
  const identity = parseIdentity(subjects[0], roles);
  if (!identity) throw malformed("bad subject or unknown role");
  return identity;
}

/** The caller's identity; UNAUTHENTICATED when the call carries none or a malformed one. */
export function requireIdentity(metadata: Metadata): Identity {
  const id = identityOf(metadata);
  if (!id) throw new ServiceError(status.UNAUTHENTICATED, "this call needs a caller identity");
  return id;
}

/** Metadata carrying `identity`, for trusted callers (the gateway, tools, tests). */
export function identityMetadata(identity: Identity): Metadata {
  const md = new Metadata();
  md.set(IDENTITY_KEYS.subject, identity.subject);
  if (identity.roles.length > 0) md.set(IDENTITY_KEYS.roles, identity.roles.join(","));
  return md;
}
