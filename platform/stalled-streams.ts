/**
 * HTTP/2 calls whose client does not take their answer (a receive window of zero): each holds its
 * answer, and its memory, for as long as the connection lives — a client that answers pings, for ever.
 * The gateway cuts them after HTTP_STREAM_IDLE_TIMEOUT_MS (gateway/listener.ts), a service's port after
 * its `stallMs` (platform/grpc-port.ts).
 */
import http2 from "node:http2";
import type * as grpc from "@grpc/grpc-js";
import { eachHttp2Server } from "./screened-streams.js";

/** The streams one {@link stalledStreams} watches. */
export interface StalledStreams {
  /** Watches `stream` until it closes. */
  watch(stream: http2.ServerHttp2Stream): void;
  /** Stops the sweep (the streams are no longer cut). */
  stop(): void;
}

/**
 * Cuts an HTTP/2 stream whose queued answer has not shrunk for `ms`. Node's own stream timeout re-arms
 * instead of firing while the stream has data queued and its *session* has sent anything since — any
 * stream's frames, the resets that cut its stalled neighbours included — so N calls whose client
 * does not read were cut a timeout apart, a few at a time, the last after up to N timeouts. One sweep
 * for all streams, a quarter of `ms` apart: a stream is cut between `ms` and 1.25 × `ms` into its stall.
 * Progress is the queue emptying or shrinking between two sweeps, or draining (a client that reads
 * slowly behind a producer that waits for it keeps its queue near full while bytes move). Node counts
 * a write as queued until all of it is sent, so a client must take each piece written — a unary
 * answer is one — within `ms`: at 60 s, a 57 KB document needs about 1 KB/s. Nothing per stream
 * finer is observable (Node reports the bytes sent per session only).
 */
export function stalledStreams(ms: number, cut: (stream: http2.ServerHttp2Stream) => void): StalledStreams {
  const watched = new Map<http2.ServerHttp2Stream, { queued: number; since: number }>();
  const sweep = setInterval(
    () => {
      const now = Date.now();
      for (const [stream, seen] of watched) {
        const queued = stream.bufferSize;
        // A queue that only grows is a stall too; one empty at the last sweep stalled after it.
        if (queued === 0 || seen.queued === 0 || queued < seen.queued) seen.since = now;
        seen.queued = queued;
        if (queued > 0 && now - seen.since >= ms) {
          watched.delete(stream);
          cut(stream);
        }
      }
    },
    Math.max(25, ms / 4),
  );
  sweep.unref();
  return {
    watch(stream: http2.ServerHttp2Stream) {
      const seen = { queued: 0, since: Date.now() };
      watched.set(stream, seen);
      stream.on("drain", () => {
        seen.since = Date.now();
      });
      stream.once("close", () => watched.delete(stream));
    },
    stop: () => clearInterval(sweep),
  };
}

/**
 * Resets (CANCEL) every call on `server`'s ports whose queued answer has not shrunk for `ms`, as
 * {@link stalledStreams} tells; grpc-js sees the call cancelled. Call before binding; returns what stops it.
 */
export function cuttingStalledAnswers(server: grpc.Server, ms: number): () => void {
  const stalled = stalledStreams(ms, (stream) => {
    if (!stream.closed && !stream.destroyed) stream.close(http2.constants.NGHTTP2_CANCEL);
  });
  eachHttp2Server(server, "cut stalled answers", (h2) => h2.on("stream", (stream) => stalled.watch(stream)));
  return stalled.stop;
}
