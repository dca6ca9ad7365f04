/**
 * A hostile round against the stores under failing storage (2026-12-04): a service's SQLite file on
 * a disk that fills up (a real tmpfs of a few MB, so SQLite meets a real ENOSPC), on an ext4 the
 * kernel turns read-only as after a disk error (a loop device), deleted under the running service,
 * unusable at start (a directory, garbage, cut short, read-only, full); and a service's stop while
 * nats-server answers nothing. Each `describe` is one finding; each test failed on the code it was
 * written against. The tmpfs and ext4 disks need root (mount, losetup): a test run without it FAILS
 * saying so, rather than skipping — CI runs as root. Every disk is unmounted however its test ends.
 */
import { execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdirSync, readdirSync, rmSync, symlinkSync, truncateSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import Database from "better-sqlite3";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { OrderService, OrderStatus } from "../gen/shopmesh/order/v1/order_pb.js";
import { Code, RpcError } from "../platform/errors.js";
import { createChannel, createClient } from "../platform/grpc-client.js";
import { identityMetadata } from "../platform/identity.js";
import { TEST_DB } from "./db.js";
import { built, exited, runToEnd, spawnService, tempDir } from "./fixtures.js";
import { expectCheckoutInvariants } from "./invariants.js";
import { type System, startSystem } from "./system.js";

/** A tmpfs of `size` mounted at a new directory: a disk that really fills up. Unmount it with dispose. */
function tinyDisk(size: string): { path: string; fill(): void; free(): void } & Disposable {
  if (process.getuid?.() !== 0) {
    throw new Error("hostile-storage needs root to mount a tmpfs (a disk that fills up): run it as root");
  }
  const dir = tempDir("shopmesh-disk-");
  execFileSync("mount", ["-t", "tmpfs", "-o", `size=${size}`, "tmpfs", dir.path]);
  const filler = join(dir.path, "filler");
  return {
    path: dir.path,
    /** Takes every free block (4 KiB files, so nothing is left over). */
    fill() {
      mkdirSync(filler, { recursive: true });
      for (let i = 0; ; i++) {
        try {
          writeFileSync(join(filler, String(i)), Buffer.alloc(4096, 1));
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code === "ENOSPC") return;
          throw err;
        }
      }
    },
    free() {
      for (const f of readdirSync(filler)) rmSync(join(filler, f));
    },
    [Symbol.dispose]() {
      try {
        execFileSync("umount", ["--lazy", dir.path]);
      } finally {
        dir[Symbol.dispose]();
      }
    },
  };
}

/**
 * An ext4 file system on a loop device, mounted at a new directory: one the kernel can turn read-only
 * under a running process (`mount -o remount,abort`: what ext4 does on a disk error). Dispose unmounts.
 */
function ext4Disk(): { path: string; fail(): void } & Disposable {
  if (process.getuid?.() !== 0) {
    throw new Error("hostile-storage needs root to mount an ext4 image (a disk that fails): run it as root");
  }
  const dir = tempDir("shopmesh-ext4-");
  const image = `${dir.path}.img`;
  execFileSync("truncate", ["-s", "32M", image]);
  execFileSync("mkfs.ext4", ["-q", "-F", image]);
  execFileSync("mount", ["-o", "loop", image, dir.path]);
  return {
    path: dir.path,
    fail() {
      execFileSync("mount", ["-o", "remount,abort", dir.path]);
    },
    [Symbol.dispose]() {
      try {
        execFileSync("umount", [dir.path]);
      } finally {
        rmSync(image, { force: true });
        dir[Symbol.dispose]();
      }
    },
  };
}

