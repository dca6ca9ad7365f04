/** Global setup of the postgres vitest project: one PostgreSQL server for the whole run. */
import type { TestProject } from "vitest/node";
import { startPostgres } from "./postgres.js";

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const server = await startPostgres();
  project.provide("postgresUrl", server.url);
  return async () => {
    await server[Symbol.asyncDispose]();
  };
}
