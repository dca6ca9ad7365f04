/**
 * Summarises a V8 CPU profile (node --cpu-prof): where the busy time goes,
 * by owner (a package, Node's internals, this project's files, garbage
 * collection) and by function (self time). Idle time is left out, so the
 * shares are of the time the process was actually working.
 *
 *   npx tsx bench/profile.ts [file.cpuprofile]   (default: the newest in bench/results/profiles)
 */
import { readdirSync, readFileSync, statSync } from "node:fs";
import { join, resolve } from "node:path";

interface Node {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}
interface Profile {
  nodes: Node[];
  samples: number[];
  timeDeltas: number[];
}

const ROOT = resolve(import.meta.dirname, "..");

/** Who owns a frame: a package, node internals, a project file, or a V8 pseudo-frame. */
function ownerOf(url: string, fn: string): string {
  if (!url) return fn.startsWith("(") ? fn : "(native)";
  const pkg = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(url);
  if (pkg) return pkg[1] ?? "?";
  if (url.startsWith("node:")) return "node internals";
  return url.replace(`file://${ROOT}/`, "").replace(/\/[^/]+$/, "/");
}

export function summarise(path: string, top = 25): string {
  const p = JSON.parse(readFileSync(path, "utf8")) as Profile;
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const self = new Map<number, number>();
  p.samples.forEach((id, i) => {
    self.set(id, (self.get(id) ?? 0) + (p.timeDeltas[i] ?? 0));
  });
  const owners = new Map<string, number>();
  const fns = new Map<string, number>();
  let busy = 0;
  for (const [id, us] of self) {
    const n = byId.get(id);
    if (!n) continue;
    const { functionName: fn, url, lineNumber } = n.callFrame;
    if (fn === "(idle)") continue;
    busy += us;
    const owner = ownerOf(url, fn);
    owners.set(owner, (owners.get(owner) ?? 0) + us);
    const where = url ? `${url.replace(`file://${ROOT}/`, "").replace(/.*node_modules\//, "")}:${lineNumber + 1}` : "";
    const key = `${fn || "(anonymous)"} ${where}`;
    fns.set(key, (fns.get(key) ?? 0) + us);
  }
  const pct = (us: number) => `${((us / busy) * 100).toFixed(1).padStart(5)}%`;
  const rows = (m: Map<string, number>, n: number) =>
    [...m]
      .sort((a, b) => b[1] - a[1])
      .slice(0, n)
      .map(([k, us]) => `  ${pct(us)}  ${k}`)
      .join("\n");
  return [
    `${path}: ${(busy / 1e6).toFixed(1)} s busy`,
    "by owner (self time):",
    rows(owners, 15),
    `top ${top} functions (self time):`,
    rows(fns, top),
  ].join("\n");
}

if (import.meta.url === `file://${process.argv[1]}`) {
  let file = process.argv[2];
  if (!file) {
    const dir = join(ROOT, "bench", "results", "profiles");
    file = readdirSync(dir)
      .filter((f) => f.endsWith(".cpuprofile"))
      .map((f) => join(dir, f))
      .sort((a, b) => statSync(b).mtimeMs - statSync(a).mtimeMs)[0];
    if (!file) throw new Error(`no .cpuprofile in ${dir}`);
  }
  process.stdout.write(`${summarise(file)}\n`);
}
