/**
 * Wires the order service: store, resilient clients to inventory and
 * payment, the saga orchestrator, choreography consumers, API; resumes sagas
 * left in flight.
 */
import { realpathSync } from "node:fs";
import { hostname } from "node:os";
import { basename, dirname, join } from "node:path";
import { EVENTS } from "../../contracts/events.js";
import { InventoryService } from "../../gen/shopmesh/inventory/v1/inventory_pb.js";
import { OrderService } from "../../gen/shopmesh/order/v1/order_pb.js";
import { PaymentService } from "../../gen/shopmesh/payment/v1/payment_pb.js";
import {
  bind,
  createResilientClient,
  detached,
  type Host,
  type HostContext,
  holdExclusive,
  type Logger,
  locationOf,
  type Metrics,
  makeDirs,
  newId,
  policyFrom,
  processStalls,
  type ResilientClient,
  type StallClock,
  startHost,
} from "../../platform/index.js";
import { createOrderApi } from "./api.js";
import type { OrderConfig } from "./config.js";
import { SAGA_MODES, TERMINAL_STATUSES } from "./domain.js";
import { Choreography } from "./events.js";
import { PARTICIPANT_CALLS } from "./participants.js";
import { SagaOrchestrator } from "./saga.js";
import { OrderStore } from "./store.js";

/** What the order service builds besides its API. */
interface OrderParts {
  readonly saga: SagaOrchestrator;
  readonly inventory: ResilientClient<typeof InventoryService>;
  readonly payment: ResilientClient<typeof PaymentService>;
  /** The choreographed saga's step-budget sweep. */
  readonly expiry?: NodeJS.Timeout;
}

/** A running order service. */
export interface OrderApp extends Host<OrderParts> {
  readonly store: OrderStore;
  readonly saga: SagaOrchestrator;
  readonly inventory: ResilientClient<typeof InventoryService>;
  readonly payment: ResilientClient<typeof PaymentService>;
}

/** Saga metrics from the store's lifecycle events, each mode's and outcome's from 0 (see createMetrics). */
function countSagas(store: OrderStore, m: Metrics): void {
  for (const mode of SAGA_MODES) {
    m.sagasStarted.inc({ mode }, 0);
    m.sagasCompensated.inc({ mode }, 0);
    for (const status of TERMINAL_STATUSES) {
      m.sagasFinished.inc({ mode, outcome: status.toLowerCase() }, 0);
      m.sagaDuration.zero({ mode, outcome: status.toLowerCase() });
    }
  }
  store.onPlaced((o) => m.sagasStarted.inc({ mode: o.sagaMode }));
  store.onTerminal((o) => {
    const outcome = o.status.toLowerCase();
    m.sagasFinished.inc({ mode: o.sagaMode, outcome });
    m.sagaDuration.observe({ mode: o.sagaMode, outcome }, (o.updatedAt - o.createdAt) / 1000);
    // Something was held or taken (or may have been) and had to be given back.
    if (o.status === "CANCELLED" && (o.stock !== "none" || o.payment !== "none")) {
      m.sagasCompensated.inc({ mode: o.sagaMode });
    }
  });
}

/** The saga and its resilient clients, once the bus (for registry:/// targets) and telemetry exist. */
function buildSaga(
  config: OrderConfig,
  log: Logger,
  store: OrderStore,
  stall: StallClock,
  { telemetry, bus }: HostContext,
): OrderParts {
  const opts = { telemetry, ...(bus ? { nc: bus.nc } : {}) };
  const inventory = createResilientClient(
    "inventory",
    InventoryService,
    config.INVENTORY_TARGET,
    policyFrom("INVENTORY", config),
    log,
    { ...opts, calls: PARTICIPANT_CALLS.inventory },
  );
  const payment = createResilientClient(
    "payment",
    PaymentService,
    config.PAYMENT_TARGET,
    policyFrom("PAYMENT", config),
    log,
    { ...opts, calls: PARTICIPANT_CALLS.payment },
  );
  const saga = new SagaOrchestrator({
    store,
    inventory,
    payment,
    telemetry,
    log: log.child({ component: "saga" }),
    leasing: {
      owner: `${hostname()}/${process.pid}/${newId("lease")}`,
      ms: config.SAGA_LEASE_MS,
      adoptAllAtStart: store.db.engine === "sqlite",
    },
    stalledSince: (since) => stall.stalledSince(since),
    timing: {
      stepBudgetMs: config.SAGA_STEP_BUDGET_MS,
      retryBaseMs: config.SAGA_RETRY_BASE_MS,
      retryMaxMs: config.SAGA_RETRY_MAX_MS,
    },
  });
  return { saga, inventory, payment };
}

