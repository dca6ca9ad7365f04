/** Ids for everything a service creates. */
import { randomFillSync } from "node:crypto";

/** Random bytes drawn ahead, 8 per id: one call into the system's generator per 512 ids, not one per id. */
const pool = Buffer.alloc(4096);
let drawn = pool.length;

/** A new id: `prefix_` + time (base36, sorts by creation) + 64 random bits. */
export function newId(prefix: string, now: number = Date.now()): string {
  if (drawn === pool.length) {
    randomFillSync(pool);
    drawn = 0;
  }
  drawn += 8;
  return `${prefix}_${now.toString(36).padStart(9, "0")}${pool.toString("hex", drawn - 8, drawn)}`;
}
