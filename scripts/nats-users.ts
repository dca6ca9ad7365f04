/**
 * Writes deploy/kubernetes/base/nats/users.conf — the cluster's NATS users
 * and what each may publish, from contracts/events.ts (BUS_USERS) — after a
 * change there; test/deploy.test.ts fails while the file is not this.
 *   npx tsx scripts/nats-users.ts
 */
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { ROOT } from "./layout.js";
import { DEPLOY_USERS_CONF, deployUsersConf } from "./nats.js";

writeFileSync(join(ROOT, DEPLOY_USERS_CONF), deployUsersConf());
process.stdout.write(`wrote ${DEPLOY_USERS_CONF}\n`);
