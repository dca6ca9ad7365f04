/**
 * The shopmesh runtime shared by every service and the gateway. Explicit
 * named exports only; no business logic lives here (event types, order
 * lines and saga keys are the contracts' business: contracts/).
 */
export { backoffMs } from "./backoff.js";
export { type Bus, type BusOptions, connectBus } from "./bus.js";
export {
  DLQ_STREAM,
  type EventCatalogue,
  type EventKind,
  eventCatalogue,
  type StreamSpec,
  subjectOf,
} from "./catalogue.js";
export { FaultInjector, faultEnv } from "./chaos.js";
export {
  bool,
  ConfigError,
  type ConfigOf,
  commonEnv,
  type EnvReader,
  int,
  num,
  oneOf,
  parseEnv,
  str,
} from "./config.js";
export { type Db, openDatabase } from "./db.js";
export { earliestDeadline } from "./deadline.js";
export {
  AlreadyExistsError,
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
export { type Eventing, startEventing } from "./eventing.js";
export {
  type CallContext,
  grpcHandlers,
  grpcServiceDefinition,
  type Interceptor,
  methodPath,
  type ServiceImpl,
} from "./grpc.js";
export { type CallOptions, type Client, createChannel, createClient } from "./grpc-client.js";
export { type Built, type Host, type HostConfig, type HostContext, type HostOptions, startHost } from "./host.js";
export {
  type KeyUse,
  keyUse,
  MAX_IDEMPOTENCY_KEY,
  requestFingerprint,
  requireIdempotencyKey,
  VOIDED,
} from "./idempotency.js";
export {
  IDENTITY_KEYS,
  type Identity,
  identityMetadata,
  identityOf,
  isRole,
  parseIdentity,
  ROLES,
  type Role,
  requireIdentity,
  SUBJECT,
} from "./identity.js";
export { newId } from "./ids.js";
export {
  type ConsumerOptions,
  type ConsumerSpec,
  decodeEvent,
  type EventContext,
  type EventHandler,
  INBOX_MIGRATION,
  Inbox,
  on,
  type RunningConsumer,
  startConsumer,
  UnprocessableEventError,
} from "./inbox.js";
export { runService, type Stoppable } from "./lifecycle.js";
export { createLogger, type Logger, silentLogger } from "./log.js";
export { type Metrics, serveMetrics } from "./metrics.js";
export { OUTBOX_MIGRATION, Outbox, OutboxRelay } from "./outbox.js";
export {
  type Cursor,
  type CursorShape,
  decodePageToken,
  encodePageToken,
  PAGE_SIZE,
  pageOf,
  pageSize,
} from "./paging.js";
export {
  DEFAULT_POLICY,
  isIdempotent,
  isRetryable,
  type PolicyConfig,
  type PolicyEnv,
  policyEnv,
  policyFrom,
} from "./policy.js";
export { contextOf, currentTraceparent, extractContext, injectContext, inSpan, logIds } from "./propagation.js";
export {
  announce,
  DEFAULT_HEARTBEAT_MS,
  DEFAULT_TTL_MS,
  listInstances,
  openRegistry,
  REGISTRY_BUCKET,
  REGISTRY_SCHEME,
  type RegisterOptions,
  type Registration,
  type RegistryEntry,
  registerInstance,
} from "./registry.js";
export { type InstanceListener, type InstanceWatch, watchInstances } from "./registry-watch.js";
export { createResilientClient, type DownstreamState, type PolicyEvents, type ResilientClient } from "./resilience.js";
export { channelOptionsFor, registryChannelOptions, upstreamChannel, useRegistryResolver } from "./resolver.js";
export { bind, type GrpcServerOptions, type RunningServer, type ServiceBinding, startGrpcServer } from "./server.js";
export { DEFAULT_TRACE_FILE_MAX_BYTES, FileSpanExporter, spanRecord } from "./span-file.js";
export { type AppTelemetry, createTelemetry, startAppTelemetry, type Telemetry } from "./telemetry.js";
export { startTracing } from "./tracing.js";
export { requireId, requireQuantity } from "./validate.js";
