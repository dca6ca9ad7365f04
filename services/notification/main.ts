/** Notification service process: config from env, start, stop on SIGTERM/SIGINT. */
import { runService } from "../../platform/index.js";
import { startNotification } from "./app.js";
import { loadConfig } from "./config.js";

await runService("notification", () => loadConfig(process.env), startNotification);
