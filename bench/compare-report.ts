/**
 * The report of `make compare` (bench/compare.ts): README.md with a table
 * per experiment — the claim of the patterns text it tests, the settings,
 * the numbers, and sentences on what they show, worded from the numbers so
 * a rerun that measures otherwise says otherwise — and an SVG chart each.
 */

import type { CompareResults } from "./compare.js";
import type { LoadResult } from "./load.js";
import { barChart, lineChart } from "./svg.js";

const n = (v: number, digits = 1) =>
  v >= 100 ? Math.round(v).toLocaleString("en-US") : String(Math.round(v * 10 ** digits) / 10 ** digits);
const ms3 = (r: Pick<LoadResult, "p50_ms" | "p95_ms" | "p99_ms">) => `${n(r.p50_ms)} / ${n(r.p95_ms)} / ${n(r.p99_ms)}`;
const pctOf = (part: number, whole: number) => (whole ? `${n((100 * part) / whole)}%` : "–");
/** "2.1× more" / "about the same" wording for a over b. */
function ratio(a: number, b: number, more: string, less: string): string {
  if (!a || !b) return a === b ? "the same" : a > b ? more : less;
  const r = a / b;
  if (r > 0.9 && r < 1.1) return `about the same (${n(a)} vs ${n(b)})`;
  return r > 1 ? `${n(r, 2)}× ${more} (${n(a)} vs ${n(b)})` : `${n(1 / r, 2)}× ${less} (${n(a)} vs ${n(b)})`;
}
const row = (cells: readonly (string | number)[]) => `| ${cells.join(" | ")} |`;

type PolicyRow = CompareResults["policies"][number];

/** Section 4's findings, each sentence chosen by the numbers. */
function resilienceFindings(
  flakyOn: PolicyRow,
  flakyOff: PolicyRow,
  slowOn: PolicyRow,
  slowOff: PolicyRow,
  healthy: PolicyRow,
): string {
  const out: string[] = [];
  out.push(
    `Flaky payment: ${n(flakyOn.success * 100)}% of checkouts confirmed with the policies and ${n(flakyOff.success * 100)}% without${flakyOn.success > flakyOff.success ? " — retries turn transient failures into successes, as the text says" : " — the retries did not help here, against the text"}.`,
  );
  if (flakyOn.breaker_opened) {
    out.push(
      `But the breaker, counting 5 consecutive failures, opened ${flakyOn.breaker_opened} time(s) on a service that still answered 70% of calls, and the checkouts of that moment waited out its pause (p99 ${n(flakyOn.checkout.p99_ms)} ms against ${n(flakyOff.checkout.p99_ms)} ms without the policies): a consecutive-failure breaker suits outages; for a flaky service a failure-ratio breaker (\`PAYMENT_BREAKER_FAILURE_RATIO\`) trips less.`,
    );
  }
  if (slowOn.peak_queued > 0 || slowOn.bulkhead_rejected > 0) {
    out.push(
      `Slow payment: the bulkhead held payment to ${slowOn.peak_in_flight} calls at once (${slowOff.peak_in_flight} without it), queued up to ${slowOn.peak_queued} and turned ${slowOn.bulkhead_rejected} away.`,
    );
    if (slowOn.checkout.p99_ms > slowOff.checkout.p99_ms) {
      out.push(
        `That cap has a price the text does not mention: a checkout it queued or turned away waited for a slot or for the saga's next attempt, so checkouts took longer with it (p50 ${n(slowOn.checkout.p50_ms)} against ${n(slowOff.checkout.p50_ms)} ms, p99 ${n(slowOn.checkout.p99_ms)} against ${n(slowOff.checkout.p99_ms)} ms) — it protects the dependency from more load than it can take, at the callers' expense; ${n(slowOn.success * 100)}% confirmed with it, ${n(slowOff.success * 100)}% without.`,
      );
    }
  } else {
    out.push(
      `Slow payment: payment never had more than ${slowOn.peak_in_flight} calls at once, within the bulkhead's 32, so it did not come into play at this rate; ${n(slowOn.success * 100)}% confirmed with the policies, ${n(slowOff.success * 100)}% without.`,
    );
  }
  const on = slowOn.unrelated.p99_ms;
  const off = slowOff.unrelated.p99_ms;
  const same = Math.abs(on - off) < Math.max(5, 0.25 * Math.max(on, off));
  out.push(
    `The unrelated route's p99 with payment slow was ${n(on)} ms with the policies and ${n(off)} ms without (${n(healthy.unrelated.p99_ms)} ms with payment healthy)${
      on < off && !same
        ? ": the bulkhead kept the slow dependency from hurting the unrelated route, as the text says."
        : `: here the measurement ${same ? "differs from" : "runs against"} the text's picture. The text's bulkhead guards a thread pool; a Node service has no thread per call — a call waiting on a slow dependency is a promise and a timer, not a blocked thread — so without the bulkhead the unrelated route did not starve. What the bulkhead bounds here is the load sent to a struggling dependency and the calls held in memory for it.`
    }`,
  );
  return out.join(" ");
}

