/** What a command prints: others' text made harmless to a terminal (platform/printable.ts), and its end when its reader goes. */
export { printable, sayWhileRead } from "../platform/printable.js";

/**
 * Ends the command quietly once whatever reads its output stops reading (`make trace | head -1`), as
 * Unix tools do: the next write failed with EPIPE, which Node reports as an uncaught error, a stack
 * trace and exit code 1.
 */
export function quietWhenOutputCloses(): void {
  process.stdout.on("error", (err: NodeJS.ErrnoException) => {
    if (err.code !== "EPIPE") throw err;
    process.exit(0);
  });
}
