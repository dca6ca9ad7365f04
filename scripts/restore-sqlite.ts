/**
 * `make restore` of a SQLite store (.data/<service>.db): the copy checked (scripts/backup-copy.ts),
 * written aside from it and renamed over the live file in one step (platform/sqlite-swap.ts).
 */
import { rmSync } from "node:fs";
import { join } from "node:path";
import Database from "better-sqlite3";
import { openElsewhere, swapSqliteFile } from "../platform/sqlite-swap.js";
import { lockRebuild } from "../services/history/rebuild-aside.js";
import { checkedCopy } from "./backup-copy.js";
import { CannotStart } from "./local-nats.js";
import type { RestoreTarget } from "./restore-target.js";

/**
 * `service`'s store in `dataDir` and its copy in backup `from` (checked against `migrations`: throws
 * CannotStart when it is no copy the service runs on). `shown` shortens a path for the messages.
 */
export function sqliteTarget(
  dataDir: string,
  service: string,
  migrations: readonly string[],
  from: string,
  shown: (path: string) => string,
): RestoreTarget {
  const copy = checkedCopy(from, service, migrations, shown);
  const live = join(dataDir, `${service}.db`);
  return {
    at: copy.at,
    copy: shown(copy.file),
    live: shown(live),
    start: "make run",
    async claim(stops) {
      // History holds its view's lock while it runs (a history started by hand included): taken alone here.
      if (service === "history") {
        const lock = await lockRebuild({ engine: "sqlite", path: live });
        stops.push(() => lock.release());
      }
      // A service running outside make run (notification has no lock of its own), or a make backup copying.
      if (openElsewhere(live))
        throw new CannotStart(
          `${shown(live)} is open in another process (a ${service} service, a make backup): stop it first`,
        );
    },
    async put() {
      const aside = `${live}.restoring`;
      rmSync(aside, { force: true });
      const source = new Database(copy.file, { readonly: true, fileMustExist: true });
      try {
        source.prepare("VACUUM INTO ?").run(aside);
      } finally {
        source.close();
      }
      swapSqliteFile(aside, live);
    },
  };
}
