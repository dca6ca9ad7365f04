/**
 * The gateway's listener on its own (gateway/listener.ts), against clients that hold what it closes;
 * the whole gateway's slow and idle clients are test/slow-clients.test.ts.
 */
import { once } from "node:events";
import net from "node:net";
import { expect, it } from "vitest";
import { silentLogger } from "../platform/log.js";
import { listen } from "./listener.js";

const IDLE_MS = 300;

// Found (review, 2026-12-05): an idle HTTP/2 session was closed (GOAWAY) and "cut after one more idle
// period" by session.destroy() — a no-op on a session already closed, whose socket Node had ended and
// left waiting for the client's end: a client that never sent it held its connection, a descriptor and
// a place in HTTP_MAX_CONNECTIONS and HTTP_MAX_CONNECTIONS_PER_IP, for good.
it("lets go of an idle HTTP/2 connection whose client never closes its side: one idle period after the server's end", async () => {
  const listener = await listen(
    {
      host: "127.0.0.1",
      port: 0,
      log: silentLogger(),
      headersTimeoutMs: 1_000,
      requestTimeoutMs: 2_000,
      idleTimeoutMs: IDLE_MS,
      streamIdleTimeoutMs: 1_000,
      maxConnectionsPerIp: 0,
      maxConnections: 100,
      maxConcurrentStreams: 100,
      maxBodyBytes: 1_024,
    },
    (_req, res) => res.end(),
  );
  const sockets: net.Socket[] = [];
  try {
    let ended = 0;
    for (let i = 0; i < 3; i++) {
      // The connection preface and an empty SETTINGS frame, then nothing: it reads, and never ends its side.
      const s = net.connect({ port: listener.port, host: "127.0.0.1", allowHalfOpen: true });
      sockets.push(s);
      s.on("error", () => {});
      s.on("end", () => ended++);
      s.resume();
      await once(s, "connect");
      s.write(
        Buffer.concat([Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), Buffer.from([0, 0, 0, 4, 0, 0, 0, 0, 0])]),
      );
    }
    await expect.poll(() => ended, { timeout: 2_000 }).toBe(3);
    await expect.poll(() => listener.connections(), { timeout: 2_000 }).toBe(0);
  } finally {
    for (const s of sockets) s.destroy();
    await listener.stop(0);
  }
});
