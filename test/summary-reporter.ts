/**
 * Ends a test run with one plain line, `vitest: N passed, N failed, N skipped`,
 * so any tool reading the log (CI included) can count the tests without
 * knowing vitest's own output. A file that failed outside its tests (a hook
 * such as afterAll, an import) counts as one failure, and so does each error
 * thrown outside any test: either fails the run, and the line says so.
 */
import type { SerializedError } from "vitest";
import type { Reporter, TestModule } from "vitest/node";

export default class SummaryReporter implements Reporter {
  onTestRunEnd(modules: ReadonlyArray<TestModule>, unhandledErrors: ReadonlyArray<SerializedError>): void {
    let passed = 0;
    let failed = unhandledErrors.length;
    let skipped = 0;
    for (const m of modules) {
      let failedHere = 0;
      for (const t of m.children.allTests()) {
        const state = t.result().state;
        if (state === "passed") passed++;
        else if (state === "failed") failedHere++;
        else skipped++;
      }
      failed += failedHere || (m.state() === "failed" ? 1 : 0);
    }
    process.stdout.write(`\nvitest: ${passed} passed, ${failed} failed, ${skipped} skipped\n`);
  }
}
