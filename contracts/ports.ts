/**
 * Where each service listens by default (`make run`'s ports; each service's `GRPC_PORT` moves its own):
 * the one table its config, its callers' default targets and the local runner read.
 */
export const DEFAULT_PORTS = {
  inventory: 50051,
  payment: 50052,
  order: 50053,
  notification: 50054,
  history: 50055,
} as const;

/** A service by name. */
export type ServiceName = keyof typeof DEFAULT_PORTS;

/** A service's default address on this machine, e.g. `127.0.0.1:50053` for order. */
export function localTarget(service: ServiceName): string {
  return `127.0.0.1:${DEFAULT_PORTS[service]}`;
}