export function render(r: CompareResults): Record<string, string> {
  const files: Record<string, string> = {};
  const out: string[] = [];
  const when = r.when.slice(0, 16).replace("T", " ");
  /** Where and when, for each table: a section may be read (or copied) on its own. */
  const measured = `${r.machine.cores} cores, Node ${r.machine.node}, ${r.when.slice(0, 10)}${r.quick ? ", QUICK" : ""}`;
  out.push(
    "# The patterns' trade-offs, measured (`make compare`)",
    "",
    `Measured by \`make compare${r.quick ? " QUICK=1" : ""}\` on ${when} UTC: ${r.machine.cores} cores (${r.machine.cpu}), Node ${r.machine.node}, ${r.seconds} s in all${r.quick ? " — a QUICK run: rounds too short to trust, for checking the experiments run" : ""}. Rerunning replaces this page, its charts and \`results.json\`.`,
    "",
    "Every experiment runs against the system as `make run` starts it — nats-server, five services and the gateway as Node processes from `make build`, SQLite, registry discovery, telemetry on — with the load in a process of its own (`bench/load.ts`); CPU is read from `/proc` for every system process, counts from the services' `/metrics` and nats-server's `/varz`. Everything shares this machine's cores, so read the two columns of a table against each other, not against another machine. The code: [`bench/compare.ts`](../../bench/compare.ts).",
    "",
  );

  // 1 ---------------------------------------------------------------------------
  const [orch, chor] = r.saga;
  if (orch && chor) {
    out.push(
      "## 1. Orchestration vs choreography (text 4-3)",
      "",
      "**The claim.** Orchestration: a central orchestrator drives each step by command — the flow is easy to follow, the orchestrator is a central point everything goes through. Choreography: each service reacts to events and decides its next step — less coupling, a flow that is harder to trace. Here the orchestrator is the order service calling inventory and payment over gRPC; in choreography the same steps are events on JetStream.",
      "",
      `**Settings** (${measured}). \`PlaceOrder\` then \`WatchOrder\` until the saga ends, one product, a good card; latency at 1 in flight and at ${orch.rate} orders/s (open loop, measured from when each order was due); throughput at 32 in flight, and the costs per order over that round (its events consumed); a declined card at 1 in flight.`,
      "",
      row(["", "orchestration", "choreography"]),
      row(["---", "---:", "---:"]),
      row(["checkout latency, 1 in flight: p50 / p95 / p99 (ms)", ms3(orch.one), ms3(chor.one)]),
      row([`checkout latency at ${orch.rate} orders/s: p50 / p95 / p99 (ms)`, ms3(orch.fixed), ms3(chor.fixed)]),
      row(["saturated throughput, 32 in flight (orders/s)", n(orch.saturated.rps), n(chor.saturated.rps)]),
      row(["CPU per order, whole system (ms)", n(orch.costs.cpu_ms, 2), n(chor.costs.cpu_ms, 2)]),
      row([
        "CPU per order in the order service (ms)",
        n(orch.costs.cpu_ms_by_process.order, 2),
        n(chor.costs.cpu_ms_by_process.order, 2),
      ]),
      row(["gRPC calls between services per order", n(orch.costs.grpc_calls, 2), n(chor.costs.grpc_calls, 2)]),
      row(["events published per order", n(orch.costs.events, 2), n(chor.costs.events, 2)]),
      row([
        "NATS messages per order (events, acks, pulls, API)",
        n(orch.costs.nats_messages),
        n(chor.costs.nats_messages),
      ]),
      row(["declined card → CANCELLED (compensated): p50 / p95 / p99 (ms)", ms3(orch.declined), ms3(chor.declined)]),
      "",
      `**What it shows.** Orchestration makes ${ratio(orch.costs.grpc_calls, chor.costs.grpc_calls, "more", "fewer")} gRPC calls per order and choreography publishes ${ratio(chor.costs.events, orch.costs.events, "more", "fewer")} events: the same saga is commands in one and events in the other. The orchestrator's own CPU per order is ${ratio(orch.costs.cpu_ms_by_process.order, chor.costs.cpu_ms_by_process.order, "higher", "lower")} in orchestration than the order service's in choreography${orch.costs.cpu_ms_by_process.order > chor.costs.cpu_ms_by_process.order ? " — the central point carries the flow, as the text says" : " — which is not the concentration the text leads one to expect"}. At 1 in flight orchestration's p50 is ${ratio(orch.one.p50_ms, chor.one.p50_ms, "slower", "faster")} than choreography's, saturated it does ${ratio(orch.saturated.rps, chor.saturated.rps, "more", "fewer")} orders/s, and it compensates a declined card ${ratio(orch.declined.p50_ms, chor.declined.p50_ms, "slower", "faster")} (p50). The text predicts no speed difference; what it does predict — every step through one coordinator versus steps spread over the participants — is the calls, events and CPU rows.`,
      "",
      "![Orchestration vs choreography: latency](saga-modes.svg)",
      "",
    );
    files["saga-modes.svg"] = barChart({
      title: "Checkout latency by saga mode",
      xLabel: "measurement",
      yLabel: "latency (ms)",
      groups: [
        "p50, 1 in flight",
        "p99, 1 in flight",
        `p50 at ${orch.rate}/s`,
        `p99 at ${orch.rate}/s`,
        "declined p50",
      ],
      series: r.saga.map((s) => ({
        name: s.mode,
        values: [s.one.p50_ms, s.one.p99_ms, s.fixed.p50_ms, s.fixed.p99_ms, s.declined.p50_ms],
      })),
    });
  }

  // 2 ---------------------------------------------------------------------------
  const [so, sc] = r.sync;
  if (so && sc) {
    const down = (so.upAt - so.downAt) / 1000;
    out.push(
      "## 2. Synchronous vs asynchronous calls under a payment outage (text 4-2)",
      "",
      "**The claim.** A synchronous call waits for its answer, so the called service's failure reaches the caller (cascading failure) and the caller waits; asynchronous messaging decouples them — the failure stays isolated, at the price of no immediate answer and eventual consistency. Here the orchestrator charges payment over gRPC (synchronous), while in choreography payment takes its work from JetStream (asynchronous). `PlaceOrder` itself answers at once in both modes: the saga runs behind it.",
      "",
      `**Settings** (${measured}). ${so.rate} orders/s for ${so.seconds} s in each mode; payment hard down (every call and every event refused) from ${so.downAt / 1000} s to ${so.upAt / 1000} s (${down} s). Step budget, retries and breaker as configured (\`SAGA_STEP_BUDGET_MS\` 15 s).`,
      "",
      row(["", "orchestration (sync)", "choreography (async)"]),
      row(["---", "---:", "---:"]),
      row([
        "orders placed (during the outage)",
        `${so.placed} (${so.placed_during})`,
        `${sc.placed} (${sc.placed_during})`,
      ]),
      row(["client-visible errors", so.client_errors, sc.client_errors]),
      row([
        "CONFIRMED / CANCELLED, all orders",
        `${so.confirmed} / ${so.cancelled}`,
        `${sc.confirmed} / ${sc.cancelled}`,
      ]),
      row([
        "CONFIRMED / CANCELLED, orders placed during the outage",
        `${so.confirmed_during} / ${so.cancelled_during}`,
        `${sc.confirmed_during} / ${sc.cancelled_during}`,
      ]),
      row([
        "checkout time of orders placed during the outage: p50 / max (s)",
        `${n(so.p50_during_ms / 1000)} / ${n(so.max_during_ms / 1000)}`,
        `${n(sc.p50_during_ms / 1000)} / ${n(sc.max_during_ms / 1000)}`,
      ]),
      row(["failed calls to payment seen by the order service", so.failed_calls, sc.failed_calls]),
      row(["order service's breaker for payment opened", so.breaker_opened, sc.breaker_opened]),
      row(["backlog drained, after payment is back (s)", n(so.drain_ms / 1000), n(sc.drain_ms / 1000)]),
      "",
      `**What it shows.** With payment down, the synchronous caller saw ${so.failed_calls} failed calls and opened its breaker ${so.breaker_opened} time(s); the asynchronous one saw ${sc.failed_calls}${sc.failed_calls < so.failed_calls ? ": the outage did not reach the order service at all, the events simply waited — the isolation the text claims" : ", which is not the isolation the text claims"}. Of the orders placed during the outage, ${pctOf(so.confirmed_during, so.placed_during)} were confirmed in orchestration and ${pctOf(sc.confirmed_during, sc.placed_during)} in choreography${so.cancelled_during + sc.cancelled_during ? " (the rest compensated)" : ""}, and their customers waited a median ${n(so.p50_during_ms / 1000)} s and ${n(sc.p50_during_ms / 1000)} s for the outcome: no immediate answer in either mode while payment is away. Client-visible errors: ${so.client_errors} and ${sc.client_errors} — in both modes the order is accepted first and the saga runs behind it, so the outage shows up as waiting, not as errors. The backlog was gone ${n(so.drain_ms / 1000)} s (orchestration) and ${n(sc.drain_ms / 1000)} s (choreography) after payment returned${so.drain_ms > sc.drain_ms ? ": the synchronous side waits out its retry backoff and the breaker's pause, the asynchronous side resumes as soon as payment consumes again" : ": the asynchronous side works through the backlog of events payment refused, each redelivered after a pause, while the synchronous side's retries found payment back sooner"}.`,
      "",
      "![Orders confirmed per second through a payment outage](outage.svg)",
      "",
    );
    files["outage.svg"] = lineChart({
      title: `Orders confirmed per second, payment down for ${down} s`,
      xLabel: "time since the load started (s)",
      yLabel: "orders confirmed (per s)",
      series: r.sync.map((s) => ({
        name: `${s.mode} (${s.mode === "orchestration" ? "sync" : "async"})`,
        points: s.confirmed_per_second.map((v, i) => [i + 0.5, v] as const),
      })),
      bands: [{ from: so.downAt / 1000, to: so.upAt / 1000, label: "payment down" }],
    });
  }

  // 3 ---------------------------------------------------------------------------
  const reads = r.reads;
  const healthy = reads.conditions[0];
  if (healthy) {
    const cell = (l: LoadResult, composed: boolean) => {
      const all = l.calls + l.failures;
      const complete = composed ? (l.outcomes.complete ?? 0) : l.calls;
      return [
        `${n(l.p50_ms)} / ${n(l.p99_ms)}`,
        n(l.rps),
        pctOf(complete, all),
        composed ? pctOf(l.outcomes.partial ?? 0, all) : "–",
        pctOf(l.failures, all),
      ];
    };
    const completeShare = (l: LoadResult, composed: boolean) =>
      (100 * (composed ? (l.outcomes.complete ?? 0) : l.calls)) / Math.max(1, l.calls + l.failures);
    const payDown = reads.conditions.find((c) => c.condition === "payment down");
    const invDown = reads.conditions.find((c) => c.condition === "inventory down");
    out.push(
      "## 3. API composition vs the CQRS read model (text 4-6)",
      "",
      "**The claim.** API composition answers a query by calling the services that own the data and combining their answers, so it is as fresh as they are but depends on every one of them at query time. Event-driven data sharing with CQRS keeps a read model, updated from the events, in a store of its own: queries need none of the sources — faster and available while they are down — but the read model trails them (eventual consistency).",
      "",
      `**Settings** (${measured}). Through the gateway, 4 in flight: \`GetOrderDetails\` (the gateway composes order, payment, inventory and notification) for ${reads.orders} orders in turn, and \`ListOrderHistory\` (a page of 20 from the history service's read model, fed by events). Staleness: ${reads.orders} orders placed one at a time; for each, the time from \`WatchOrder\` saying CONFIRMED until the read model says so (polled every 2 ms). Then each read again with payment, and with inventory, hard down.`,
      "",
      row(["condition", "read", "latency p50 / p99 (ms)", "reads/s", "complete", "partial", "failed"]),
      row(["---", "---", "---:", "---:", "---:", "---:", "---:"]),
      ...reads.conditions.flatMap((c) => [
        row([c.condition, "composition (`GetOrderDetails`)", ...cell(c.details, true)]),
        row([c.condition, "read model (`ListOrderHistory`)", ...cell(c.history, false)]),
      ]),
      "",
      row(["read model staleness after CONFIRMED", "p50", "p99", "max"]),
      row(["---", "---:", "---:", "---:"]),
      row(["ms", n(reads.staleness_ms.p50), n(reads.staleness_ms.p99), n(reads.staleness_ms.max)]),
      "",
      `**What it shows.** With every service up, the composed read's p50 is ${ratio(healthy.details.p50_ms, healthy.history.p50_ms, "slower", "faster")} than the read model's${healthy.details.p50_ms > healthy.history.p50_ms ? " (four calls behind one against one local query)" : ""}. ${payDown ? `With payment down, ${n(completeShare(payDown.details, true))}% of composed answers were complete (the rest say which part is missing) against ${n(completeShare(payDown.history, false))}% for the read model` : ""}${invDown ? `; with inventory down, ${n(completeShare(invDown.details, true))}% against ${n(completeShare(invDown.history, false))}%` : ""}: composition is as available as the least available source, the read model needs none of them. Its price is staleness: a confirmed order showed up in the read model ${n(reads.staleness_ms.p50)} ms later at the median (${n(reads.staleness_ms.p99)} ms p99) — the eventual consistency the text names.`,
      "",
      "![Complete answers by condition](read-models.svg)",
      "",
    );
    files["read-models.svg"] = barChart({
      title: "Complete answers: API composition vs CQRS read model",
      xLabel: "condition",
      yLabel: "complete answers (% of reads)",
      groups: reads.conditions.map((c) => c.condition),
      series: [
        { name: "composition (GetOrderDetails)", values: reads.conditions.map((c) => completeShare(c.details, true)) },
        { name: "read model (ListOrderHistory)", values: reads.conditions.map((c) => completeShare(c.history, false)) },
      ],
    });
  }

  // 4 ---------------------------------------------------------------------------
  const of = (p: "on" | "off", f: string) => r.policies.find((x) => x.policies === p && x.fault === f);
  const faults = [...new Set(r.policies.map((p) => p.fault))];
  const [, slowName, flakyName] = faults;
  const slowOn = slowName ? of("on", slowName) : undefined;
  const slowOff = slowName ? of("off", slowName) : undefined;
  const flakyOn = flakyName ? of("on", flakyName) : undefined;
  const flakyOff = flakyName ? of("off", flakyName) : undefined;
  const healthyOn = faults[0] ? of("on", faults[0]) : undefined;
  if (slowOn && slowOff && flakyOn && flakyOff && healthyOn) {
    out.push(
      "## 4. Resilience policies on vs off (text 4-4)",
      "",
      "**The claim.** Retries with backoff ride out transient failures; a timeout fails fast instead of waiting; a circuit breaker stops calling a service that keeps failing; a bulkhead caps the concurrency given to one dependency so its slowness cannot exhaust what the others need.",
      "",
      `**Settings** (${measured}). Orchestrated checkouts at ${healthyOn.rate} orders/s and, alongside, an unrelated route — \`ListOrders\` on the same order service at 20/s — for each payment condition. *On*: the order service's policies for payment as configured (2 s timeout, 4 attempts with backoff, breaker at 5 consecutive failures, bulkhead of 32 + 64 queued) and the saga's 15 s step budget. *Off*: one attempt, no breaker, no bulkhead, a 100 ms step budget (no saga-level retry): \`${Object.entries(
        r.resilienceOff,
      )
        .map(([k, v]) => `${k}=${v}`)
        .join(" ")}\` (the 2 s timeout stays). Each on a fresh system.`,
      "",
      row([
        "payment",
        "policies",
        "checkouts CONFIRMED",
        "checkout p50 / p99 (ms)",
        "unrelated `ListOrders` p50 / p99 (ms)",
        "payment calls in flight, peak",
        "queued, peak",
        "turned away by the bulkhead",
        "breaker opened",
      ]),
      row(["---", "---", "---:", "---:", "---:", "---:", "---:", "---:", "---:"]),
      ...r.policies.map((p) =>
        row([
          p.fault,
          p.policies,
          `${n(p.success * 100)}%`,
          `${n(p.checkout.p50_ms)} / ${n(p.checkout.p99_ms)}`,
          `${n(p.unrelated.p50_ms)} / ${n(p.unrelated.p99_ms)}`,
          p.peak_in_flight,
          p.peak_queued,
          p.bulkhead_rejected,
          p.breaker_opened,
        ]),
      ),
      "",
      `**What it shows.** ${resilienceFindings(flakyOn, flakyOff, slowOn, slowOff, healthyOn)}`,
      "",
      "![Checkouts confirmed with and without the policies](resilience.svg)",
      "",
    );
    files["resilience.svg"] = barChart({
      title: "Checkouts confirmed, resilience policies on vs off",
      xLabel: "payment condition",
      yLabel: "checkouts confirmed (%)",
      groups: faults,
      series: (["on", "off"] as const).map((p) => ({
        name: `policies ${p}`,
        values: faults.map((f) => (of(p, f)?.success ?? 0) * 100),
      })),
    });
  }
  out.push(
    "All numbers, including per-process CPU and each round's full latency summary: [`results.json`](results.json).",
    "",
  );
  files["README.md"] = out.join("\n");
  return files;
}
