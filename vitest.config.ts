import { defineConfig } from "vitest/config";

/** Suites whose behaviour depends on the store: they run once per database engine. */
const STORE_SUITES = [
  "services/**/*.test.ts",
  "platform/events.test.ts",
  "test/burst.test.ts",
  "test/discovery.test.ts",
];
/** Suites that need several replicas on one PostgreSQL (SQLite is one process per file). */
const POSTGRES_ONLY = ["test/scale-out.test.ts", "platform/sql.test.ts"];
/**
 * Suites that saturate the machine on purpose (the bench smoke run, make compare): they run after
 * everything else, one at a time, so their load never starves another suite's timeouts.
 */
const SATURATING = ["test/bench.test.ts", "test/compare.test.ts", "test/footprint.test.ts"];

// Two cores here: two workers; integration tests start real servers on
// ephemeral ports and real processes, so give them room.
export default defineConfig({
  test: {
    pool: "forks",
    maxWorkers: 2,
    testTimeout: 30_000,
    hookTimeout: 30_000,
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
          exclude: [...POSTGRES_ONLY, ...SATURATING],
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
          env: { SHOPMESH_TEST_DB: "postgres" },
          globalSetup: ["./test/postgres-setup.ts"],
          sequence: { groupOrder: 0 },
        },
      },
      {
        extends: true,
        test: {
          name: "saturating",
          include: SATURATING,
          env: { SHOPMESH_TEST_DB: "sqlite" },
          fileParallelism: false,
          sequence: { groupOrder: 1 },
        },
      },
    ],
  },
});
