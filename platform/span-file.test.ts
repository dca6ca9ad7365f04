/** The span file stays bounded however long the system runs. */
import { readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { BasicTracerProvider, SimpleSpanProcessor } from "@opentelemetry/sdk-trace-base";
import { describe, expect, it } from "vitest";
import { tempDir } from "../test/fixtures.js";
import { FileSpanExporter } from "./span-file.js";

describe("FileSpanExporter", () => {
  it("rotates to <file>.1 before passing its cap: on disk never more than twice the cap", async () => {
    using dir = tempDir();
    const path = join(dir.path, "traces.jsonl");
    const cap = 8 * 1024;
    const exporter = new FileSpanExporter(path, cap);
    const provider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] });
    const tracer = provider.getTracer("test");
    let largest = 0;
    for (let i = 0; i < 500; i++) {
      tracer.startSpan(`span ${i}`, { attributes: { "order.id": `ord_${i}` } }).end();
      const total = [path, `${path}.1`].reduce((n, f) => n + (statSync(f, { throwIfNoEntry: false })?.size ?? 0), 0);
      largest = Math.max(largest, total);
    }
    await provider.shutdown();
    expect(statSync(path).size).toBeLessThanOrEqual(cap);
    expect(largest).toBeLessThanOrEqual(2 * cap);
    // Nothing is torn: every line of both generations is a whole span, the newest last.
    const lines = [`${path}.1`, path].flatMap((f) => readFileSync(f, "utf8").split("\n").filter(Boolean));
    const names = lines.map((l) => (JSON.parse(l) as { name: string }).name);
    expect(names.at(-1)).toBe("span 499");
    expect(names.length).toBeGreaterThan(10);
  });
});
