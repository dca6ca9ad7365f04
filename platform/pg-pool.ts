/**
 * The PostgreSQL connection pool every service's store runs on (sql.ts: postgresDb): its types, the
 * session settings of each connection, and the errors it must hear; and the connections of its own
 * beside it, outside the pool's queue: readiness's ping and LISTEN's.
 */
import pg from "pg";
import { backoffMs } from "./backoff.js";
import type { Listening } from "./sql.js";

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

/**
 * TCP keepalive's first probe on a connection this long idle, ms: a NAT or firewall that forgets an idle
 * connection (cloud NATs do after minutes) then never forgets one of these, and an idle connection whose
 * peer is gone is found so (ETIMEDOUT) instead of at its next statement. It cannot find a connection with
 * a statement unanswered (the OS retransmits it instead, ~15 min): pgPing does (a connection of the pool's).
 */
export const KEEPALIVE_MS = 30_000;
const KEEPALIVE = { keepAlive: true, keepAliveInitialDelayMillis: KEEPALIVE_MS };

/** A connection of a {@link pgPool}'s: since when it awaits an answer (ms since the epoch), and its server process. */
type Pooled = pg.Client & { awaiting?: number | undefined; readonly processID?: number | null };
/** The connections of each {@link pgPool}, for its {@link pgPing}: each from its making to its end. */
const pooledOf = new WeakMap<pg.Pool, Set<Pooled>>();

/** A pool for `url` whose connections use `schema`. */
export function pgPool(url: string, schema: string, max: number, connectTimeoutMs = CONNECT_TIMEOUT_MS): pg.Pool {
  const options = `-c search_path=${schema} -c idle_in_transaction_session_timeout=${IDLE_IN_TRANSACTION_MS}`;
  const pooled = new Set<Pooled>();
  // The limit goes to each connection, not to the pool: the pool's own option would bound the wait
  // for a free connection too.
  class Client extends pg.Client {
    awaiting: number | undefined;
    constructor(config?: pg.ClientConfig) {
      super({ ...config, connectionTimeoutMillis: connectTimeoutMs, ...KEEPALIVE });
      // The pool connects each one it makes: its socket's close ends it, once.
      pooled.add(this);
      this.once("end", () => pooled.delete(this));
    }
  }
  Client.prototype.query = noting(pg.Client.prototype.query);
  // Named after the schema (unless the URL names it): pg_stat_activity then says which service a
  // connection is, what `make restore` asks before it replaces one's schema (scripts/restore-postgres.ts).
  const pool = new pg.Pool({ connectionString: url, max, types: pgTypes, options, application_name: schema, Client });
  pool.on("error", () => {});
  pool.on("connect", (client) => client.on("error", () => {}));
  pooledOf.set(pool, pooled);
  return pool;
}

/**
 * `query` noting on its connection since when it awaits an answer: statements asked for a promise only
 * (Kysely's, the migrations'), one at a time on a connection.
 */
function noting(query: typeof pg.Client.prototype.query): typeof pg.Client.prototype.query {
  return function (this: Pooled, ...args: unknown[]) {
    const answer = (query as (...a: unknown[]) => unknown).apply(this, args);
    if (!(answer instanceof Promise)) return answer;
    const sent = Date.now();
    this.awaiting ??= sent;
    const done = () => {
      if (this.awaiting === sent) this.awaiting = undefined;
    };
    void answer.then(done, done);
    return answer;
  } as typeof query;
}

/**
 * Cuts the connections of `pooled` that have awaited an answer for `waitMs` or longer while the server
 * ran no statement of theirs (asked on `client`, the ping's), found so at two pings in a row (the first
 * may see an answer on its way): that answer was lost or the statement never arrived — a path gone
 * silent (a partition, a lost NAT entry) — and none will come until the OS gives up on the socket
 * (~15 min). Cut as a reset would cut them, their statements fail "unavailable" and the pool drops them:
 * the next call gets a new connection. A slow statement the server runs (a long purge, a migration
 * waiting for its lock) is never cut. `suspects`: those found so at the last ping, with since when they
 * awaited. Rejects when it cut any: the pool could not serve. The process ids are the server's: the pool
 * connects to PostgreSQL itself, not through a pooler that hands out ids of its own.
 */
async function cutSilent(client: pg.Client, pooled: Set<Pooled>, waitMs: number, suspects: Map<Pooled, number>) {
  const now = Date.now();
  const late = [...pooled].filter((c) => c.awaiting !== undefined && now - c.awaiting >= waitMs && c.processID);
  const before = new Map(suspects);
  suspects.clear();
  if (late.length === 0) return;
  // A process not listed has ended (a transaction idle for IDLE_IN_TRANSACTION_MS); one whose state is
  // hidden (another role's) counts as running.
  const { rows } = await client.query<{ pid: number }>(
    "SELECT pid FROM pg_stat_activity WHERE pid = ANY($1::int[]) AND (state IS NULL OR state NOT LIKE 'idle%')",
    [late.map((c) => c.processID)],
  );
  const running = new Set(rows.map((r) => r.pid));
  const silent = late.filter((c) => !running.has(c.processID as number));
  for (const c of silent) suspects.set(c, c.awaiting as number);
  const cut = silent.filter((c) => before.get(c) === c.awaiting);
  if (cut.length === 0) return;
  const err = Object.assign(
    new Error(`no answer in ${waitMs} ms, and the server runs no statement of this connection's: a silent path`),
    { code: "ETIMEDOUT" },
  );
  for (const c of cut) {
    suspects.delete(c);
    c.connection.stream.destroy(err);
  }
  throw new Error(`${cut.length} connection(s) of the pool got no answer in ${waitMs} ms (a silent path): cut`);
}

