/** Inventory service process: config from env, start, stop on SIGTERM/SIGINT. */
import { runService } from "../../platform/index.js";
import { startInventory } from "./app.js";
import { loadConfig } from "./config.js";

await runService("inventory", () => loadConfig(process.env), startInventory);
