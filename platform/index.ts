/**
 * The shopmesh runtime shared by every service and the gateway. Explicit
 * named exports only; no business logic lives here.
 */
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
export {
  announce,
  channelOptionsFor,
  DEFAULT_HEARTBEAT_MS,
  DEFAULT_TTL_MS,
  type InstanceListener,
  type InstanceWatch,
  listInstances,
  openRegistry,
  REGISTRY_BUCKET,
  REGISTRY_SCHEME,
  type RegisterOptions,
  type Registration,
  type RegistryEntry,
  registerInstance,
  registryChannelOptions,
  upstreamChannel,
  useRegistryResolver,
  watchInstances,
} from "./discovery.js";
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
export {
  type Bus,
  type ConsumerOptions,
  connectBus,
  EVENT_REGISTRY,
  EVENT_SUBJECTS,
  type EventContext,
  type Eventing,
  type EventingOptions,
  type EventType,
  INBOX_MIGRATION,
  OUTBOX_MIGRATION,
  Outbox,
  OutboxRelay,
  on,
  type RunningConsumer,
  STREAMS,
  type StreamName,
  startConsumer,
  startEventing,
  UnprocessableEventError,
} from "./events.js";
export {
  type CallContext,
  type CallOptions,
  type Client,
  createChannel,
  createClient,
  grpcHandlers,
  grpcServiceDefinition,
  type Interceptor,
  methodPath,
  type ServiceImpl,
} from "./grpc.js";
export { type Host, type HostConfig, type HostContext, type HostOptions, startHost } from "./host.js";
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
export { type ProcessConfig, runService, type Stoppable } from "./lifecycle.js";
export { createLogger, type Logger, type LoggerOptions, silentLogger } from "./log.js";
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
  createResilientClient,
  DEFAULT_POLICY,
  type DownstreamState,
  isIdempotent,
  isRetryable,
  type PolicyConfig,
  type PolicyEnv,
  type PolicyEvents,
  policyEnv,
  policyFrom,
  type ResilientClient,
} from "./resilience.js";
export { bind, type GrpcServerOptions, type RunningServer, type ServiceBinding, startGrpcServer } from "./server.js";
export { DEFAULT_TRACE_FILE_MAX_BYTES, FileSpanExporter, spanRecord } from "./span-file.js";
export {
  type AppTelemetry,
  contextOf,
  createTelemetry,
  currentTraceparent,
  extractContext,
  injectContext,
  inSpan,
  type Metrics,
  serveMetrics,
  startAppTelemetry,
  startTracing,
  type Telemetry,
} from "./telemetry.js";
export {
  type Line,
  newId,
  requestFingerprint,
  requireId,
  requireIdempotencyKey,
  requireQuantity,
  validateLines,
} from "./validate.js";
