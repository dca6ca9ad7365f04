/**
 * Creates the shop's event streams and the service registry's bucket as
 * the bus's administrator — what the services' own NATS users may not do
 * (platform/bus-access.ts) — and exits: 0 once they are there, 78 on bad
 * configuration, 1 when NATS refuses the user. The Kubernetes Job
 * nats-streams runs it (`node contracts/provision-bus.js`) with NATS_URL,
 * NATS_USER, NATS_PASSWORD and NATS_STREAM_REPLICAS; `make run` calls
 * provisionBus itself.
 */
import { busAuthOf } from "../platform/bus.js";
import { provisionBus } from "../platform/bus-access.js";
import { commonEnv, configOrExit, EXIT_REFUSED, parseEnv } from "../platform/config.js";
import { createLogger } from "../platform/log.js";
import { EVENTS } from "./events.js";

const spec = {
  LOG_LEVEL: commonEnv.LOG_LEVEL,
  LOG_FORMAT: commonEnv.LOG_FORMAT,
  NATS_URL: commonEnv.NATS_URL,
  NATS_USER: commonEnv.NATS_USER,
  NATS_PASSWORD: commonEnv.NATS_PASSWORD,
  NATS_STREAM_REPLICAS: commonEnv.NATS_STREAM_REPLICAS,
} as const;

const config = configOrExit(() => parseEnv(spec, process.env));
if (config.NATS_URL === "off") {
  // Its one work is on the bus: with "off" it dialled a host named "off", waiting for ever.
  process.stderr.write("NATS_URL=off: provisioning the streams needs the bus; set NATS_URL\n");
  process.exit(EXIT_REFUSED);
}
const log = await createLogger({ service: "provision-bus", level: config.LOG_LEVEL, format: config.LOG_FORMAT });
try {
  await provisionBus(config.NATS_URL, EVENTS, log, {
    ...busAuthOf(config),
    replicas: config.NATS_STREAM_REPLICAS,
  });
  log.info(
    { streams: EVENTS.streams.map((s) => s.name), replicas: config.NATS_STREAM_REPLICAS },
    "streams provisioned",
  );
} catch (err) {
  log.error({ err: (err as Error).message }, "cannot provision the streams");
  process.exitCode = 1;
}
