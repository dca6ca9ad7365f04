/** History service process: config from env, start, stop on SIGTERM/SIGINT. */
import { runService } from "../../platform/index.js";
import { startHistory } from "./app.js";
import { loadConfig } from "./config.js";

await runService("history", () => loadConfig(process.env), startHistory);
