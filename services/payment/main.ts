/** Payment service process: config from env, start, stop on SIGTERM/SIGINT. */
import { runService } from "../../platform/index.js";
import { startPayment } from "./app.js";
import { loadConfig } from "./config.js";

await runService("payment", () => loadConfig(process.env), startPayment);
