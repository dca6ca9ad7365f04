/**
 * grpc-js's own lines (it writes them to stderr with console.error, raw) through the process's
 * logger: JSON like every other line, clipped. A header that is no metadata (a value not printable
 * ASCII) was written raw for each such header of each call, its value twice and whole: 100 of 600
 * bytes made a call to a service's port write 137 KB of text that was no JSON, with the caller's tabs
 * and C1 controls in it. The caller's fault, as a bad token is the gateway's caller's: debug.
 */
import * as grpc from "@grpc/grpc-js";
import type { Logger } from "./log.js";
import { clipText } from "./validate.js";

/** The most of one grpc-js line kept. */
const MAX_GRPC_LINE = 500;

/** What grpc-js says of a caller's header it drops (metadata.ts, fromHttp2Headers). */
const CALLERS_HEADER = /^Failed to add metadata entry /;

const text = (args: unknown[]) => clipText(args.map(String).join(" "), MAX_GRPC_LINE);

/** Sends grpc-js's log lines to `log` (process-wide; the last call's logger wins), tagged `component: "grpc-js"`. */
export function grpcLogsTo(log: Logger): void {
  const glog = log.child({ component: "grpc-js" });
  grpc.setLogger({
    error: (...args: unknown[]) => {
      const line = text(args);
      if (CALLERS_HEADER.test(line)) glog.debug(line);
      else glog.error(line);
    },
    info: (...args: unknown[]) => glog.info(text(args)),
    debug: (...args: unknown[]) => glog.debug(text(args)),
  });
}
