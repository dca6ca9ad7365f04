/** Order service process: config from env, start, stop on SIGTERM/SIGINT. */
import { runService } from "../../platform/index.js";
import { startOrder } from "./app.js";
import { loadConfig } from "./config.js";

await runService("order", () => loadConfig(process.env), startOrder);
