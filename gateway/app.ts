/** Wires the gateway: upstream clients (built once), routes, composition, auth, limits, HTTP front. */
import { setMaxListeners } from "node:events";
import { Code, ConnectError } from "@connectrpc/connect";
import { GatewayService, OperatorService } from "../gen/shopmesh/gateway/v1/gateway_pb.js";
import { busAuthOf, connectBus } from "../platform/bus.js";
import type { Logger } from "../platform/log.js";
import { policyFrom } from "../platform/policy-config.js";
import { REGISTRY_SCHEME } from "../platform/registry.js";
import { createResilientClient, type ResilientClient } from "../platform/resilience.js";
import { type AppTelemetry, startAppTelemetry } from "../platform/telemetry.js";
import { createAuthenticator } from "./auth.js";
import { createComposition } from "./compose.js";
import { type GatewayConfig, targetVariable } from "./config.js";
import { registerRoutes } from "./forward.js";
import { ConcurrencyLimiter, RateLimiter } from "./limits.js";
import { createOperator } from "./operator.js";
import { passthroughTable } from "./passthrough.js";
import { REFLECTION_SERVICES, registerReflection } from "./reflection.js";
import { ROUTES, UPSTREAMS, type Upstream, type UpstreamService } from "./routes.js";
import { type RunningFront, startFront } from "./server.js";
import { devSignInEndpoint, findWebDirectory, usesDevKey, webEndpoint } from "./web.js";

/** A running gateway. */
export interface GatewayApp extends RunningFront {
  readonly telemetry: AppTelemetry;
  /** Stops the front (draining calls) and closes upstream channels. */
  stop(): Promise<void>;
}

/** Starts the gateway. */
export async function startGateway(config: GatewayConfig, log: Logger): Promise<GatewayApp> {
  const telemetry = await startAppTelemetry("gateway", config, log);
  const policy = policyFrom("UPSTREAM", config);
  const targets = UPSTREAMS.map((u) => config[targetVariable(u)]);
  // The bus is needed only to read the service registry (client-side discovery).
  const bus =
    targets.some((t) => t.startsWith(`${REGISTRY_SCHEME}:`)) && config.NATS_URL !== "off"
      ? await connectBus(config.NATS_URL, "gateway", log, busAuthOf(config))
      : undefined;
  const opts = { telemetry, ...(bus ? { nc: bus.nc } : {}) };
  // One client per upstream of the routing table, typed by the service its route names (which
  // Object.fromEntries cannot carry). It calls the methods routed (composition's reads among them).
  const clients = Object.fromEntries(
    ROUTES.map((r) => [
      r.upstream,
      createResilientClient(r.upstream, r.service, config[targetVariable(r.upstream)], policy, log, {
        ...opts,
        calls: r.methods,
      }),
    ]),
  ) as unknown as { readonly [U in Upstream]: ResilientClient<UpstreamService<U>> };
  const composition = createComposition({ ...clients, timeoutMs: config.COMPOSITION_TIMEOUT_MS });
  const operator = createOperator({
    upstreams: clients,
    faultsEnabled: config.FAULT_INJECTION,
    timeoutMs: config.COMPOSITION_TIMEOUT_MS,
  });
  const draining = new AbortController();
  // One listener per stream forwarded, each removed at its end: as many as streams are open, not a leak.
  setMaxListeners(0, draining.signal);
  const front = await startFront({
    host: config.HTTP_HOST,
    port: config.HTTP_PORT,
    log,
    telemetry,
    routes: (router) => {
      registerRoutes(router, ROUTES, clients, draining.signal);
      router.service(GatewayService, composition);
      router.service(OperatorService, operator.service);
      // The operator's methods are routed (for admins); SetServiceFaults only exists with FAULT_INJECTION.
      const operatorMethods = ["GetSystemStatus", ...(config.FAULT_INJECTION ? ["SetServiceFaults"] : [])];
      registerReflection(
        router,
        [...ROUTES.map((r) => r.service), GatewayService, OperatorService],
        new Map([
          ...ROUTES.map((r): [string, readonly string[]] => [r.service.typeName, r.methods]),
          [OperatorService.typeName, operatorMethods],
        ]),
      );
    },
    authenticate: await createAuthenticator(config),
    perPrincipal: new RateLimiter(config.RATE_LIMIT_RPS, config.RATE_LIMIT_BURST),
    perIp: new RateLimiter(config.RATE_LIMIT_IP_RPS, config.RATE_LIMIT_IP_BURST),
    inFlight: new ConcurrencyLimiter(config.HTTP_MAX_CALLS_PER_IP, config.HTTP_MAX_CALLS),
    streamsPerPrincipal: new ConcurrencyLimiter(config.HTTP_MAX_STREAMS_PER_PRINCIPAL, config.HTTP_MAX_CALLS),
    trustTraceparent: config.TRUST_TRACEPARENT,
    // Anyone can sign tokens with the development key: a page on another name must not reach it (DNS rebinding).
    loopbackHostsOnly: usesDevKey(config),
    maxBodyBytes: config.MAX_BODY_BYTES,
    endpoints: [webEndpoint(findWebDirectory(), log), devSignInEndpoint(config, log)],
    corsOrigins: config.CORS_ORIGINS.split(",")
      .map((s) => s.trim())
      .filter(Boolean),
    trustProxy: config.TRUST_PROXY,
    // Reflection describes the public contract only; tools may read it without a token.
    tokenFree: new Set(REFLECTION_SERVICES.map((s) => s.typeName)),
    passthrough: config.FAST_PATHS ? passthroughTable(ROUTES, clients) : undefined,
    headersTimeoutMs: config.HTTP_HEADERS_TIMEOUT_MS,
    requestTimeoutMs: config.HTTP_REQUEST_TIMEOUT_MS,
    idleTimeoutMs: config.HTTP_IDLE_TIMEOUT_MS,
    streamIdleTimeoutMs: config.HTTP_STREAM_IDLE_TIMEOUT_MS,
    maxConnectionsPerIp: config.HTTP_MAX_CONNECTIONS_PER_IP,
    maxConnections: config.HTTP_MAX_CONNECTIONS,
    maxConcurrentStreams: config.HTTP2_MAX_CONCURRENT_STREAMS,
  });
  return {
    ...front,
    telemetry,
    async stop() {
      draining.abort(new ConnectError("the gateway is shutting down: call again", Code.Unavailable));
      await front.stop(config.SHUTDOWN_GRACE_MS);
      for (const c of Object.values(clients)) c.close();
      operator.close();
      await bus?.close();
      await telemetry.close();
    },
  };
}
