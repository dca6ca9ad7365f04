/**
 * `make token USER=alice [ROLE=admin]`: prints a development JWT (HS256,
 * signed with the public development key unless JWT_SECRET is set) for the
 * gateway. Valid for an hour.
 */
import { signDevToken } from "../gateway/auth.js";
import { loadConfig } from "../gateway/config.js";
import { configOrExit } from "../platform/config.js";
import { isRole, ROLES } from "../platform/identity-rule.js";
import { quietWhenOutputCloses } from "./printable.js";

quietWhenOutputCloses();

const [user = "alice", role = "customer"] = process.argv.slice(2);
if (!/^[A-Za-z0-9._:@-]{1,128}$/.test(user)) {
  process.stderr.write(`USER must be 1..128 of [A-Za-z0-9._:@-], got ${JSON.stringify(user)}\n`);
  process.exit(2);
}
const roles = role.split(",");
if (!roles.every(isRole)) {
  process.stderr.write(`ROLE must be a comma-separated list of ${ROLES.join(", ")}; got ${JSON.stringify(role)}\n`);
  process.exit(2);
}
// The gateway's own configuration, so that the token is signed as the gateway verifies it: what it
// refuses (a JWT_SECRET too short) is said as the gateway says it, not thrown as a stack trace.
const config = configOrExit(() => loadConfig(process.env));
process.stdout.write(`${await signDevToken(config, user, roles)}\n`);