/**
 * On SQLite the order service is the file's only writer (it adopts every outbox claim and saga, and
 * hears its own changes only): a second process on the same file — started by hand, or beside a
 * frozen one — started without a word. It holds `<file>.writer` (an exclusive SQLite transaction the
 * kernel ends with the process) for its life; the release, or a refusal naming the file.
 */
function holdSoleWriter(path: string): () => void {
  if (path === ":memory:") return () => {};
  makeDirs(dirname(path));
  // The file's real place: two paths (a link) to one file are one writer.
  const release = holdExclusive(join(realpathSync(dirname(path)), `${basename(path)}.writer`));
  if (release) return release;
  throw new Error(
    `another order process is using ${path}: on SQLite the order service runs as one process ` +
      "(replicas need PostgreSQL: DATABASE_URL)",
  );
}

/** Opens the store, connects to inventory and payment, starts serving, and resumes unfinished sagas. */
export async function startOrder(config: OrderConfig, log: Logger): Promise<OrderApp> {
  const location = locationOf("order", config);
  const release = location.engine === "sqlite" ? holdSoleWriter(location.path) : () => {};
  try {
    return await startWith(config, log, location, release);
  } catch (err) {
    release();
    throw err;
  }
}

async function startWith(
  config: OrderConfig,
  log: Logger,
  location: ReturnType<typeof locationOf>,
  release: () => void,
): Promise<OrderApp> {
  const store = await OrderStore.open(location, Date.now, log);
  const choreography = new Choreography(store);
  // A step budget counts the time participants take, not the time this process stood still.
  const stall = processStalls();
  const host = await startHost({
    name: "order",
    config,
    log,
    db: store.db,
    catalogue: EVENTS,
    outbox: store.outbox,
    consumers: choreography.consumers(),
    // On SQLite the order service is one process (make run refuses ORDER_REPLICAS > 1 there).
    soleWriter: store.db.engine === "sqlite",
    build: async (ctx) => {
      const parts = buildSaga(config, log, store, stall, ctx);
      countSagas(store, ctx.telemetry.metrics);
      const { saga } = parts;
      // Sagas left in flight are adopted before the port serves: started after, a signal while the
      // adoption waited (on an operator's lock, a slow database) found the process "starting", serving
      // calls already, and exited at once with them in flight, without its drain.
      await saga.start();
      // The choreographed saga's step budget, checked a few times per budget.
      const budget = config.SAGA_STEP_BUDGET_MS;
      // One sweep at a time: with the database away each waited, and they piled up to run at once.
      let sweeping = false;
      const expiry = setInterval(
        () => {
          if (sweeping) return;
          sweeping = true;
          void detached(() =>
            choreography
              .expire(budget, Date.now(), (since) => stall.stalledSince(since))
              .then(
                (n) =>
                  n > 0 &&
                  log.warn({ orders: n }, "choreographed orders cancelled: no progress within the step budget"),
                (err: unknown) => log.warn({ err }, "choreography step-budget sweep failed; retrying on the next one"),
              ),
          ).finally(() => {
            sweeping = false;
          });
        },
        Math.max(100, Math.floor(budget / 4)),
      );
      expiry.unref();
      const api = createOrderApi({
        store,
        defaultMode: config.SAGA_DEFAULT_MODE,
        lease: saga.lease,
        placed: async (o, fence, tx) =>
          o.sagaMode === "ORCHESTRATION" ? saga.begin(o, fence, tx) : { order: o, steps: [] },
        cancelRequested: async (o, tx) => {
          if (o.sagaMode === "CHOREOGRAPHY") await choreography.cancelRequested(o.id, tx);
          else tx.afterCommit(() => saga.wake(o.id));
        },
      });
      return { services: [bind(OrderService, api)], parts: { ...parts, expiry } };
    },
    stopApp: async (parts) => {
      // Sagas stop after calls drained and give their leases back: another replica (or the next start) resumes them.
      clearInterval(parts?.expiry);
      await parts?.saga.stop();
      parts?.inventory.close();
      parts?.payment.close();
    },
    close: async () => {
      try {
        await store.close();
      } finally {
        release();
      }
    },
  });
  const { saga, inventory, payment } = host.parts;
  return { ...host, store, saga, inventory, payment };
}
