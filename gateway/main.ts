/** Gateway process: config from env, start, stop on SIGTERM/SIGINT. */
import { runService } from "../platform/lifecycle.js";
import { startGateway } from "./app.js";
import { loadConfig } from "./config.js";

await runService("gateway", () => loadConfig(process.env), startGateway);
