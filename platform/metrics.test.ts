/**
 * createMetrics' track methods: what a downstream, a consumer or a publisher will count is exported
 * at 0 as it is set up, each label value it was given and no other (test/metrics-from-zero.test.ts
 * checks the same of every running process).
 */
import { describe, expect, it } from "vitest";
import { createMetrics } from "./metrics.js";

/** The label sets (each `k=v,...`, without `service`) and values of `name` in the registry now. */
async function seriesOf(m: ReturnType<typeof createMetrics>, name: string): Promise<Record<string, number>> {
  const metric = m.registry.getSingleMetric(name);
  if (!metric) throw new Error(`no metric ${name}`);
  const { values } = await metric.get();
  return Object.fromEntries(
    values.map((v) => [
      Object.entries(v.labels)
        .map(([k, l]) => `${k}=${l}`)
        .join(","),
      v.value,
    ]),
  );
}

const SAMPLE = () => ({ breaker: "closed", inFlight: 0, queued: 0, endpoints: [] });

describe("createMetrics", () => {
  it("exports nothing of a labelled counter before anything is tracked", async () => {
    const m = createMetrics("t");
    expect(await seriesOf(m, "bulkhead_rejected_total")).toEqual({});
    expect(await seriesOf(m, "events_handled_total")).toEqual({});
  });

  it("exports a downstream's rejections, breaker changes and given retries at 0 once tracked", async () => {
    const m = createMetrics("t");
    m.trackDownstream("payment", SAMPLE, [
      { method: "ChargePayment", code: "UNAVAILABLE" },
      { method: "ChargePayment", code: "DEADLINE_EXCEEDED" },
    ]);
    expect(await seriesOf(m, "bulkhead_rejected_total")).toEqual({ "downstream=payment": 0 });
    expect(await seriesOf(m, "circuit_breaker_transitions_total")).toEqual({
      "downstream=payment,to=closed": 0,
      "downstream=payment,to=half-open": 0,
      "downstream=payment,to=open": 0,
    });
    expect(await seriesOf(m, "rpc_client_retries_total")).toEqual({
      "downstream=payment,method=ChargePayment,code=UNAVAILABLE": 0,
      "downstream=payment,method=ChargePayment,code=DEADLINE_EXCEEDED": 0,
    });
    m.bulkheadRejected.inc({ downstream: "payment" });
    expect(await seriesOf(m, "bulkhead_rejected_total")).toEqual({ "downstream=payment": 1 });
  });

  it("exports a consumer's counters at 0 for each type it handles, in each outcome", async () => {
    const m = createMetrics("t");
    m.trackConsumer("c", ["a.v1.A"]);
    for (const name of ["events_dead_lettered_total", "events_dropped_unread_total", "events_redelivered_total"])
      expect(await seriesOf(m, name)).toEqual({ "consumer=c": 0 });
    expect(await seriesOf(m, "events_handled_total")).toEqual({
      "consumer=c,type=a.v1.A,outcome=handled": 0,
      "consumer=c,type=a.v1.A,outcome=duplicate": 0,
      "consumer=c,type=a.v1.A,outcome=failed": 0,
      "consumer=c,type=a.v1.A,outcome=ignored": 0,
    });
  });

  it("exports each type a relay publishes at 0", async () => {
    const m = createMetrics("t");
    m.trackPublished(["a.v1.A", "a.v1.B"]);
    expect(await seriesOf(m, "events_published_total")).toEqual({ "type=a.v1.A": 0, "type=a.v1.B": 0 });
  });
});