describe.skipIf(TEST_DB !== "sqlite")("the order service's file system turned read-only by a disk error", () => {
  // Every order was answered INTERNAL "internal error" and logged as a bug ("unhandled error in
  // handler": "disk I/O error"): nothing told a client that nothing was taken, nor that another
  // instance (or this one, repaired) would take it.
  let disk: ReturnType<typeof ext4Disk>;
  let sys: System;
  beforeAll(async () => {
    disk = ext4Disk();
    sys = await startSystem({ order: { DB_PATH: join(disk.path, "order.db") } });
  }, 60_000);
  afterAll(async () => {
    try {
      await sys?.[Symbol.asyncDispose]();
    } finally {
      disk?.[Symbol.dispose]();
    }
  });

  it("refuses an order UNAVAILABLE saying the storage failed", async () => {
    const place = (idempotencyKey: string) =>
      sys.orders.placeOrder(
        { idempotencyKey, items: [{ productId: "ceramic-mug", quantity: 1 }], cardToken: "tok_visa" },
        sys.as("alice"),
      );
    await place("ro-before");
    disk.fail();
    const err = await place("ro-after").then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(RpcError);
    expect(Code[(err as RpcError).code]).toBe("UNAVAILABLE");
    expect((err as RpcError).message).toMatch(/storage failed/);
  }, 30_000);

  it("a service process exits on it, to be restarted and moved (it answered UNAVAILABLE for good, health SERVING)", async () => {
    using own = ext4Disk();
    const file = join(own.path, "order.db");
    const order = await spawnService("order", {
      NATS_URL: "off",
      DB_PATH: file,
      INVENTORY_TARGET: "127.0.0.1:1",
      PAYMENT_TARGET: "127.0.0.1:1",
    });
    try {
      const ch = createChannel(order.address);
      const orders = createClient(OrderService, ch);
      const who = { metadata: identityMetadata({ subject: "alice", roles: ["customer"] }), timeoutMs: 5_000 };
      const place = (idempotencyKey: string) =>
        orders.placeOrder(
          { idempotencyKey, items: [{ productId: "ceramic-mug", quantity: 1 }], cardToken: "tok_visa" },
          who,
        );
      await place("ro-process-before");
      own.fail();
      // This call, or the saga's next write (inventory is a closed port: it retries), meets the failure.
      await place("ro-process-after").catch(() => undefined);
      ch.close();
      const code = await Promise.race([
        exited(order.child),
        new Promise((r) => setTimeout(() => r("still running"), 20_000)),
      ]);
      expect(code, order.output()).toBe(1);
      expect(order.output()).toContain(`the database ${file}'s storage failed (an I/O error, or read-only): exiting`);
    } finally {
      await order.kill().catch(() => undefined);
    }
  }, 60_000);
});

describe.skipIf(TEST_DB !== "sqlite")("the order service's disk full", () => {
  let disk: ReturnType<typeof tinyDisk>;
  let sys: System;
  beforeAll(async () => {
    disk = tinyDisk("2m");
    sys = await startSystem({ order: { DB_PATH: join(disk.path, "order.db") } });
  }, 60_000);
  afterAll(async () => {
    try {
      await sys?.[Symbol.asyncDispose]();
    } finally {
      disk?.[Symbol.dispose]();
    }
  });

  const place = (idempotencyKey: string) =>
    sys.orders.placeOrder(
      { idempotencyKey, items: [{ productId: "ceramic-mug", quantity: 1 }], cardToken: "tok_visa" },
      sys.as("alice"),
    );

  // It answered INTERNAL "internal error" (and logged a bug): a client could not tell that nothing was
  // taken and that the same request would succeed later, nor an operator why from the status.
  it("refuses an order UNAVAILABLE saying the storage is full, and takes it once space is back", async () => {
    disk.fill();
    const err = await place("full-1").then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(RpcError);
    expect(Code[(err as RpcError).code]).toBe("UNAVAILABLE");
    expect((err as RpcError).message).toMatch(/storage is full/);
    disk.free();
    // No restart: the same request, retried, is taken and carried through.
    const { order } = await place("full-1");
    const settled = await sys.settle(order?.id ?? "", "alice");
    expect(settled.status).toBe(OrderStatus.CONFIRMED);
    await expectCheckoutInvariants({
      order: { engine: "sqlite", path: join(disk.path, "order.db") },
      payment: { engine: "sqlite", path: join(sys.dir, "payment.db") },
      inventory: { engine: "sqlite", path: join(sys.dir, "inventory.db") },
    });
  }, 60_000);
});

