import { execFileSync } from "node:child_process";
import { join } from "node:path";
import { defineConfig } from "vitest/config";

// The suites start the system's processes and commands from dist/, as make does (test/fixtures.ts
// `built`): built here first when a source is newer, in vitest's own process before any worker starts
// (make test has built it already: a no-op then). What the build says goes to stderr.
if (process.env.VITEST_POOL_ID === undefined) {
  execFileSync("make", ["-s", "--no-print-directory", "build"], { cwd: import.meta.dirname, stdio: ["ignore", 2, 2] });
}

/** Suites whose behaviour depends on the store: they run once per database engine. */
const STORE_SUITES = [
  "services/**/*.test.ts",
  "platform/events.test.ts",
  "test/burst.test.ts",
  "test/discovery.test.ts",
  "test/hostile-domain.test.ts",
  // Subjects compared in SQL: Alice is not alice on either engine.
  "test/hostile-identity-spelling.test.ts",
  "test/hostile-soak.test.ts",
  "test/hostile-race-alone.test.ts",
  "test/hostile-paging.test.ts",
  "test/hostile-idempotency.test.ts",
];
/** Suites that need several replicas on one PostgreSQL (SQLite is one process per file). */
const POSTGRES_ONLY = [
  "test/scale-out.test.ts",
  "test/hostile-scale.test.ts",
  "test/hostile-race.test.ts",
  "test/hostile-operators.test.ts",
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
 * Suites that start `make run`'s runner, each a whole system on ports picked beforehand (freePort, from
 * this worker's own slot below the ephemeral range: no other suite binds there). They run after the
 * first group, two at a time, beside each other only: a runner's system under a first-group suite's
 * load is one more system on two cores, and their shell and CLI checks start a command for each line.
 */
const MAKE_RUN = [
  "test/outage.test.ts",
  "test/docs.test.ts",
  "test/run.test.ts",
  "test/history-rebuild.test.ts",
  "test/hostile-cli.test.ts",
  "test/build-concurrency.test.ts",
];

/**
 * Suites whose services and gateways run again on the image's Node (the Dockerfile's node:24, `make
 * node24`): test/fixtures.ts spawns them on it, the suites themselves run on this one. On PostgreSQL,
 * so that no process of Node 24 loads better-sqlite3's addon, which npm built for this Node. What
 * they watch changed between 20 and 24: a graceful drain (Node 24's http2 server.close() ends its
 * sessions itself), resets and GOAWAYs.
 */
const ON_NODE24 = ["test/hostile-drain.test.ts", "services/inventory/process.test.ts", "test/hostile-h2.test.ts"];
const NODE24 = join(import.meta.dirname, ".cache/node24/node_modules/.bin/node");

// Two cores, three workers: the suites wait on real servers, processes and
// timers, so two workers left the cores ~30% idle (a /proc sample: 69% busy;
// three: 86%, and a whole CI run's vitest 1,791 -> 1,598 s). Each project below
// inherits maxWorkers from here, so `vitest run --maxWorkers=N` does not reach
// them: change it here. Suites that assert within a time bound must hold on a
// machine this busy (hostile-domain's bounds were set so on 2026-12-08).
export default defineConfig({
  test: {
    pool: "forks",
    maxWorkers: 3,
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
          exclude: [...POSTGRES_ONLY, ...SATURATING, ...MAKE_RUN],
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
          name: "node24",
          include: ON_NODE24,
          env: { SHOPMESH_TEST_DB: "postgres", SHOPMESH_TEST_NODE: NODE24 },
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
          sequence: { groupOrder: 3 },
        },
      },
      {
        extends: true,
        test: {
          name: "make-run",
          include: MAKE_RUN,
          env: { SHOPMESH_TEST_DB: "sqlite" },
          sequence: { groupOrder: 1 },
        },
      },
      {
        extends: true,
        test: {
          name: "saturating",
          include: SATURATING,
          env: { SHOPMESH_TEST_DB: "sqlite" },
          fileParallelism: false,
          sequence: { groupOrder: 2 },
        },
      },
    ],
  },
});
