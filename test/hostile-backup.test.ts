/**
 * `make backup` and `make restore` (scripts/backup.ts, scripts/restore.ts) given what an operator may
 * get wrong: a FROM that is no finished backup, or holds a store the service cannot run on, and a
 * BACKUP_DIR that cannot be written. Each is refused before anything changes, with a line saying what
 * is wrong — never a stack trace, never a store put in place that the service then refuses or misreads.
 */

import { type ChildProcess, spawn } from "node:child_process";
import { copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { AckPolicy } from "@nats-io/jetstream";
import Database from "better-sqlite3";
import { describe, expect, it } from "vitest";
import { EVENTS } from "../contracts/events.js";
import { busAuthOf, connectBus } from "../platform/bus.js";
import { BUS_ADMIN } from "../platform/bus-access.js";
import { silentLogger } from "../platform/log.js";
import { holdDataDir } from "../scripts/data-dir.js";
import { answers, localBusEnv, natsServerArgs } from "../scripts/nats.js";
import { HistoryStore } from "../services/history/store.js";
import { NotificationStore } from "../services/notification/store.js";
import { built, exited, freePort, outputReady, runToEnd, tempDir } from "./fixtures.js";

/** A data directory with every service's store (history's and notification's as their services make them). */
async function storesIn(dir: string): Promise<void> {
  await (await HistoryStore.open({ engine: "sqlite", path: join(dir, "history.db") })).close();
  await (await NotificationStore.open({ engine: "sqlite", path: join(dir, "notification.db") })).close();
  for (const name of ["order", "inventory", "payment"]) copyFileSync(join(dir, "history.db"), join(dir, `${name}.db`));
}

const run = (script: string, env: Record<string, string>) =>
  runToEnd(process.execPath, built(script), { env: { ...process.env, DB: "", ...env } });

/** Fills `data` with stores, backs them up into `out` with make backup, and returns that backup's directory. */
async function backedUp(data: string, out: string): Promise<string> {
  await storesIn(data);
  const made = await run("scripts/backup.ts", { DATA_DIR: data, BACKUP_DIR: out });
  expect(made.code, made.out).toBe(0);
  return join(out, readdirSync(out)[0] as string);
}

describe("make restore, given a FROM that will not do", () => {
  it("refuses each before it deletes a durable or touches the store, saying what is wrong", async () => {
    using data = tempDir();
    using out = tempDir();
    const good = await backedUp(data.path, out.path);
    const live = readFileSync(join(data.path, "history.db"));
    /** A copy of the good backup, then changed by `spoil`. */
    const spoilt = (name: string, spoil: (dir: string) => void) => {
      const dir = join(out.path, name);
      mkdirSync(dir);
      for (const f of readdirSync(good)) copyFileSync(join(good, f), join(dir, f));
      spoil(dir);
      return dir;
    };
    const cases: [string, string, RegExp][] = [
      [
        "newer schema",
        spoilt("newer", (d) => new Database(join(d, "history.db")).pragma("user_version = 99")),
        /schema version 99 is newer than this build knows \(\d+\)/,
      ],
      [
        "another service's store",
        spoilt("renamed", (d) => copyFileSync(join(d, "notification.db"), join(d, "history.db"))),
        /is not history's store/,
      ],
      [
        // Another service's store at a version past this one's (history's, 6, given as notification's, 4)
        // was said to be of a newer build, "restore it with the build that wrote it": no build would do.
        "another service's store of a higher version",
        spoilt("renamed-newer", (d) => {
          copyFileSync(join(d, "notification.db"), join(d, "history.db"));
          new Database(join(d, "history.db")).pragma("user_version = 99");
        }),
        /is not history's store: it holds tables inbox, inbox_failures, notifications, where history's schema \d+ has /,
      ],
      ["no database", spoilt("text", (d) => writeFileSync(join(d, "history.db"), "hello")), /is not a SQLite database/],
      [
        "unreadable backup.json",
        spoilt("json", (d) => writeFileSync(join(d, "backup.json"), "{oops")),
        /backup\.json .*is not make backup's/,
      ],
      [
        "a date that is none",
        spoilt("date", (d) => writeFileSync(join(d, "backup.json"), '{"at":"yesterday"}')),
        /backup\.json .*is not make backup's/,
      ],
      ["an unfinished backup", spoilt("x.partial", (d) => rmSync(join(d, "backup.json"))), /unfinished backup/],
      ["no backup.json", spoilt("bare", (d) => rmSync(join(d, "backup.json"))), /no backup\.json/],
    ];
    // No NATS on this port: a restore that got as far as the durables would fail on it, not refuse.
    const port = String(await freePort());
    for (const [what, from, says] of cases) {
      const got = await run("scripts/restore.ts", {
        DATA_DIR: data.path,
        NATS_PORT: port,
        SERVICE: "history",
        FROM: from,
      });
      expect(got.out, what).toMatch(says);
      expect(got.out, what).not.toMatch(/\n\s+at /);
      expect(got.code, what).toBe(1);
      expect(readFileSync(join(data.path, "history.db")).equals(live), `${what}: the store untouched`).toBe(true);
      expect(existsSync(join(data.path, "nats")), `${what}: no NATS started`).toBe(false);
    }
  }, 60_000);
});

describe("make backup, where it cannot simply write", () => {
  it("says so, exit 1, when BACKUP_DIR cannot be made", async () => {
    using data = tempDir();
    await storesIn(data.path);
    writeFileSync(join(data.path, "a-file"), "");
    const got = await run("scripts/backup.ts", { DATA_DIR: data.path, BACKUP_DIR: join(data.path, "a-file", "b") });
    expect(got.out).toMatch(/backup failed: cannot make a directory in .*a-file\/b \(BACKUP_DIR\): ENOTDIR/);
    expect(got.out).not.toMatch(/\n\s+at /);
    expect(got.code).toBe(1);
  });

  it("says so, exit 1, when the system answers ENOENT for a BACKUP_DIR whose parent exists (/proc)", async () => {
    using data = tempDir();
    await storesIn(data.path);
    // Node 20's recursive mkdir retries such a directory for ever, at a core's full use: make backup hung.
    let child: ChildProcess | undefined;
    const stop = setTimeout(() => child?.kill("SIGKILL"), 10_000);
    const got = await runToEnd(process.execPath, built("scripts/backup.ts"), {
      env: { ...process.env, DB: "", DATA_DIR: data.path, BACKUP_DIR: "/proc/shopmesh-backups" },
      onStart: (c) => (child = c),
    }).finally(() => clearTimeout(stop));
    expect(got.out).toMatch(
      /backup failed: cannot make a directory in \/proc\/shopmesh-backups \(BACKUP_DIR\): ENOENT/,
    );
    expect(got.code).toBe(1);
  });

  it("blames the backup's disk, not the store, when its copy cannot be written", async () => {
    using data = tempDir();
    using out = tempDir();
    await storesIn(data.path);
    // Files past 34 KiB (68 blocks of 512 bytes) refused to it (EFBIG), as a full disk refuses them, no
    // root or mount needed: a store's WAL index (32 KiB) fits, its copy (36 KiB and more) does not.
    const got = await runToEnd(
      "sh",
      ["-c", `trap '' XFSZ; ulimit -f 68; exec "${process.execPath}" "$@"`, "sh", ...built("scripts/backup.ts")],
      {
        env: { ...process.env, DB: "", DATA_DIR: data.path, BACKUP_DIR: out.path },
      },
    );
    expect(got.code).toBe(1);
    expect(got.out).toMatch(
      /history: FAILED: cannot write its copy in .*\.partial: disk I\/O error \(is the disk of BACKUP_DIR full\?\)/,
    );
    expect(got.out).not.toMatch(new RegExp(`FAILED: ${data.path}`));
  });

  it("takes another name than a backup already there (a clock set back, two at once), leaving it as it was", async () => {
    using data = tempDir();
    using out = tempDir();
    await storesIn(data.path);
    // Every name it could take in the next 10 s, taken by a backup already there (~0.6 s to make them).
    const now = Date.now();
    const taken = Array.from({ length: 10_000 }, (_, ms) => new Date(now + ms).toISOString().replace(/[:.]/g, "-"));
    for (const name of taken) {
      mkdirSync(join(out.path, name));
      writeFileSync(join(out.path, name, "backup.json"), "{}");
    }
    const got = await run("scripts/backup.ts", { DATA_DIR: data.path, BACKUP_DIR: out.path });
    expect(got.code, got.out).toBe(0);
    const there = new Set(taken);
    const made = readdirSync(out.path).filter((d) => !there.has(d));
    expect(made).toHaveLength(1);
    // Its own time was taken: it named its copy after it, with -1 (a backup started past the window
    // would have taken a free name and shown nothing).
    expect(taken).toContain(made[0]?.replace(/-1$/, ""));
    expect(made[0]).toMatch(/-1$/);
    expect(readdirSync(join(out.path, made[0] as string)).sort()).toContain("history.db");
    for (const name of taken) expect(readdirSync(join(out.path, name))).toEqual(["backup.json"]);
  }, 30_000);
});

describe("make backup and make restore, in a path with a space", () => {
  it("prints a restore command that pastes whole, and restores from it", async () => {
    using data = tempDir();
    using out = tempDir();
    await storesIn(data.path);
    const backups = join(out.path, "my backups");
    const made = await run("scripts/backup.ts", { DATA_DIR: data.path, BACKUP_DIR: backups });
    expect(made.code, made.out).toBe(0);
    const from = join(backups, readdirSync(backups)[0] as string);
    // Unquoted, make took the words after the space for targets: "No rule to make target".
    expect(made.out).toContain(`make restore SERVICE=history FROM='${from}'`);
    const env = { DATA_DIR: data.path, NATS_PORT: String(await freePort()), SERVICE: "history", FROM: from };
    const got = await run("scripts/restore.ts", env);
    expect(got.code, got.out).toBe(0);
  }, 30_000);
});

describe("make restore, given a DATA_DIR that is wrong", () => {
  it("refuses a DATA_DIR that does not exist, and says when NATS held no durable of the service", async () => {
    using data = tempDir();
    using out = tempDir();
    const from = await backedUp(data.path, out.path);
    const port = String(await freePort());
    const typo = join(data.path, "no-such-dir");
    const missing = await run("scripts/restore.ts", {
      DATA_DIR: typo,
      NATS_PORT: port,
      SERVICE: "history",
      FROM: from,
    });
    expect(missing.out).toMatch(/DATA_DIR=.*no-such-dir does not exist: is it right\?/);
    expect(missing.code).toBe(1);
    expect(existsSync(typo), "not made").toBe(false);
    // A data directory make run never used: its NATS has no streams, so no durable, so nothing to replay.
    const fresh = await run("scripts/restore.ts", {
      DATA_DIR: data.path,
      NATS_PORT: port,
      SERVICE: "history",
      FROM: from,
    });
    expect(fresh.code, fresh.out).toBe(0);
    expect(fresh.out).toMatch(/no durable of history in NATS at .*: it replays nothing/);
  }, 30_000);
});

describe("make restore, when NATS will not have it", () => {
  it("says it cannot reach NATS as its administrator, that nothing changed, and stops the NATS it started", async () => {
    using data = tempDir();
    using out = tempDir();
    const from = await backedUp(data.path, out.path);
    const port = await freePort();
    // A NATS_USER/NATS_PASSWORD of another system's NATS left in the shell.
    const env = { DATA_DIR: data.path, NATS_PORT: String(port), SERVICE: "history", FROM: from };
    const got = await run("scripts/restore.ts", { ...env, NATS_USER: "admin", NATS_PASSWORD: "not-this-one" });
    expect(got.out).toMatch(/cannot reach NATS at .* as its administrator: .*Authorization Violation.*nothing changed/);
    expect(got.out).not.toMatch(/\n\s+at /);
    expect(got.code).toBe(1);
    expect(await answers("127.0.0.1", port), "the NATS it started is stopped").toBe(false);
  }, 30_000);

  it("failing once the durables are deleted, says the store is still the old one and what to do", async () => {
    using data = tempDir();
    using out = tempDir();
    const from = await backedUp(data.path, out.path);
    const live = readFileSync(join(data.path, "history.db"));
    // Where it builds the copy aside, something it cannot replace (as a full disk would fail it).
    mkdirSync(join(data.path, "history.db.restoring", "x"), { recursive: true });
    const env = { DATA_DIR: data.path, NATS_PORT: String(await freePort()), SERVICE: "history", FROM: from };
    const got = await run("scripts/restore.ts", env);
    expect(got.out).toMatch(/restore failed: .*history's store is still the old one, whole, .*run it again/);
    expect(got.out).not.toMatch(/\n\s+at /);
    expect(got.code).toBe(1);
    expect(readFileSync(join(data.path, "history.db")).equals(live)).toBe(true);
  }, 30_000);
});

describe("make restore, while the store is in use", () => {
  it("refuses while a process has the store open (a notification service started by hand, a backup)", async () => {
    using data = tempDir();
    using out = tempDir();
    const from = await backedUp(data.path, out.path);
    // Open as the service holds it, for as long as it runs: swapped under it, what it wrote next was in no file.
    const store = await NotificationStore.open({ engine: "sqlite", path: join(data.path, "notification.db") });
    try {
      const env = { DATA_DIR: data.path, NATS_PORT: String(await freePort()), SERVICE: "notification", FROM: from };
      const got = await run("scripts/restore.ts", env);
      expect(got.out).toMatch(/notification\.db is open in another process .*: stop it first/);
      expect(got.code).toBe(1);
      expect(existsSync(join(data.path, "nats")), "no NATS started, no durable deleted").toBe(false);
    } finally {
      await store.close();
    }
  }, 30_000);

  it("refuses a second restore while one runs, naming what may hold the directory", async () => {
    using data = tempDir();
    using out = tempDir();
    const from = await backedUp(data.path, out.path);
    const release = holdDataDir(data.path); // as the first restore holds it
    try {
      const env = { DATA_DIR: data.path, NATS_PORT: String(await freePort()), SERVICE: "history", FROM: from };
      const got = await run("scripts/restore.ts", env);
      expect(got.out).toMatch(
        /a make restore or make history-rebuild, or a make run starting, is using .*: stop it first/,
      );
      expect(got.code).toBe(1);
    } finally {
      if (typeof release === "function") release();
    }
  }, 30_000);
});

describe("make restore, on what the streams still hold", () => {
  /**
   * make run's NATS on `dir` at `port`, connected as the bus's administrator, with history's durable on
   * ORDER; that stream as make run makes it, or keeping each event for `keepMs` only.
   */
  async function runNats(dir: string, port: number, keepMs?: number) {
    const child = spawn("nats-server", natsServerArgs(dir, port), { stdio: ["ignore", "pipe", "pipe"] });
    await outputReady(child, "Server is ready", "nats-server", 10_000);
    const { NATS_USER = "", NATS_PASSWORD = "" } = localBusEnv(dir, BUS_ADMIN);
    const bus = await connectBus(`nats://127.0.0.1:${port}`, "hostile-test", silentLogger(), {
      ...(keepMs === undefined ? { streams: EVENTS.streams } : {}),
      ...busAuthOf({ NATS_USER, NATS_PASSWORD }),
    });
    if (keepMs !== undefined)
      await bus.jsm.streams.add({ name: "ORDER", subjects: ["order.>"], max_age: keepMs * 1e6 });
    await bus.jsm.consumers.add("ORDER", { durable_name: "history-order", ack_policy: AckPolicy.Explicit });
    return {
      bus,
      async [Symbol.asyncDispose]() {
        await bus.close();
        const done = exited(child);
        child.kill("SIGTERM");
        await done;
      },
    };
  }

  it("warns when the events since the backup are gone, the stream emptied included, and not when none were", async () => {
    using data = tempDir();
    using out = tempDir();
    const from = await backedUp(data.path, out.path);
    const port = await freePort();
    const env = { DATA_DIR: data.path, NATS_URL: `nats://127.0.0.1:${port}`, SERVICE: "history", FROM: from };
    {
      // A stream begun after the backup: every event since is there.
      await using nats = await runNats(data.path, port);
      await nats.bus.js.publish("order.placed", "{}");
      const got = await run("scripts/restore.ts", env);
      expect(got.code, got.out).toBe(0);
      expect(got.out).not.toMatch(/WARNING/);
    }
    {
      // Every event since the backup dropped (its age, its size): the stream empty, its sequence on.
      using other = tempDir();
      await storesIn(other.path);
      await using nats = await runNats(other.path, port, 500);
      await nats.bus.js.publish("order.placed", "{}");
      await expect.poll(async () => (await nats.bus.jsm.streams.info("ORDER")).state.messages).toBe(0);
      const got = await run("scripts/restore.ts", { ...env, DATA_DIR: other.path });
      expect(got.code, got.out).toBe(0);
      expect(got.out).toMatch(/WARNING: ORDER holds no events before/);
    }
  }, 60_000);
});
