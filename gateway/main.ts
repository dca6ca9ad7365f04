/** Gateway process: config from env, start, stop on SIGTERM/SIGINT. */
import { createLogger, runProcess } from "../platform/index.js";
import { startGateway } from "./app.js";
import { loadConfig } from "./config.js";

await runProcess(
  () => loadConfig(process.env),
  async (config) => {
    const log = await createLogger({ service: "gateway", level: config.LOG_LEVEL, format: config.LOG_FORMAT });
    return { log, service: await startGateway(config, log) };
  },
);
