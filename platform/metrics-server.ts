/**
 * The `/metrics` + `/healthz` endpoint of a process's registry (metrics.ts), within limits a scraper
 * never reaches and a hostile client does.
 */
import http from "node:http";
import type { Registry } from "prom-client";
import type { Logger } from "./log.js";

/** What the metrics port holds a client to (see {@link METRICS_SERVER_LIMITS}). */
export interface MetricsServerLimits {
  readonly maxConnections: number;
  readonly headersTimeoutMs: number;
  readonly requestTimeoutMs: number;
  /** A connection on which nothing moves (a client that sends requests and never reads the answers). */
  readonly idleTimeoutMs: number;
}

/**
 * What a scraper gets from the metrics port, and no more: Prometheus keeps a
 * connection or two and asks every few seconds, so a client that opens many,
 * sends its request slowly or never reads the answers is cut (Node's
 * defaults: no connection limit, 60 s for the headers, 5 min for the
 * request, no idle cut).
 */
export const METRICS_SERVER_LIMITS: MetricsServerLimits = Object.freeze({
  maxConnections: 64,
  headersTimeoutMs: 5_000,
  requestTimeoutMs: 10_000,
  idleTimeoutMs: 30_000,
});

/**
 * `registry`'s text, computed once at a time and reused for ten times as long as it took: scrapes
 * take at most about a tenth of the process's one thread however many a client asks for, and are at
 * most that stale. Each was computed afresh (~13 ms in the gateway): 2,000 pipelined on one
 * connection held the gateway's thread 26 s, its calls waiting behind them.
 */
function sharedScrape(registry: Registry): () => Promise<string> {
  let last: { text: Promise<string>; until: number } | undefined;
  return () => {
    const started = performance.now();
    if (last && started < last.until) return last.text;
    const current = { text: registry.metrics(), until: Number.POSITIVE_INFINITY };
    last = current;
    current.text.then(
      () => {
        current.until = performance.now() + 10 * (performance.now() - started);
      },
      () => {
        if (last === current) last = undefined;
      },
    );
    return current.text;
  };
}

/**
 * Serves `/metrics` (Prometheus text) and `/healthz` on `host:port` (port 0: any free port), within
 * `limits` (tests shorten them).
 */
export async function serveMetrics(
  registry: Registry,
  port: number,
  host: string,
  log: Logger,
  limits: MetricsServerLimits = METRICS_SERVER_LIMITS,
): Promise<{ port: number; close(): Promise<void> }> {
  const options = {
    headersTimeout: limits.headersTimeoutMs,
    requestTimeout: limits.requestTimeoutMs,
    connectionsCheckingInterval: 1_000,
  };
  const scrape = sharedScrape(registry);
  const server = http.createServer(options, (req, res) => {
    const path = req.url?.split("?", 1)[0];
    if (path === "/metrics") {
      scrape().then(
        (body) => {
          res.writeHead(200, { "content-type": registry.contentType });
          res.end(body);
        },
        (err: unknown) => {
          res.writeHead(500);
          res.end(String(err));
        },
      );
    } else if (path === "/healthz") {
      res.writeHead(200, { "content-type": "text/plain" });
      res.end("ok\n");
    } else {
      res.writeHead(404);
      res.end();
    }
  });
  server.maxConnections = limits.maxConnections;
  server.setTimeout(limits.idleTimeoutMs, (socket) => socket.destroy());
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => resolve());
  });
  const addr = server.address();
  const bound = typeof addr === "object" && addr ? addr.port : port;
  log.info({ port: bound }, "metrics on /metrics");
  return { port: bound, close: () => new Promise((r) => server.close(() => r())) };
}
