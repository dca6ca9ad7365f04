/**
 * Group commit (wal-sync.ts) on a real SQLite file: concurrent commits share
 * flushes, a commit made while a flush runs waits for the next one, every
 * committed row is there after the process that wrote it is killed, and a
 * failed flush is the caller's error, not a silent success (nor is any flush after it).
 */
import { spawn } from "node:child_process";
import { copyFileSync, mkdirSync, renameSync, rmSync, symlinkSync } from "node:fs";
import { join } from "node:path";
import Database from "better-sqlite3";
import { sql } from "kysely";
import { describe, expect, it } from "vitest";
import { exited, ROOT, tempDir } from "../test/fixtures.js";
import { openDatabase } from "./db.js";
import { WalSync } from "./wal-sync.js";

const SCHEMA = ["CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)"];

describe("WalSync", () => {
  it("lets concurrent commits share flushes, and each transaction resolves only after one covering it", async () => {
    using dir = tempDir();
    const path = join(dir.path, "t.db");
    const db = await openDatabase({ engine: "sqlite", path }, { sqlite: SCHEMA, postgres: SCHEMA });
    try {
      const wal = (db as unknown as { wal: WalSync }).wal;
      expect(wal).toBeInstanceOf(WalSync);
      await Promise.all(
        Array.from({ length: 200 }, (_, i) =>
          db.transaction((tx) => tx.run(sql`INSERT INTO t (v) VALUES (${`v${i}`})`)),
        ),
      );
      expect(wal.flushes).toBeGreaterThan(0);
      expect(wal.flushes).toBeLessThan(200);
      expect((await db.one<{ n: number }>(sql`SELECT count(*) AS n FROM t`))?.n).toBe(200);
    } finally {
      await db.close();
    }
  });

  it("a transaction that is not durable commits without a flush; the next durable one covers it", async () => {
    using dir = tempDir();
    const path = join(dir.path, "n.db");
    const db = await openDatabase({ engine: "sqlite", path }, { sqlite: SCHEMA, postgres: SCHEMA });
    try {
      const wal = (db as unknown as { wal: WalSync }).wal;
      const before = wal.flushes;
      for (let i = 0; i < 20; i++) {
        await db.transaction((tx) => tx.run(sql`INSERT INTO t (v) VALUES ('relaxed')`), { durable: false });
      }
      expect(wal.flushes).toBe(before);
      await db.transaction((tx) => tx.run(sql`INSERT INTO t (v) VALUES ('durable')`));
      expect(wal.flushes).toBe(before + 1);
      expect((await db.one<{ n: number }>(sql`SELECT count(*) AS n FROM t`))?.n).toBe(21);
    } finally {
      await db.close();
    }
  });

  it("a database opened through a link flushes the log SQLite writes, beside the file the link names", async () => {
    using dir = tempDir();
    mkdirSync(join(dir.path, "disk"));
    const path = join(dir.path, "l.db");
    symlinkSync(join(dir.path, "disk", "l.db"), path);
    const db = await openDatabase({ engine: "sqlite", path }, { sqlite: SCHEMA, postgres: SCHEMA });
    try {
      const wal = (db as unknown as { wal: WalSync }).wal;
      const before = wal.flushes;
      await db.transaction((tx) => tx.run(sql`INSERT INTO t (v) VALUES ('linked')`));
      expect(wal.flushes).toBe(before + 1);
      expect((await db.one<{ n: number }>(sql`SELECT count(*) AS n FROM t`))?.n).toBe(1);
    } finally {
      await db.close();
    }
  });

  it("a sync asked for while a flush runs waits for a second flush", async () => {
    using dir = tempDir();
    const path = join(dir.path, "w.db");
    const raw = new Database(path);
    raw.pragma("journal_mode = WAL");
    raw.exec("CREATE TABLE t (v TEXT)");
    const wal = new WalSync(`${path}-wal`);
    try {
      const first = wal.sync();
      const alsoFirst = wal.sync(); // asked before the flush began: covered by it
      while (wal.flushes === 0) await new Promise((r) => setImmediate(r));
      const second = wal.sync(); // asked once a flush runs: that flush may have begun before its commit
      const third = wal.sync(); // shares the second round
      await Promise.all([first, alsoFirst, second, third]);
      expect(wal.flushes).toBe(2);
    } finally {
      await wal.close();
      raw.close();
    }
  });

  it.each([
    {
      // SQLite writes on to the nameless log: a crash, or another process opening the file, loses the commit.
      what: "a log removed while in use (rm *.db-wal) fails the next commit, as a removed database file does",
      undo: (path: string) => rmSync(`${path}-wal`),
    },
    {
      // The name now points at another file: what is written next goes to one a restart never opens.
      what: "a database file replaced while in use (a copy renamed over it) fails the next commit, as a removed one does",
      undo: (path: string) => {
        copyFileSync(path, `${path}.copy`);
        renameSync(`${path}.copy`, path);
      },
    },
  ])("$what", async ({ undo }) => {
    using dir = tempDir();
    const path = join(dir.path, "t.db");
    const db = await openDatabase({ engine: "sqlite", path }, { sqlite: SCHEMA, postgres: SCHEMA });
    try {
      const insert = () => db.transaction((tx) => tx.run(sql`INSERT INTO t (v) VALUES ('x')`));
      await insert();
      undo(path);
      await expect(insert()).rejects.toThrow(/removed or replaced/);
    } finally {
      await db.close().catch(() => {});
    }
  });

  it("once a flush has failed, every later sync is refused, even when a flush would succeed again", async () => {
    using dir = tempDir();
    const wal = new WalSync(join(dir.path, "eio.db-wal"));
    // A failed fdatasync may have dropped the pages it could not write (PostgreSQL's "fsyncgate"): a
    // second one that succeeds says nothing of them, so the process must not report them durable.
    let failNext = true;
    const datasync = () => {
      const fail = failNext;
      failNext = false;
      return fail ? Promise.reject(new Error("EIO: i/o error, fdatasync")) : Promise.resolve();
    };
    (wal as unknown as { file: Promise<unknown> }).file = Promise.resolve({ datasync, close: async () => {} });
    await expect(wal.sync()).rejects.toThrow(/could not be flushed/);
    await expect(wal.sync()).rejects.toThrow(/could not be flushed/);
    expect(wal.flushes).toBe(1);
  });

  it("after close, a sync is refused instead of reopening the file", async () => {
    using dir = tempDir();
    const path = join(dir.path, "c.db");
    const raw = new Database(path);
    raw.pragma("journal_mode = WAL");
    raw.exec("CREATE TABLE t (v TEXT)");
    const wal = new WalSync(`${path}-wal`);
    const pending = wal.sync();
    await wal.close();
    await pending;
    await expect(wal.sync()).rejects.toThrow(/closed/);
    raw.close();
  });

  it("a failed flush fails the commit's caller; the next one opens the file again", async () => {
    using dir = tempDir();
    const wal = new WalSync(join(dir.path, "missing.db-wal"));
    await expect(wal.sync()).rejects.toThrow(/ENOENT/);
    await expect(wal.sync()).rejects.toThrow(/ENOENT/);
    expect(wal.flushes).toBe(0);
  });

  it("a service's process whose log flush fails exits, to be restarted, instead of failing every write after its commit", async () => {
    using dir = tempDir();
    const path = join(dir.path, "b.db");
    // A service (runService) whose disk answers the next fdatasync with EIO, then a write.
    const script = `
      import { sql } from "kysely";
      import { openDatabase } from "./platform/db.ts";
      import { runService } from "./platform/lifecycle.ts";
      const config = () => ({ LOG_LEVEL: "info", LOG_FORMAT: "json", OTEL_EXPORTER_OTLP_ENDPOINT: "", TRACE_FILE: "",
        TRACE_FILE_MAX_BYTES: 0, TRACE_SAMPLE_RATIO: 1, TRACE_READ_SAMPLE_RATIO: 1 });
      await runService("walbroken", config, async () => {
        const db = await openDatabase({ engine: "sqlite", path: ${JSON.stringify(path)} }, { sqlite: ${JSON.stringify(SCHEMA)}, postgres: ${JSON.stringify(SCHEMA)} });
        db.wal.file = Promise.resolve({ datasync: () => Promise.reject(new Error("EIO: i/o error, fdatasync")), close: async () => {} });
        setTimeout(() => db.transaction((tx) => tx.run(sql\`INSERT INTO t (v) VALUES ('x')\`)).catch(() => {}), 50);
        setTimeout(() => { process.stdout.write("still running\\n"); process.exit(0); }, 5_000);
        return { stop: () => db.close() };
      });`;
    const child = spawn(process.execPath, ["--import", "tsx", "--input-type=module", "-e", script], {
      cwd: ROOT,
      stdio: ["ignore", "pipe", "inherit"],
    });
    let out = "";
    child.stdout.on("data", (d: Buffer) => (out += d.toString()));
    expect(await exited(child)).toBe(1);
    expect(out).not.toContain("still running");
    const fatal = out.split("\n").find((l) => l.includes("could not be flushed: exiting"));
    expect(fatal, out).toBeDefined();
    expect(JSON.parse(fatal as string)).toMatchObject({ level: 60, err: { message: expect.stringMatching(/EIO/) } });
  }, 30_000);

  it("every transaction a killed process reported committed is in the file", async () => {
    using dir = tempDir();
    const path = join(dir.path, "k.db");
    // A writer that prints each id once its transaction resolved, until it is SIGKILLed.
    const script = `
      import { sql } from "kysely";
      import { openDatabase } from "./platform/db.ts";
      const db = await openDatabase({ engine: "sqlite", path: ${JSON.stringify(path)} }, { sqlite: ${JSON.stringify(SCHEMA)}, postgres: ${JSON.stringify(SCHEMA)} });
      for (let i = 1; ; i++) {
        await db.transaction((tx) => tx.run(sql\`INSERT INTO t (id, v) VALUES (\${i}, 'x')\`));
        process.stdout.write(i + "\\n");
      }`;
    const child = spawn(process.execPath, ["--import", "tsx", "--input-type=module", "-e", script], {
      cwd: ROOT,
      stdio: ["ignore", "pipe", "inherit"],
    });
    let out = "";
    child.stdout.on("data", (d: Buffer) => (out += d.toString()));
    await expect.poll(() => out.split("\n").length, { timeout: 20_000 }).toBeGreaterThan(200);
    const done = exited(child);
    child.kill("SIGKILL");
    await done;
    const reported = Math.max(...out.split("\n").filter(Boolean).map(Number));
    const db = new Database(path);
    const ids = db.prepare("SELECT id FROM t ORDER BY id").pluck().all() as number[];
    db.close();
    expect(ids.length).toBeGreaterThanOrEqual(reported);
    expect(ids.slice(0, reported)).toEqual(Array.from({ length: reported }, (_, i) => i + 1));
  });
});
