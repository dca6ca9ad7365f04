/** Errors across the wire: statuses as the gRPC spec means them, details any client can read, no internals. */

import { type AddressInfo, createServer, type Socket } from "node:net";
import { join } from "node:path";
import { Metadata } from "@grpc/grpc-js";
import Database from "better-sqlite3";
import { describe, expect, it } from "vitest";
import { tempDir } from "../test/fixtures.js";
import {
  Code,
  FailedPreconditionError,
  IdempotencyKeyReusedError,
  InvalidArgumentError,
  NotFoundError,
  RpcError,
  ServiceError,
  toStatusObject,
} from "./errors.js";
import { pgPool } from "./pg-pool.js";

/** What a client decodes from the status a server would send for `err`. */
function roundTrip(err: unknown): RpcError {
  const st = toStatusObject(err);
  return new RpcError(st.code, st.details, st.metadata ?? new Metadata());
}

describe("toStatusObject", () => {
  it("keeps each error's code and message, with google.rpc details in grpc-status-details-bin", () => {
    const bad = roundTrip(new InvalidArgumentError("items[1].quantity", "must be between 1 and 10000"));
    expect(bad.code).toBe(Code.INVALID_ARGUMENT);
    expect(bad.fieldViolations).toEqual([
      expect.objectContaining({ field: "items[1].quantity", description: "must be between 1 and 10000" }),
    ]);
    expect(roundTrip(new NotFoundError("order", "o1")).codeName).toBe("NOT_FOUND");
    expect(
      roundTrip(new FailedPreconditionError("no", [{ type: "T", subject: "s", description: "d" }])).details,
    ).toHaveLength(1);
    expect(roundTrip(new IdempotencyKeyReusedError("k")).codeName).toBe("ALREADY_EXISTS");
    expect(roundTrip(new ServiceError(Code.PERMISSION_DENIED, "admins only")).message).toBe("admins only");
  });

  it("turns anything else into INTERNAL with a message that says nothing", () => {
    for (const err of [new Error("SQLITE_CONSTRAINT: CHECK failed"), "a string", undefined, { code: 3 }]) {
      const st = toStatusObject(err);
      expect(st.code).toBe(Code.INTERNAL);
      expect(st.details).toBe("internal error");
    }
  });
});

describe("a database error's status", () => {
  it("is UNAVAILABLE for a SQLite file another process holds locked past the busy timeout (it was INTERNAL)", () => {
    using dir = tempDir();
    const path = join(dir.path, "locked.db");
    const holder = new Database(path);
    holder.pragma("journal_mode = WAL");
    holder.exec("CREATE TABLE t (v TEXT)");
    const other = new Database(path, { timeout: 50 });
    holder.exec("BEGIN IMMEDIATE");
    try {
      let err: unknown;
      try {
        other.exec("INSERT INTO t VALUES ('x')");
      } catch (e) {
        err = e;
      }
      expect((err as { code?: string }).code).toBe("SQLITE_BUSY");
      expect(toStatusObject(err)).toEqual({ code: Code.UNAVAILABLE, details: "database unavailable; try again" });
    } finally {
      holder.exec("ROLLBACK");
      other.close();
      holder.close();
    }
  });

  it("is UNAVAILABLE, and soon, for a PostgreSQL that takes the connection and never answers (it waited for the OS)", async () => {
    const sockets: Socket[] = [];
    const silent = createServer((s) => sockets.push(s));
    await new Promise<void>((r) => silent.listen(0, "127.0.0.1", r));
    const { port } = silent.address() as AddressInfo;
    const pool = pgPool(`postgres://shopmesh@127.0.0.1:${port}/shopmesh`, "public", 1, 300);
    try {
      const started = Date.now();
      const err = await pool.query("SELECT 1").catch((e: unknown) => e);
      expect(Date.now() - started).toBeLessThan(5_000);
      expect(toStatusObject(err)).toEqual({ code: Code.UNAVAILABLE, details: "database unavailable; try again" });
    } finally {
      for (const s of sockets) s.destroy();
      await pool.end();
      await new Promise((r) => silent.close(r));
    }
  });
});

describe("RpcError", () => {
  it("skips detail types it does not know and reads none from a bare status", () => {
    expect(new RpcError(Code.UNAVAILABLE, "down", new Metadata()).details).toEqual([]);
    expect(new RpcError(Code.UNAVAILABLE, "down", new Metadata()).codeName).toBe("UNAVAILABLE");
  });
});
