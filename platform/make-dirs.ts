import { existsSync, mkdirSync, statSync } from "node:fs";
import { dirname, resolve } from "node:path";

/**
 * Makes directory `dir` and its missing parents, as `mkdirSync(dir, { recursive: true })` does, and
 * throws mkdir's own error (its `code`: ENOTDIR, EACCES, ENOENT...) when one cannot be made. Node 20's
 * recursive mkdir tries a directory again for as long as its parent exists, and where the system
 * answers ENOENT for a directory whose parent does (`/proc`, `/sys`) it never returned, at a core's
 * full use: `BACKUP_DIR=/proc/backups make backup` hung. Here each missing one is made once, from the top.
 */
export function makeDirs(dir: string): void {
  const missing: string[] = [];
  for (let d = resolve(dir); !existsSync(d); d = dirname(d)) {
    missing.unshift(d);
    if (dirname(d) === d) break;
  }
  for (const d of missing) {
    try {
      mkdirSync(d);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err; // made meanwhile by another: fine
    }
  }
  if (!statSync(dir).isDirectory()) {
    throw Object.assign(new Error(`ENOTDIR: not a directory, mkdir '${dir}'`), { code: "ENOTDIR" });
  }
}
