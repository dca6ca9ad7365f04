/** scripts/log-lines.ts: what `LOG_FORMAT=json make run` makes of each line a process prints. */
import { describe, expect, it } from "vitest";
import { jsonLine } from "../scripts/log-lines.js";

const parse = (s: string) => JSON.parse(s) as Record<string, unknown>;

describe("jsonLine", () => {
  it("keeps a process's JSON as written, with proc in front", () => {
    const line = '{"level":30,"time":"2026-01-01T00:00:00.000Z","service":"order","n":12345678901234567890,"msg":"x"}';
    expect(jsonLine("order-2", line, false)).toBe(`{"proc":"order-2",${line.slice(1)}`);
    expect(jsonLine("order", "{}", false)).toBe('{"proc":"order"}');
  });

  it("wraps anything else as msg, with a level from its tag or its stream", () => {
    const nats = parse(jsonLine("nats", "[42] 2026/11/30 05:41:54.772416 [WRN] slow consumer", true));
    expect(nats).toMatchObject({ level: 40, proc: "nats", msg: "slow consumer" });
    expect(typeof nats.time).toBe("string");
    expect(parse(jsonLine("nats", "[42] 2026/11/30 05:41:54.772416 [INF] Server is ready", true))).toMatchObject({
      level: 30,
      msg: "Server is ready",
    });
    expect(parse(jsonLine("postgres", "2026-11-30 05:00:00 UTC [7] FATAL:  out of memory", true)).level).toBe(60);
    expect(parse(jsonLine("payment", "    at Object.<anonymous> (/x.js:1:1)", true))).toMatchObject({
      level: 50,
      msg: "    at Object.<anonymous> (/x.js:1:1)",
    });
    expect(parse(jsonLine("payment", "plain", false)).level).toBe(30);
  });

  it("wraps what only looks like a JSON object", () => {
    for (const line of ["{not json}", "[1,2]", "{", '"text"']) {
      expect(parse(jsonLine("gateway", line, false))).toMatchObject({ proc: "gateway", msg: line });
    }
  });
});
