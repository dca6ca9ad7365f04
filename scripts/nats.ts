/**
 * The local NATS: how `make run` starts it (JetStream, its streams under
 * <data dir>/nats, loopback only), so that `make history-rebuild` can start
 * the same server on the same streams when `make run` is stopped.
 */
import { spawnSync } from "node:child_process";
import { connect } from "node:net";
import { join } from "node:path";

/** What to do when nats-server is missing. */
export const NATS_MISSING =
  "nats-server is not installed. Install it with your OS package manager, e.g.\n" +
  "  sudo apt-get install -y nats-server      (Debian/Ubuntu)\n" +
  "  brew install nats-server                 (macOS)\n" +
  "or download it from https://github.com/nats-io/nats-server/releases";

/** Whether nats-server can be run. */
export function natsInstalled(): boolean {
  return !spawnSync("nats-server", ["--version"], { encoding: "utf8" }).error;
}

/**
 * Arguments of `nats-server` for the local bus: JetStream with its store
 * under `<dataDir>/nats`, client port `port`, monitoring on `monitorPort`
 * when given.
 */
export function natsServerArgs(dataDir: string, port: number, monitorPort?: number): string[] {
  return [
    ...["-js", "-sd", join(dataDir, "nats")],
    // Loopback only: the local bus has no auth, and nothing off this machine needs it.
    ...["-a", "127.0.0.1", "-p", String(port)],
    ...(monitorPort === undefined ? [] : ["-m", String(monitorPort)]),
    ...["-n", "shopmesh-local"],
  ];
}

/** Whether something accepts TCP connections on `host:port` within `timeoutMs`. */
export function answers(host: string, port: number, timeoutMs = 1_000): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host, port });
    const done = (ok: boolean) => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(timeoutMs, () => done(false));
    socket.once("connect", () => done(true));
    socket.once("error", () => done(false));
  });
}
