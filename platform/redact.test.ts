/** withoutPassword: every URL's password left out, its user and host kept, in one pass. */
import { describe, expect, it } from "vitest";
import { withoutPassword } from "./redact.js";

describe("withoutPassword", () => {
  it("leaves out each URL's password to its last '@', keeping the user and host of a list's URLs", () => {
    expect(withoutPassword("nats://u:p@a:4222,nats://v:q@b:4222")).toBe("nats://u:***@a:4222,nats://v:***@b:4222");
    expect(withoutPassword("postgres://shop:Zm9v/Ym@Fy+@db/shop")).toBe("postgres://shop:***@db/shop");
    expect(withoutPassword("pay:hunter2@h:4222,nats://x:1")).toBe("pay:***@h:4222,nats://x:1");
    expect(withoutPassword("postgres://h/db?sslmode=require&password=hunter2")).toBe(
      "postgres://h/db?sslmode=require&password=***",
    );
    expect(withoutPassword("nats://127.0.0.1:4222")).toBe("nats://127.0.0.1:4222");
    expect(withoutPassword("postgres://u@h:5432/db")).toBe("postgres://u@h:5432/db");
  });

  it("reads a long value once: a backtracking pattern took 15 s on 120 kB of '//:', at start, before its refusal", () => {
    // In CPU time, not wall time: ~0.1 s of work (twice that in wall time here), which a busy machine
    // stretches by whatever else runs; the backtracking pattern took 15 s of it.
    const before = process.cpuUsage();
    for (const v of ["//:".repeat(40_000), `nats://u:${"a".repeat(120_000)}`, `${"a".repeat(120_000)}://x`]) {
      withoutPassword(v);
    }
    const cpu = process.cpuUsage(before);
    expect((cpu.user + cpu.system) / 1000).toBeLessThan(1_000);
  });
});
