/** Every overlay under deploy/kubernetes/overlays, rendered offline with `kubectl kustomize` (no cluster). */
import { execFileSync } from "node:child_process";
import { readdirSync } from "node:fs";
import { join } from "node:path";
import { parseAllDocuments } from "yaml";
import { ROOT } from "./fixtures.js";

export const OVERLAYS = join(ROOT, "deploy", "kubernetes", "overlays");

/** Each overlay's name and its rendered objects, as `T` (the caller's reading of them). */
export function renderOverlays<T>(): Map<string, T[]> {
  return new Map(
    readdirSync(OVERLAYS).map((o) => {
      const yaml = execFileSync("kubectl", ["kustomize", join(OVERLAYS, o)], { encoding: "utf8" });
      const objs = parseAllDocuments(yaml)
        .map((d) => d.toJS() as T | null)
        .filter((x): x is T => x !== null);
      return [o, objs] as const;
    }),
  );
}
