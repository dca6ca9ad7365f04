/**
 * The shopmesh runtime shared by every service and the gateway. Explicit
 * named exports only; no business logic lives here (event types, order
 * lines and saga keys are the contracts' business: contracts/).
 */

export { sql } from "kysely";
export { backoffMs } from "./backoff.js";
export {
  type Bus,
  type BusAuth,
  type BusOptions,
  busAuthOf,
  connectBus,
  EVENT_RETENTION_MS,
  STREAM_MAX_BYTES,
} from "./bus.js";
export { BUS_ADMIN, type BusUser, busUsers, natsAuthorization, provisionBus } from "./bus-access.js";
export {
  DLQ_STREAM,
  type EventCatalogue,
  type EventKind,
  eventCatalogue,
  eventSubject,
  NO_ORDER,
  type StreamSpec,
  selects,
} from "./catalogue.js";
export { faultEnv } from "./chaos.js";
export {
  bool,
  ConfigError,
  type ConfigOf,
  commonEnv,
  configOrExit,
  type EnvReader,
  EXIT_REFUSED,
  httpUrl,
  int,
  oneOf,
  parseEnv,
  registryWithoutBus,
  StartRefused,
  str,
  target,
} from "./config.js";
export type { ConsumerSpec } from "./consumer-spec.js";
export { type DbConfig, locationOf, type Migrations, migrations, openDatabase } from "./db.js";
export { deadLettersWaiting, lettersWaiting, markOf, markSubject, REDRIVE_MARKS } from "./dead-letters-waiting.js";
export { earliestDeadline } from "./deadline.js";
export {
  Code,
  ERROR_DETAILS,
  FailedPreconditionError,
  IdempotencyKeyReusedError,
  InvalidArgumentError,
  NotFoundError,
  RpcError,
  ServiceError,
  toStatusObject,
} from "./errors.js";
export type { Eventing } from "./eventing.js";
export { holdExclusive } from "./file-lock.js";
export { type CallContext, framePrefix, type Interceptor, type ServiceImpl, unframe, withImports } from "./grpc.js";
export { type BytesClient, type CallOptions, type Client, createChannel, createClient } from "./grpc-client.js";
export { headerListBytes, MAX_HEADER_LIST_BYTES } from "./header-limit.js";
export { replaceHidden } from "./hidden.js";
export { type Built, type Host, type HostConfig, type HostContext, type HostOptions, startHost } from "./host.js";
export { type KeyUse, keyUse, requestFingerprint, requireIdempotencyKey, VOIDED } from "./idempotency.js";
export { identityMetadata, identityOf, requireIdentity } from "./identity.js";
export { type Identity, isRole, parseIdentity, ROLES, type Role, SUBJECT } from "./identity-rule.js";
export { newId } from "./ids.js";
export {
  decodeEvent,
  type EventContext,
  type EventHandler,
  INBOX_FAILURES_MIGRATION,
  INBOX_MIGRATION,
  INBOX_PURGE_MIGRATION,
  Inbox,
  on,
  UnprocessableEventError,
} from "./inbox.js";
export { MAX_INSTANCES } from "./instances.js";
export { runService, type Stoppable } from "./lifecycle.js";
export { createLogger, type Logger, silentLogger } from "./log.js";
export { makeDirs } from "./make-dirs.js";
export type { Metrics } from "./metrics.js";
export { OUTBOX_CLAIMS_MIGRATION, OUTBOX_INDEXES_MIGRATION, OUTBOX_MIGRATION, Outbox } from "./outbox.js";
export { type Cursor, type CursorShape, Pages, pageSize } from "./paging.js";
export {
  backoffProblems,
  DEFAULT_POLICY,
  type PolicyConfig,
  type PolicyEnv,
  policyEnv,
  policyFrom,
  policyProblems,
} from "./policy-config.js";
export { sayWhileRead } from "./printable.js";
export { contextOf, currentTraceparent, detached, extractContext, inSpan, logIds } from "./propagation.js";
export { withoutPassword } from "./redact.js";
export { REGISTRY_SCHEME } from "./registry.js";
export { OutboxRelay } from "./relay.js";
export { createResilientClient, type DownstreamState, type PolicyEvents, type ResilientClient } from "./resilience.js";
export { bind, type GrpcServerOptions, type RunningServer, type ServiceBinding, startGrpcServer } from "./server.js";
export { sharedNow } from "./shared-clock.js";
export type { Db, DbLocation, Engine, Listening, Queries, Query, Tx } from "./sql.js";
export { openElsewhere, sqliteFileOf, sqliteFilesOf, swapSqliteFile, UNREADABLE } from "./sqlite-swap.js";
export { processStalls, type StallClock } from "./stall.js";
export { type AppTelemetry, createTelemetry, startAppTelemetry, type Telemetry } from "./telemetry.js";
export { READ_ONLY, rpcAttributes, startTracing } from "./tracing.js";
export {
  CURRENCY_CODE,
  clipText,
  MAX_EVENT_TEXT,
  requireId,
  requireQuantity,
  requireSubject,
  requireText,
  withoutControls,
} from "./validate.js";
