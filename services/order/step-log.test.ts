/** What a saga loop reads back from a stored step log: each call step's attempts so far and when it began. */
import { describe, expect, it } from "vitest";
import type { OrderRecord } from "./domain.js";
import type { StoredStep } from "./schema.js";
import { StepStarts } from "./step-log.js";

const entry = (seq: number, name: string, status: string, attempt: number): StoredStep => ({
  seq,
  name: name as StoredStep["name"],
  status: status as StoredStep["status"],
  detail: "",
  attempt,
  at: seq * 1000,
  fence: 1,
});
const order = { stock: "done", payment: "attempted" } as OrderRecord;

describe("StepStarts.load", () => {
  it("takes a step's attempts from its latest start's number, so a trimmed log goes on counting", () => {
    // A refund retried 500 times, the log trimmed to its first entries, the refund's first start and the latest.
    const log = [
      entry(1, "reserve_stock", "STARTED", 1),
      entry(2, "reserve_stock", "SUCCEEDED", 1),
      entry(3, "charge_payment", "STARTED", 1),
      entry(4, "charge_payment", "FAILED", 1),
      entry(9, "refund_payment", "STARTED", 1),
      entry(997, "refund_payment", "FAILED", 499),
      entry(998, "refund_payment", "STARTED", 500),
      entry(999, "refund_payment", "FAILED", 500),
    ];
    const starts = new StepStarts(() => 1e9);
    starts.load(log);
    expect(starts.next(order, "refund_payment")).toMatchObject({ attempt: 501, since: 9000 });
    expect(starts.next(order, "charge_payment")).toMatchObject({ attempt: 2, since: 3000 });
    expect(starts.next(order, "release_stock")).toMatchObject({ attempt: 1, since: 1e9 });
  });
});
