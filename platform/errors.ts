/**
 * Errors that cross the wire: gRPC status codes used as the gRPC spec means
 * them, with google.rpc rich details (field violations, precondition
 * failures) in the standard `grpc-status-details-bin` trailer so any
 * language's client can read them.
 *
 * Domain code throws the small classes below (or subclasses of them, e.g.
 * `OutOfStockError extends FailedPreconditionError`); {@link toStatusObject}
 * is the one place that turns any thrown value into a status for the client.
 * Unknown errors become INTERNAL with a generic message: stacks and SQL never
 * reach a client.
 */
import {
  create,
  createRegistry,
  type DescMessage,
  fromBinary,
  isMessage,
  type Message,
  toBinary,
} from "@bufbuild/protobuf";
import { type Any, anyPack, anyUnpack } from "@bufbuild/protobuf/wkt";
import { Metadata, type StatusObject, status } from "@grpc/grpc-js";
import {
  type BadRequest_FieldViolation,
  BadRequestSchema,
  ErrorInfoSchema,
  PreconditionFailureSchema,
  ResourceInfoSchema,
} from "../gen/google/rpc/error_details_pb.js";
import { StatusSchema } from "../gen/google/rpc/status_pb.js";
import { isConflict, isDatabaseUnavailable, isStorageFailed, isStorageFull } from "./db-errors.js";

/** gRPC status codes (the numeric enum of @grpc/grpc-js). */
export { status as Code } from "@grpc/grpc-js";

const DETAILS_KEY = "grpc-status-details-bin";

/**
 * `code` when it is one of gRPC's 17 status codes, else UNKNOWN: how a peer's `grpc-status` outside them
 * is read (grpc-js passes any number on, NaN too). Kept, a compromised upstream's number reached the
 * gateway's clients as a code their protocol does not have, with the upstream's own message.
 */
export function knownStatus(code: number): status {
  return Number.isInteger(code) && code >= 0 && code <= 16 ? code : status.UNKNOWN;
}
/** The google.rpc detail types shopmesh sends, for decoding them anywhere. */
export const ERROR_DETAILS = createRegistry(
  BadRequestSchema,
  PreconditionFailureSchema,
  ErrorInfoSchema,
  ResourceInfoSchema,
);
const detailRegistry = ERROR_DETAILS;

/** An error meant for the client: a status code, a safe message, optional rich details. */
export class ServiceError extends Error {
  override name = "ServiceError";
  /** google.rpc detail messages sent with the status. */
  readonly details: Message[];
  constructor(
    readonly code: status,
    message: string,
    opts: { cause?: unknown; details?: Message[] } = {},
  ) {
    super(message, { cause: opts.cause });
    this.details = opts.details ?? [];
  }
}

/** INVALID_ARGUMENT naming the offending request field (google.rpc.BadRequest). */
export class InvalidArgumentError extends ServiceError {
  override name = "InvalidArgumentError";
  constructor(
    readonly field: string,
    readonly description: string,
  ) {
    super(status.INVALID_ARGUMENT, `${field}: ${description}`, {
      details: [create(BadRequestSchema, { fieldViolations: [{ field, description }] })],
    });
  }
}

/** NOT_FOUND for a named resource (google.rpc.ResourceInfo). */
export class NotFoundError extends ServiceError {
  override name = "NotFoundError";
  constructor(resourceType: string, resourceName: string) {
    super(status.NOT_FOUND, `${resourceType} ${JSON.stringify(resourceName)} not found`, {
      details: [create(ResourceInfoSchema, { resourceType, resourceName })],
    });
  }
}

/** FAILED_PRECONDITION: the system is not in a state that allows the operation. */
export class FailedPreconditionError extends ServiceError {
  override name = "FailedPreconditionError";
  constructor(message: string, violations: { type: string; subject: string; description: string }[] = []) {
    super(status.FAILED_PRECONDITION, message, {
      details: violations.length > 0 ? [create(PreconditionFailureSchema, { violations })] : [],
    });
  }
}

