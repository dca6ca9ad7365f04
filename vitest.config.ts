import { defineConfig } from "vitest/config";

/** Suites whose behaviour depends on the store: they run once per database engine. */
const STORE_SUITES = [
  "services/**/*.test.ts",
  "platform/events.test.ts",
  "test/burst.test.ts",
  "test/discovery.test.ts",
  "test/hostile-domain.test.ts",
  "test/hostile-soak.test.ts",
  "test/hostile-race-alone.test.ts",
];
/** Suites that need several replicas on one PostgreSQL (SQLite is one process per file). */
const POSTGRES_ONLY = [
  "test/scale-out.test.ts",
  "test/hostile-scale.test.ts",
  "test/hostile-race.test.ts",
  "platform/sql.test.ts",
  "platform/lock-order.test.ts",
  "services/history/first-event.test.ts",
  "services/inventory/lock-order.test.ts",
];
/**
 * Suites that saturate the machine on purpose (the bench smoke run, make compare): they run after
 * everything else, one at a time, so their load never starves another suite's timeouts.
 */
const SATURATING = ["test/bench.test.ts", "test/compare.test.ts", "test/footprint.test.ts"];
/**
 * Suites that assert a time bound under a load of their own (40 orders during a payment outage each
 * end within the step budget and a few seconds). On PostgreSQL a whole system in one process at that
 * rate takes most of a core: beside another suite the bound was missed (one CI run in three). Their
 * PostgreSQL run comes last, alone.
 */
const TIMED_ON_POSTGRES = ["services/order/compensation.test.ts"];
/**
 * Suites that start `make run`'s runner on ports picked beforehand (freePort: free when asked, bound
 * seconds later): alongside other suites, whose servers take ephemeral ports, one was taken in between
 * (a service then failed to bind, and a call found another test's server). They run with the
 * saturating ones, alone.
 */
const PICKED_PORTS = [
  "test/outage.test.ts",
  "test/docs.test.ts",
  "test/run.test.ts",
  "test/history-rebuild.test.ts",
  "test/hostile-cli.test.ts",
];

// Two cores here: two workers; integration tests start real servers on
// ephemeral ports and real processes, so give them room.
export default defineConfig({
  test: {
    pool: "forks",
    maxWorkers: 2,
    testTimeout: 30_000,
    hookTimeout: 30_000,
    // expect.poll's own default (1 s) is one busy moment on two shared cores; a poll still ends at
    // its first success, so only a failure waits longer.
    expect: { poll: { timeout: 5_000 } },
    reporters: ["default", "./test/summary-reporter.ts"],
    projects: [
      {
        extends: true,
        test: {
          name: "sqlite",
          include: [
            "platform/**/*.test.ts",
            "contracts/**/*.test.ts",
            "services/**/*.test.ts",
            "gateway/**/*.test.ts",
            "test/**/*.test.ts",
          ],
          exclude: [...POSTGRES_ONLY, ...SATURATING, ...PICKED_PORTS],
          env: { SHOPMESH_TEST_DB: "sqlite" },
          sequence: { groupOrder: 0 },
        },
      },
      {
        // The same store suites against a real PostgreSQL (one server for the run, a database per system).
        extends: true,
        test: {
          name: "postgres",
          include: [...STORE_SUITES, ...POSTGRES_ONLY],
          exclude: TIMED_ON_POSTGRES,
          env: { SHOPMESH_TEST_DB: "postgres" },
          globalSetup: ["./test/postgres-setup.ts"],
          sequence: { groupOrder: 0 },
        },
      },
      {
        extends: true,
        test: {
          name: "postgres-alone",
          include: TIMED_ON_POSTGRES,
          env: { SHOPMESH_TEST_DB: "postgres" },
          globalSetup: ["./test/postgres-setup.ts"],
          fileParallelism: false,
          sequence: { groupOrder: 2 },
        },
      },
      {
        extends: true,
        test: {
          name: "saturating",
          include: [...SATURATING, ...PICKED_PORTS],
          env: { SHOPMESH_TEST_DB: "sqlite" },
          fileParallelism: false,
          sequence: { groupOrder: 1 },
        },
      },
    ],
  },
});