/** Starts inventory's process on `DB_PATH` and lets it run to its end: its exit code, and its fatal line. */
async function startOn(path: string, env: NodeJS.ProcessEnv = {}): Promise<{ code: number | string; fatal: string }> {
  const { code, out } = await runToEnd(process.execPath, built("services/inventory/main.ts"), {
    env: { ...process.env, LOG_FORMAT: "json", NATS_URL: "off", GRPC_PORT: "0", DB_PATH: path, ...env },
  });
  const fatal = out.split("\n").find((l) => l.includes('"level":60'));
  // Not started: it must not be left running (the ones that did start are killed by runToEnd's caller's timeout).
  return { code, fatal: fatal ? String((JSON.parse(fatal) as { msg: string }).msg) : `no fatal line in:\n${out}` };
}

describe.skipIf(TEST_DB !== "sqlite")("a database file that cannot be opened at start", () => {
  // Each refused the start (exit 1) with "could not start" and SQLite's bare words — "unable to open
  // database file", "database or disk is full" — naming neither the file nor what to do.
  // Made in beforeAll, as the next describe's: a run of other tests (-t) runs no afterAll here.
  let dir: ReturnType<typeof tempDir>;
  beforeAll(() => {
    dir = tempDir();
  });
  afterAll(() => dir?.[Symbol.dispose]());

  it("names the file and says it is a directory", async () => {
    const path = join(dir.path, "inventory.db");
    mkdirSync(path);
    const { code, fatal } = await startOn(path);
    expect(code).toBe(1);
    expect(fatal).toContain(path);
    expect(fatal).toMatch(/is a directory/);
  }, 30_000);

  it("names the file and says why its directory cannot be made, at once", async () => {
    // Node 20's recursive mkdir tried again for as long as the parent existed: under /proc, which
    // answers ENOENT for any new name, the start never ended, at a core's full use.
    const path = "/proc/shopmesh-no-such-dir/inventory.db";
    const { code, fatal } = await startOn(path);
    expect(code).toBe(1);
    expect(fatal).toContain(path);
    expect(fatal).toMatch(/ENOENT.*mkdir '\/proc\/shopmesh-no-such-dir'/);
  }, 30_000);

  it("refuses a TRACE_FILE whose directory cannot be made in a line, exit 78 (a restart cannot change it)", async () => {
    // It hung like the database's; then, made at once, it was a stack trace before any log line.
    for (const file of ["/proc/shopmesh-no-such-dir/spans.jsonl", `${process.execPath}/spans.jsonl`]) {
      const { code, fatal } = await startOn(join(dir.path, "traced.db"), { TRACE_FILE: file });
      expect(code).toBe(78);
      expect(fatal).toMatch(
        /^tracing could not start: (ENOENT|ENOTDIR).*: set TRACE_FILE to a file this process can write$/,
      );
    }
  }, 30_000);

  it("names the file and says it is no SQLite database", async () => {
    const path = join(dir.path, "garbage.db");
    writeFileSync(path, randomBytes(8192));
    const { code, fatal } = await startOn(path);
    expect(code).toBe(1);
    expect(fatal).toContain(path);
    expect(fatal).toMatch(/not a database/);
  }, 30_000);

  it("names the file and says it is damaged (cut short: a copy that ended early)", async () => {
    const path = join(dir.path, "cut.db");
    const db = new Database(path);
    db.exec("CREATE TABLE a (x); CREATE TABLE b (x); CREATE TABLE c (x);");
    db.exec("INSERT INTO c SELECT randomblob(3000) FROM (SELECT 1 UNION SELECT 2 UNION SELECT 3)");
    db.close();
    truncateSync(path, 4096);
    const { code, fatal } = await startOn(path);
    expect(code).toBe(1);
    expect(fatal).toContain(path);
    expect(fatal).toMatch(/damaged/);
  }, 30_000);

  it("names the file and says its file system is read-only", async () => {
    using disk = tinyDisk("1m");
    const path = join(disk.path, "inventory.db");
    execFileSync("mount", ["-o", "remount,ro", disk.path]);
    const { code, fatal } = await startOn(path);
    expect(code).toBe(1);
    expect(fatal).toContain(path);
    expect(fatal).toMatch(/read-only/);
  }, 30_000);

  it("names the file and says its disk is full", async () => {
    using disk = tinyDisk("1m");
    disk.fill();
    const path = join(disk.path, "inventory.db");
    const { code, fatal } = await startOn(path);
    expect(code).toBe(1);
    expect(fatal).toContain(path);
    expect(fatal).toMatch(/full/);
  }, 30_000);
});

