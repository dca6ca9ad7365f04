/**
 * Charts for `make compare` as standalone SVG, written by code: grouped bars
 * and lines over time, each with a title, labelled axes with units, a
 * legend and the values on the bars. No browser, no dependency: the output
 * is small, diffable text that GitHub renders.
 */

const W = 760;
const H = 380;
const M = { top: 48, right: 24, bottom: 76, left: 72 };
const COLORS = ["#2563eb", "#f59e0b", "#10b981", "#ef4444", "#8b5cf6", "#64748b"];
const FONT = 'font-family="system-ui, -apple-system, Segoe UI, sans-serif"';

const esc = (s: string) => s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");

/** Round axis ticks covering 0..max. */
function ticks(max: number): number[] {
  const top = max > 0 ? max : 1;
  const raw = top / 5;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = ([1, 2, 2.5, 5, 10].find((m) => m * mag >= raw) ?? 10) * mag;
  const out: number[] = [];
  for (let v = 0; v <= top + step * 0.999; v += step) out.push(Math.round(v * 1e6) / 1e6);
  return out;
}

const label = (v: number) =>
  Math.abs(v) >= 100
    ? String(Math.round(v))
    : Math.abs(v) >= 10
      ? v.toFixed(1).replace(/\.0$/, "")
      : String(+v.toFixed(2));

function frame(title: string, xLabel: string, yLabel: string, yTicks: number[], y: (v: number) => number): string[] {
  const out = [
    `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 ${W} ${H}" width="${W}" height="${H}" ${FONT} font-size="12">`,
    `<title>${esc(title)}</title>`,
    `<rect width="${W}" height="${H}" fill="#ffffff"/>`,
    `<text x="${W / 2}" y="24" text-anchor="middle" font-size="15" font-weight="600" fill="#0f172a">${esc(title)}</text>`,
  ];
  for (const t of yTicks) {
    out.push(
      `<line x1="${M.left}" x2="${W - M.right}" y1="${y(t)}" y2="${y(t)}" stroke="#e2e8f0"/>`,
      `<text x="${M.left - 8}" y="${y(t) + 4}" text-anchor="end" fill="#475569">${label(t)}</text>`,
    );
  }
  out.push(
    `<line x1="${M.left}" x2="${W - M.right}" y1="${H - M.bottom}" y2="${H - M.bottom}" stroke="#334155"/>`,
    `<line x1="${M.left}" x2="${M.left}" y1="${M.top}" y2="${H - M.bottom}" stroke="#334155"/>`,
    `<text transform="translate(18 ${(M.top + H - M.bottom) / 2}) rotate(-90)" text-anchor="middle" fill="#0f172a">${esc(yLabel)}</text>`,
    `<text x="${(M.left + W - M.right) / 2}" y="${H - 40}" text-anchor="middle" fill="#0f172a">${esc(xLabel)}</text>`,
  );
  return out;
}

function legend(names: readonly string[]): string[] {
  const out: string[] = [];
  let x = M.left;
  for (const [i, name] of names.entries()) {
    out.push(
      `<rect x="${x}" y="${H - 22}" width="12" height="12" fill="${COLORS[i % COLORS.length]}"/>`,
      `<text x="${x + 18}" y="${H - 12}" fill="#0f172a">${esc(name)}</text>`,
    );
    x += 30 + name.length * 7;
  }
  return out;
}

export interface BarChart {
  readonly title: string;
  /** What the groups are (the x axis). */
  readonly xLabel: string;
  /** What the bars measure, with the unit, e.g. "latency (ms)". */
  readonly yLabel: string;
  readonly groups: readonly string[];
  /** One colour each; `values[i]` belongs to `groups[i]`. */
  readonly series: ReadonlyArray<{ readonly name: string; readonly values: readonly number[] }>;
}

