/**
 * Builds the web shop for browsers: web/src/main.ts and web/src/styles.css
 * bundled and minified by esbuild into content-hashed files under assets/
 * (the gateway serves them as immutable), and web/index.html with their
 * names filled in. Writes dist/web/ — index.html, manifest.json (its
 * presence marks a built directory), assets/ — in one swap, so a reader
 * never sees half a build. The same sources always give the same bytes.
 *
 *   npx tsx web/build.ts          (make build runs it when web/ or gen/ changed)
 */
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { join, relative, resolve } from "node:path";
import { pathToFileURL } from "node:url";
import * as esbuild from "esbuild";

/** The repository root. */
const ROOT = resolve(import.meta.dirname, "..");
/** Where the built page goes, relative to the root. */
export const WEB_OUT = "dist/web";

/** What manifest.json records. */
export interface WebManifest {
  /** URL paths of the page's files, relative to the web directory. */
  readonly index: "index.html";
  readonly script: string;
  readonly styles: string;
  /** sha256 of every source file that went into the build, by path from the root: what staleness is judged by. */
  readonly inputs: Readonly<Record<string, string>>;
}

const sha256 = (path: string) =>
  createHash("sha256")
    .update(readFileSync(join(ROOT, path)))
    .digest("hex");

/** Builds the page into `outDir` (default dist/web under the root) and returns its manifest. */
export async function buildWeb(outDir: string = join(ROOT, WEB_OUT)): Promise<WebManifest> {
  const tmp = `${outDir}.tmp-${process.pid}`;
  rmSync(tmp, { recursive: true, force: true });
  const result = await esbuild.build({
    absWorkingDir: ROOT,
    entryPoints: { main: "web/src/main.ts", styles: "web/src/styles.css" },
    bundle: true,
    minify: true,
    format: "esm",
    platform: "browser",
    target: ["es2022", "chrome111", "firefox111", "safari16.4"],
    tsconfig: "web/tsconfig.json",
    outdir: join(tmp, "assets"),
    entryNames: "[name]-[hash]",
    assetNames: "[name]-[hash]",
    legalComments: "none",
    charset: "utf8",
    metafile: true,
    logLevel: "warning",
  });
  const outputs = Object.keys(result.metafile.outputs).map((p) => relative(tmp, join(ROOT, p)).split("\\").join("/"));
  const script = outputs.find((p) => p.endsWith(".js"));
  const styles = outputs.find((p) => p.endsWith(".css"));
  if (!script || !styles) throw new Error(`esbuild wrote no script or stylesheet: ${outputs.join(", ")}`);

  const template = readFileSync(join(ROOT, "web/index.html"), "utf8");
  if (!template.includes("%SCRIPT%") || !template.includes("%STYLES%")) {
    throw new Error("web/index.html must contain %SCRIPT% and %STYLES%");
  }
  writeFileSync(join(tmp, "index.html"), template.replace("%SCRIPT%", `/${script}`).replace("%STYLES%", `/${styles}`));

  const sources = [
    ...Object.keys(result.metafile.inputs),
    "web/index.html",
    "web/build.ts",
    "web/tsconfig.json",
  ].sort();
  const inputs = Object.fromEntries(sources.map((p) => [p, sha256(p)]));
  const manifest: WebManifest = { index: "index.html", script, styles, inputs };
  writeFileSync(join(tmp, "manifest.json"), `${JSON.stringify(manifest, null, 2)}\n`);

  rmSync(outDir, { recursive: true, force: true });
  mkdirSync(resolve(outDir, ".."), { recursive: true });
  renameSync(tmp, outDir);
  return manifest;
}

/** Whether `outDir` is missing or was built from sources other than those on disk now. */
export function webBuildIsStale(outDir: string = join(ROOT, WEB_OUT)): boolean {
  const path = join(outDir, "manifest.json");
  if (!existsSync(path)) return true;
  try {
    const { inputs } = JSON.parse(readFileSync(path, "utf8")) as WebManifest;
    return Object.entries(inputs).some(([p, hash]) => !existsSync(join(ROOT, p)) || sha256(p) !== hash);
  } catch {
    return true;
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(resolve(process.argv[1])).href) {
  const started = performance.now();
  const m = await buildWeb();
  const size = (p: string) => `${(readFileSync(join(ROOT, WEB_OUT, p)).byteLength / 1024).toFixed(1)} KiB`;
  console.log(
    `web: ${Object.keys(m.inputs).length} sources -> ${WEB_OUT}/ (${m.script} ${size(m.script)}, ${m.styles} ${size(m.styles)}) in ${Math.round(performance.now() - started)} ms`,
  );
}
