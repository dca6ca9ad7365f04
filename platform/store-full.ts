/** JetStream refusing a write for want of room: its store (or an account's share of it) is used up. */
import { JetStreamApiError } from "@nats-io/jetstream";

/**
 * nats-server's `err_code` for a write refused because the JetStream store's use has passed
 * `max_file_store` (or `max_memory_store`, or the account's limit): every write is refused, whatever its
 * stream's own bound, until room is made — a stream deleted or bounded, the limit raised.
 */
export const INSUFFICIENT_RESOURCES = 10023;

/** Whether `err` is JetStream's refusal of a write for want of room ({@link INSUFFICIENT_RESOURCES}). */
export function isStoreFull(err: unknown): boolean {
  return err instanceof JetStreamApiError && err.code === INSUFFICIENT_RESOURCES;
}
