import { pino } from "pino";
import { expect, it } from "vitest";
import { throttledWarn } from "./instances.js";

it("throttledWarn says a warning at most once per period, and again at once after the wall clock stepped back", () => {
  const said: unknown[] = [];
  const log = pino({ level: "warn" }, { write: (s: string) => void said.push(JSON.parse(s)) });
  let now = 1_000_000;
  const warn = throttledWarn(log, "w", 10_000, () => now);
  warn({});
  now += 5_000;
  warn({});
  expect(said).toHaveLength(1);
  now += 5_000;
  warn({});
  expect(said).toHaveLength(2);
  expect(said[1]).toMatchObject({ unsaid: 1 });
  // An hour back (an NTP correction): the last warning's time is ahead of the clock. It held every
  // warning back for the hour.
  now -= 3_600_000;
  warn({});
  expect(said).toHaveLength(3);
});