/** Grouped bars, the value above each bar. */
export function barChart(c: BarChart): string {
  const max = Math.max(0, ...c.series.flatMap((s) => s.values));
  const yTicks = ticks(max);
  const top = yTicks[yTicks.length - 1] ?? 1;
  const plotH = H - M.top - M.bottom;
  const y = (v: number) => Math.round((M.top + plotH * (1 - v / top)) * 10) / 10;
  const out = frame(c.title, c.xLabel, c.yLabel, yTicks, y);
  const groupW = (W - M.left - M.right) / Math.max(1, c.groups.length);
  const barW = Math.min(48, (groupW * 0.8) / Math.max(1, c.series.length));
  for (const [g, group] of c.groups.entries()) {
    const x0 = M.left + g * groupW + (groupW - barW * c.series.length) / 2;
    for (const [i, s] of c.series.entries()) {
      const v = s.values[g] ?? 0;
      const x = Math.round((x0 + i * barW) * 10) / 10;
      out.push(
        `<rect x="${x}" y="${y(v)}" width="${Math.round((barW - 2) * 10) / 10}" height="${Math.round((H - M.bottom - y(v)) * 10) / 10}" fill="${COLORS[i % COLORS.length]}"><title>${esc(`${s.name}, ${group}: ${label(v)}`)}</title></rect>`,
        `<text x="${x + (barW - 2) / 2}" y="${y(v) - 4}" text-anchor="middle" font-size="10" fill="#334155">${label(v)}</text>`,
      );
    }
    out.push(
      `<text x="${M.left + (g + 0.5) * groupW}" y="${H - M.bottom + 18}" text-anchor="middle" fill="#0f172a">${esc(group)}</text>`,
    );
  }
  out.push(...legend(c.series.map((s) => s.name)), "</svg>");
  return `${out.join("\n")}\n`;
}

export interface LineChart {
  readonly title: string;
  readonly xLabel: string;
  readonly yLabel: string;
  readonly series: ReadonlyArray<{ readonly name: string; readonly points: ReadonlyArray<readonly [number, number]> }>;
  /** Shaded spans of x, e.g. an outage. */
  readonly bands?: ReadonlyArray<{ readonly from: number; readonly to: number; readonly label: string }>;
}

/** Lines over a numeric x axis, with shaded bands behind them. */
export function lineChart(c: LineChart): string {
  const xs = c.series.flatMap((s) => s.points.map(([x]) => x));
  const xMax = Math.max(1, ...xs, ...(c.bands ?? []).map((b) => b.to));
  const yTicks = ticks(Math.max(0, ...c.series.flatMap((s) => s.points.map(([, v]) => v))));
  const top = yTicks[yTicks.length - 1] ?? 1;
  const plotH = H - M.top - M.bottom;
  const plotW = W - M.left - M.right;
  const x = (v: number) => Math.round((M.left + (plotW * v) / xMax) * 10) / 10;
  const y = (v: number) => Math.round((M.top + plotH * (1 - v / top)) * 10) / 10;
  const out = frame(c.title, c.xLabel, c.yLabel, yTicks, y);
  for (const b of c.bands ?? []) {
    out.push(
      `<rect x="${x(b.from)}" y="${M.top}" width="${x(b.to) - x(b.from)}" height="${plotH}" fill="#fee2e2"/>`,
      `<text x="${(x(b.from) + x(b.to)) / 2}" y="${M.top + 14}" text-anchor="middle" fill="#991b1b">${esc(b.label)}</text>`,
    );
  }
  for (const t of ticks(xMax)) {
    if (t > xMax) break;
    out.push(`<text x="${x(t)}" y="${H - M.bottom + 18}" text-anchor="middle" fill="#475569">${label(t)}</text>`);
  }
  for (const [i, s] of c.series.entries()) {
    const d = s.points.map(([px, py], k) => `${k ? "L" : "M"}${x(px)} ${y(py)}`).join(" ");
    out.push(`<path d="${d}" fill="none" stroke="${COLORS[i % COLORS.length]}" stroke-width="2"/>`);
  }
  out.push(...legend(c.series.map((s) => s.name)), "</svg>");
  return `${out.join("\n")}\n`;
}
