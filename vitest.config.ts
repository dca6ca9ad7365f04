import { defineConfig } from "vitest/config";

// Two cores here: two workers; integration tests start real servers on
// ephemeral ports and real processes, so give them room.
export default defineConfig({
  test: {
    include: [
      "platform/**/*.test.ts",
      "contracts/**/*.test.ts",
      "services/**/*.test.ts",
      "gateway/**/*.test.ts",
      "test/**/*.test.ts",
    ],
    pool: "forks",
    maxWorkers: 2,
    testTimeout: 30_000,
    hookTimeout: 30_000,
    reporters: ["default", "./test/summary-reporter.ts"],
  },
});