describe.skipIf(TEST_DB !== "sqlite")("the data directory deleted under a running service", () => {
  // SQLite writes on to the open (now nameless) files: orders were accepted — answered, durable as far
  // as the service could tell — into a database no restart would find. Restarted, the service made a
  // new, empty one: every order since the deletion (and before) was gone, with nothing said.
  let sys: System;
  let data: ReturnType<typeof tempDir>;
  let path: string;
  beforeAll(async () => {
    data = tempDir();
    path = join(data.path, "order", "order.db");
    sys = await startSystem({ order: { DB_PATH: path } });
  }, 60_000);
  afterAll(async () => {
    try {
      await sys?.[Symbol.asyncDispose]();
    } finally {
      data?.[Symbol.dispose]();
    }
  });

  it("accepts no order after its database file is gone", async () => {
    const place = (idempotencyKey: string) =>
      sys.orders.placeOrder(
        { idempotencyKey, items: [{ productId: "ceramic-mug", quantity: 1 }], cardToken: "tok_visa" },
        sys.as("alice"),
      );
    await place("before-rm");
    rmSync(join(data.path, "order"), { recursive: true });
    const after = await place("after-rm").then(
      (r) => r.order?.id,
      (e: unknown) => e,
    );
    // An order it accepted here would be in no file: only a refusal keeps the promise.
    expect(after).toBeInstanceOf(RpcError);
    expect((after as RpcError).code).not.toBe(Code.OK);
  }, 30_000);
});

describe.skipIf(TEST_DB !== "sqlite")("two order processes on one SQLite file", () => {
  // On SQLite the order service is the file's only writer (it adopts every outbox claim and saga, and
  // hears only its own changes): a second process on the same file, by hand or beside a frozen one,
  // started without a word.
  it("the second is refused, naming the file, also through a link to its directory; the next start after the first is killed is not", async () => {
    using dir = tempDir();
    const path = join(dir.path, "order.db");
    const env = { NATS_URL: "off", DB_PATH: path, INVENTORY_TARGET: "127.0.0.1:1", PAYMENT_TARGET: "127.0.0.1:1" };
    const first = await spawnService("order", env);
    try {
      const link = join(dir.path, "link");
      symlinkSync(dir.path, link);
      for (const p of [path, join(link, "order.db")]) {
        const { code, out } = await runToEnd(process.execPath, built("services/order/main.ts"), {
          env: { ...process.env, LOG_FORMAT: "json", GRPC_PORT: "0", ...env, DB_PATH: p },
        });
        expect(code, out).toBe(1);
        expect(out).toContain(`another order process is using ${p}: on SQLite the order service runs as one process`);
      }
    } finally {
      await first.kill();
    }
    await using next = await spawnService("order", env);
    expect(next.address).toMatch(/:\d+$/);
  }, 60_000);
});

describe("a service's stop while nats-server answers nothing (its store on a full disk, frozen)", () => {
  // `make run` keeps JetStream's store and the services' files in one data directory. Full, nats-server
  // stopped answering (the registry's heartbeats timed out) and every service stayed in its stop until
  // the runner killed it ("known: a full disk can make a service's stop hang"). The stop waited on the
  // connection's drain (bus.ts: nc.drain()), which needs the server's answer, without a bound: here,
  // until the server answered again.
  let sys: System;
  beforeAll(async () => {
    sys = await startSystem();
  }, 60_000);
  afterAll(async () => {
    sys?.nats.resume();
    await sys?.[Symbol.asyncDispose]();
  });

  it("ends all the same, the connection cut once its drain is not confirmed", async () => {
    sys.nats.pause();
    // The registry's deregistration gives up after its own 5 s, the calls' grace is 2 s: 25 s is far past
    // any bounded stop, and far short of never.
    const stopped = await Promise.race([
      sys.inventory.stop().then(() => true),
      new Promise<boolean>((r) => setTimeout(() => r(false), 25_000)),
    ]);
    expect(stopped, "inventory's stop ended while nats-server answered nothing").toBe(true);
  }, 40_000);
});
