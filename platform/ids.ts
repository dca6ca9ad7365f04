/** Ids for everything a service creates. */
import { randomBytes } from "node:crypto";

/** A new id: `prefix_` + time (base36, sorts by creation) + 64 random bits. */
export function newId(prefix: string, now: number = Date.now()): string {
  return `${prefix}_${now.toString(36).padStart(9, "0")}${randomBytes(8).toString("hex")}`;
}