/** ALREADY_EXISTS: e.g. an idempotency key reused with a different request. */
export class AlreadyExistsError extends ServiceError {
  override name = "AlreadyExistsError";
  constructor(message: string) {
    super(status.ALREADY_EXISTS, message);
  }
}

/** Reuse of an idempotency key for a request that differs from the first one. */
export class IdempotencyKeyReusedError extends AlreadyExistsError {
  override name = "IdempotencyKeyReusedError";
  constructor(key: string) {
    super(`idempotency_key ${JSON.stringify(key)} was already used for a different request`);
  }
}

/**
 * Maps any thrown value to the status sent to the client. ServiceErrors keep
 * their code, message and details; a database that cannot be reached, or
 * whose storage is full or failing, is UNAVAILABLE, a write conflict that kept losing ABORTED; anything else is
 * INTERNAL with a generic message (the caller logs the original).
 */
export function toStatusObject(err: unknown): Partial<StatusObject> & { code: status; details: string } {
  if (err instanceof ServiceError) {
    const metadata = new Metadata();
    if (err.details.length > 0) {
      const details: Any[] = err.details.map((d) => anyPack(schemaOf(d), d));
      const st = create(StatusSchema, { code: err.code, message: err.message, details });
      metadata.set(DETAILS_KEY, Buffer.from(toBinary(StatusSchema, st)));
    }
    return { code: err.code, details: err.message, metadata };
  }
  // The database restarting or a write race lost too often: the same request can succeed later.
  if (isStorageFull(err)) return { code: status.UNAVAILABLE, details: "database storage is full; try again later" };
  if (isStorageFailed(err)) {
    return {
      code: status.UNAVAILABLE,
      details: "database storage failed (an I/O error, or read-only); try again later",
    };
  }
  if (isDatabaseUnavailable(err)) return { code: status.UNAVAILABLE, details: "database unavailable; try again" };
  if (isConflict(err)) return { code: status.ABORTED, details: "concurrent update conflict; try again" };
  return { code: status.INTERNAL, details: "internal error" };
}

function schemaOf(msg: Message): DescMessage {
  const schema = detailRegistry.getMessage(msg.$typeName);
  if (!schema) throw new Error(`unregistered error detail type ${msg.$typeName}`);
  return schema;
}

/** A failed call as a client sees it: code, message and decoded details. */
export class RpcError extends Error {
  override name = "RpcError";
  /**
   * The call never left this process (every circuit open, no instance, the bulkhead full): the
   * downstream cannot have acted on it. False whenever any attempt was sent, whatever its answer.
   */
  readonly notSent: boolean;
  /**
   * The downstream's answer held no gRPC status to pass on: none came (a bare HTTP answer, a reset), or
   * its message was too large or malformed. The code is this process's reading of it, as grpc-js reads it.
   */
  readonly broken: boolean;
  constructor(
    readonly code: status,
    message: string,
    readonly metadata: Metadata,
    opts: { cause?: unknown; notSent?: boolean; broken?: boolean } = {},
  ) {
    super(message, opts);
    this.notSent = opts.notSent ?? false;
    this.broken = opts.broken ?? false;
  }

  /** google.rpc detail messages from the `grpc-status-details-bin` trailer (unknown types skipped). */
  get details(): Message[] {
    const raw = this.metadata.get(DETAILS_KEY)[0];
    if (!(raw instanceof Buffer)) return [];
    const st = fromBinary(StatusSchema, raw);
    return st.details.flatMap((any) => {
      const msg = anyUnpack(any, detailRegistry);
      return msg ? [msg] : [];
    });
  }

  /** Field violations of a google.rpc.BadRequest detail, if any. */
  get fieldViolations(): BadRequest_FieldViolation[] {
    return this.details.flatMap((d) => (isMessage(d, BadRequestSchema) ? d.fieldViolations : []));
  }

  /** Name of the code, e.g. "NOT_FOUND". */
  get codeName(): string {
    return status[this.code] ?? String(this.code);
  }
}
