/**
 * The PostgreSQL connection pool every service's store runs on (sql.ts: postgresDb): its types, the
 * session settings of each connection, and the errors it must hear.
 */
import pg from "pg";

/** The pg types parser, with BIGINT (ms timestamps, counts) as numbers: every value here is below 2^53. */
const pgTypes = {
  getTypeParser: ((oid: number, format?: string) =>
    oid === pg.types.builtins.INT8
      ? (v: string) => Number(v)
      : pg.types.getTypeParser(oid, format as "text")) as typeof pg.types.getTypeParser,
};

/**
 * How long PostgreSQL lets a transaction sit idle before it ends the session, ms. No transaction
 * here waits on anything but its own statements, so one idle this long belongs to a process that is
 * frozen (SIGSTOP, a VM paused, a debugger) or wedged: its row locks stalled every replica that
 * touched those rows — consumer batches, sagas taken over when its lease (SAGA_LEASE_MS, 5 s) ran
 * out, a client's retry of its PlaceOrder — for as long as it stayed frozen, and orders ran out their
 * step budget. The frozen process, once it runs again, finds its connection gone: "unavailable", its
 * work retried (isDatabaseUnavailable).
 */
export const IDLE_IN_TRANSACTION_MS = 5_000;

/**
 * How long a new connection's handshake may take, ms. Without a limit (pg's default) a server that
 * takes the connection and never answers — frozen, or a host gone from the network — held every
 * statement that needed a new connection, and each request behind it, until the operating system
 * gave up on the socket (minutes); now they fail as "unavailable" (isDatabaseUnavailable) and are
 * retried. The wait for a free connection of the pool's stays unbounded: a saturated pool's queue is
 * load, not an outage, and the callers' deadlines bound it.
 */
export const CONNECT_TIMEOUT_MS = 5_000;

/** A pool for `url` whose connections use `schema`. */
export function pgPool(url: string, schema: string, max: number, connectTimeoutMs = CONNECT_TIMEOUT_MS): pg.Pool {
  const options = `-c search_path=${schema} -c idle_in_transaction_session_timeout=${IDLE_IN_TRANSACTION_MS}`;
  // The limit goes to each connection, not to the pool: the pool's own option would bound the wait
  // for a free connection too.
  class Client extends pg.Client {
    constructor(config?: pg.ClientConfig) {
      super({ ...config, connectionTimeoutMillis: connectTimeoutMs });
    }
  }
  const pool = new pg.Pool({ connectionString: url, max, types: pgTypes, options, Client });
  pool.on("error", () => {});
  pool.on("connect", (client) => client.on("error", () => {}));
  return pool;
}
