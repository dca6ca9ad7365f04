/**
 * Ends a test run with one plain line, `vitest: N passed, N failed, N skipped`,
 * so any tool reading the log (CI included) can count the tests without
 * knowing vitest's own output. A file that failed outside its tests (a hook
 * such as afterAll, an import) counts as one failure, and so does each error
 * thrown outside any test: either fails the run, and the line says so.
 *
 * Just above it, one line per failure (project, file, test, the error's first
 * line): a log cut to its last lines (CI's record of a run) still names what
 * failed, not only how many.
 */
import type { SerializedError } from "vitest";
import type { Reporter, TestModule } from "vitest/node";

/** The first line of an error's message, at most 300 characters. */
const firstLine = (e: { message?: string } | undefined) => (e?.message ?? "").split("\n")[0]?.slice(0, 300) ?? "";

export default class SummaryReporter implements Reporter {
  onTestRunEnd(modules: ReadonlyArray<TestModule>, unhandledErrors: ReadonlyArray<SerializedError>): void {
    let passed = 0;
    let skipped = 0;
    const failures: string[] = [];
    for (const m of modules) {
      const where = m.project.name ? `[${m.project.name}] ${m.relativeModuleId}` : m.relativeModuleId;
      let failedHere = 0;
      for (const t of m.children.allTests()) {
        const result = t.result();
        if (result.state === "passed") passed++;
        else if (result.state === "failed") {
          failedHere++;
          failures.push(`${where} > ${t.fullName}: ${firstLine(result.errors[0])}`);
        } else skipped++;
      }
      if (failedHere === 0 && m.state() === "failed") failures.push(`${where}: ${firstLine(m.errors()[0])}`);
    }
    for (const e of unhandledErrors) failures.push(`unhandled error: ${firstLine(e)}`);
    if (failures.length > 0) process.stdout.write(`\nfailed:\n  ${failures.join("\n  ")}\n`);
    process.stdout.write(`\nvitest: ${passed} passed, ${failures.length} failed, ${skipped} skipped\n`);
  }
}