/** A {@link pgPing}: `ping(waitMs)` resolves once the server answers, rejects when it does not in `waitMs`. */
export interface Ping {
  ping(waitMs: number): Promise<void>;
  close(): Promise<void>;
}

/**
 * Asks the server of `url` whether it answers, on a connection of its own (health.ts's readiness).
 * Through the pool the ping waited in its queue behind the traffic: every connection busy for longer
 * than the ping's wait (a lock convoy, a long purge, a burst of slow queries) read as the database
 * unreachable, and under a load spread over all replicas every one turned NOT_SERVING at once. A ping
 * unanswered in `waitMs` drops its connection (a silent one holds its statement for as long as the
 * OS retransmits), as does an error; the next ping opens a new one. A `pool` holding no connection
 * must also open one (then kept for the traffic): the ping's own, open already, answered while the pool
 * could open none (max_connections reached, the database refusing connections) and every call failed.
 * Answered, it cuts the pool's connections gone silent ({@link cutSilent}), failing when it cut any: a
 * pool whose every connection had gone silent holds them all the same, and its calls waited ~15 min.
 */
export function pgPing(url: string, pool?: pg.Pool, connectTimeoutMs = CONNECT_TIMEOUT_MS): Ping {
  let open: { client: pg.Client; ready: Promise<unknown> } | undefined;
  let closed = false;
  const pooled = pool && pooledOf.get(pool);
  const suspects = new Map<Pooled, number>();
  const drop = (client: pg.Client) => {
    if (open?.client === client) open = undefined;
    // pg's end() cuts a connection whose statement or handshake hangs, and says goodbye on an idle one.
    return client.end().catch(() => {});
  };
  const connect = () => {
    // Named as its pool's: pg_stat_activity tells whose it is (scripts/restore-postgres.ts asks).
    const client = new pg.Client({
      connectionString: url,
      connectionTimeoutMillis: connectTimeoutMs,
      application_name: pool?.options.application_name,
      ...KEEPALIVE,
    });
    client.on("error", () => void drop(client));
    client.on("end", () => void drop(client));
    return { client, ready: client.connect() };
  };
  return {
    ping(waitMs) {
      if (closed) return Promise.reject(new Error("the database is closed"));
      open ??= connect();
      const { client, ready } = open;
      let late: NodeJS.Timeout | undefined;
      const timeout = new Promise<never>((_, reject) => {
        late = setTimeout(() => reject(new Error(`no answer in ${waitMs} ms`)), waitMs).unref();
      });
      const answer = ready
        .then(() => client.query("SELECT 1"))
        .then(() => pooled && cutSilent(client, pooled, waitMs, suspects))
        .then(() => (pool?.totalCount === 0 ? pool.connect().then((c) => c.release()) : undefined));
      return Promise.race([answer, timeout]).then(
        () => clearTimeout(late),
        (err: unknown) => {
          clearTimeout(late);
          void drop(client);
          throw err;
        },
      );
    },
    async close() {
      closed = true;
      if (open) await drop(open.client);
    },
  };
}

/**
 * LISTEN on `channel` over a connection of its own, named `name` (as its service's pool, unless the URL
 * names it), reconnecting (and saying "*") when it drops.
 */
export async function listenOn(
  url: string,
  channel: string,
  fn: (payload: string) => void,
  name?: string,
): Promise<Listening> {
  if (!/^[a-z_][a-z0-9_]*$/.test(channel)) throw new Error(`invalid channel name "${channel}"`);
  let closed = false;
  let client: pg.Client | undefined;
  let failures = 0;
  const connect = async (): Promise<void> => {
    // Closed while a reconnect waited out its backoff: nothing to connect any more.
    if (closed) return;
    const c = new pg.Client({ connectionString: url, application_name: name, ...KEEPALIVE });
    c.on("notification", (n) => fn(n.payload ?? ""));
    const reconnect = () => {
      if (closed || client !== c) return;
      client = undefined;
      setTimeout(() => void connect().catch(reconnect), backoffMs(++failures, 100, 5_000)).unref();
    };
    c.on("error", reconnect);
    c.on("end", reconnect);
    client = c;
    await c.connect();
    // Closed while connecting: close() ended the client it saw, which may not have been this one.
    if (closed) {
      await c.end().catch(() => {});
      return;
    }
    await c.query(`LISTEN ${channel}`);
    if (failures > 0) fn("*");
    failures = 0;
  };
  await connect();
  return {
    async close() {
      closed = true;
      await client?.end().catch(() => {});
    },
  };
}
