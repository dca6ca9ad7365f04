/**
 * The grpc-js channels one instance's server streams (watches) run on, each connection kept under
 * its server's rapid-reset limit (reset-budget.ts): every watch a caller leaves is a reset on the
 * connection that carries every other caller's watch. A watch has no end to wait for, so unlike a
 * unary call (h2-bytes.ts) it can never be left unreset: a connection carries at most
 * {@link MAX_STREAMS} — fewer than the resets it has left when it takes one — so each can always be
 * reset, and a connection past half its allowance takes no new watch until it has refilled. Each
 * channel has a connection of its own (a local subchannel pool); one with no watch left is closed
 * while another remains.
 */
import type * as grpc from "@grpc/grpc-js";
import { createChannel, type StreamRoute } from "./grpc-client.js";
import { Connection, RESET_BURST } from "./reset-budget.js";

/** Watches one connection carries at once: fewer than the resets a connection taking one has left. */
const MAX_STREAMS = RESET_BURST / 2 - 50;

interface Pooled {
  readonly channel: grpc.Client;
  readonly conn: Connection;
}

export class StreamChannels {
  readonly #pool = new Set<Pooled>();

  constructor(private readonly target: string) {}

  /** Where one new stream runs, and what its cancel and its end tell the pool. */
  readonly open = (): StreamRoute => {
    const pooled = [...this.#pool].find((p) => p.conn.calls < MAX_STREAMS && !p.conn.spent()) ?? this.#add();
    const { channel, conn } = pooled;
    conn.calls++;
    let cancelled = false;
    let ended = false;
    return {
      channel,
      cancel: (call) => {
        if (cancelled) return;
        cancelled = true;
        conn.takeReset();
        call.cancel();
      },
      ended: () => {
        if (ended) return;
        ended = true;
        if (--conn.calls > 0 || this.#pool.size === 1) return;
        this.#pool.delete(pooled);
        channel.close();
      },
    };
  };

  #add(): Pooled {
    const pooled = {
      channel: createChannel(this.target, { "grpc.use_local_subchannel_pool": 1 }),
      conn: new Connection(),
    };
    this.#pool.add(pooled);
    return pooled;
  }

  /** Channels (connections) open now. */
  get size(): number {
    return this.#pool.size;
  }

  /** Closes every channel, ending the streams on them. */
  close(): void {
    for (const p of this.#pool) p.channel.close();
    this.#pool.clear();
  }
}
