// Draws the benchmark as an SVG: one panel per operation, time against tree
// size for each tool, both axes logarithmic. No charting dependency.
//
//   node --import tsx scripts/bench/chart.ts RESULTS.json [OUT.svg]   (default docs/bench.svg)
import { readFileSync, writeFileSync } from 'node:fs';
import { pathToFileURL } from 'node:url';
import type { BenchReport } from './run.ts';

const COLORS: Record<string, string> = {
  'c-floor': '#555555',
  'treestate-lib': '#d62728',
  'treestate-cli': '#ff9896',
  pidtree: '#1f77b4',
  'ps-tree': '#2ca02c',
  'tree-kill': '#9467bd',
  pkill: '#ff7f0e',
  'c-floor-exec': '#aaaaaa',
  'treestate-cli-settle0': '#e377c2',
  'pstree_cont.py': '#8c564b',
};

const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');

function ticks(lo: number, hi: number): number[] {
  const out: number[] = [];
  for (let e = Math.floor(Math.log10(lo)); e <= Math.ceil(Math.log10(hi)); e++) {
    for (const m of [1, 3]) {
      const v = m * 10 ** e;
      if (v >= lo * 0.999 && v <= hi * 1.001) out.push(v);
    }
  }
  return out;
}

const label = (v: number) => (v >= 1000 ? `${v / 1000}k` : v >= 1 ? String(v) : String(Number(v.toPrecision(2))));

export function drawChart(report: BenchReport): string {
  const ops = ['snapshot', 'status', 'stop', 'cont', 'freeze', 'thaw'].filter((op) => report.cases.some((c) => c.op === op));
  const tools = Object.keys(report.tools).filter((t) => report.cases.some((c) => c.tool === t));
  const W = 460;
  const H = 320;
  const pad = { l: 58, r: 16, t: 34, b: 44 };
  const cols = 2;
  const legendH = 56;
  const width = cols * W;
  const height = legendH + Math.ceil(ops.length / cols) * H + 40;
  const sizes = report.cases.map((c) => c.processes);
  const xLo = Math.min(...sizes) / 1.3;
  const xHi = Math.max(...sizes) * 1.3;
  const times = report.cases.map((c) => c.medianMs).filter((v): v is number => v !== null && v > 0);
  const yLo = 10 ** Math.floor(Math.log10(Math.min(...times)));
  const yHi = 10 ** Math.ceil(Math.log10(Math.max(...times)));
  const out: string[] = [];
  out.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="system-ui, sans-serif" font-size="12">`);
  out.push(`<rect width="100%" height="100%" fill="#ffffff"/>`);
  const m = report.machine;
  out.push(`<text x="${width / 2}" y="18" text-anchor="middle" font-size="14" font-weight="600">treestate bench: median time against tree size (${THREADS_OF(report)} threads per process)</text>`);
  out.push(`<text x="${width / 2}" y="34" text-anchor="middle" fill="#666">${esc(`${m.nproc} × ${m.cpu}, ${m.kernel}, Node ${m.node}; smallest tree measured with ≥1000 other processes on the host`)}</text>`);
  tools.forEach((t, i) => {
    const x = 20 + (i % 7) * (width - 40) / 7;
    const y = 50;
    out.push(`<line x1="${x}" y1="${y}" x2="${x + 22}" y2="${y}" stroke="${COLORS[t] ?? '#000'}" stroke-width="${t.startsWith('treestate-lib') ? 3 : 2}"/>`);
    out.push(`<text x="${x + 27}" y="${y + 4}">${esc(t)}</text>`);
  });
  ops.forEach((op, k) => {
    const ox = (k % cols) * W;
    const oy = legendH + Math.floor(k / cols) * H;
    const px = (v: number) => ox + pad.l + ((Math.log(v) - Math.log(xLo)) / (Math.log(xHi) - Math.log(xLo))) * (W - pad.l - pad.r);
    const py = (v: number) => oy + H - pad.b - ((Math.log(v) - Math.log(yLo)) / (Math.log(yHi) - Math.log(yLo))) * (H - pad.t - pad.b);
    out.push(`<text x="${ox + pad.l}" y="${oy + pad.t - 10}" font-weight="600">${op}</text>`);
    out.push(`<rect x="${ox + pad.l}" y="${oy + pad.t}" width="${W - pad.l - pad.r}" height="${H - pad.t - pad.b}" fill="none" stroke="#999"/>`);
    for (const v of ticks(yLo, yHi)) {
      out.push(`<line x1="${ox + pad.l}" x2="${ox + W - pad.r}" y1="${py(v)}" y2="${py(v)}" stroke="#eee"/>`);
      out.push(`<text x="${ox + pad.l - 6}" y="${py(v) + 4}" text-anchor="end" fill="#444">${label(v)}</text>`);
    }
    for (const v of [...new Set(sizes)].sort((a, b) => a - b)) {
      out.push(`<line y1="${oy + pad.t}" y2="${oy + H - pad.b}" x1="${px(v)}" x2="${px(v)}" stroke="#eee"/>`);
      out.push(`<text x="${px(v)}" y="${oy + H - pad.b + 16}" text-anchor="middle" fill="#444">${v}</text>`);
    }
    out.push(`<text x="${ox + pad.l + (W - pad.l - pad.r) / 2}" y="${oy + H - 8}" text-anchor="middle" fill="#444">processes in the tree</text>`);
    out.push(`<text transform="translate(${ox + 14} ${oy + pad.t + (H - pad.t - pad.b) / 2}) rotate(-90)" text-anchor="middle" fill="#444">ms (median)</text>`);
    for (const t of tools) {
      const pts = report.cases.filter((c): c is typeof c & { medianMs: number } => c.op === op && c.tool === t && c.medianMs !== null).sort((a, b) => a.processes - b.processes);
      if (pts.length === 0) continue;
      const color = COLORS[t] ?? '#000';
      const w = t === 'treestate-lib' ? 3 : 1.6;
      if (pts.length > 1) out.push(`<polyline fill="none" stroke="${color}" stroke-width="${w}" points="${pts.map((c) => `${px(c.processes).toFixed(1)},${py(c.medianMs).toFixed(1)}`).join(' ')}"/>`);
      for (const c of pts) {
        out.push(`<circle cx="${px(c.processes).toFixed(1)}" cy="${py(c.medianMs).toFixed(1)}" r="3" fill="${color}"><title>${esc(`${t} ${op} ${c.processes} processes: ${c.medianMs} ms`)}</title></circle>`);
      }
    }
  });
  out.push('</svg>');
  return out.join('\n') + '\n';
}

function THREADS_OF(report: BenchReport): number {
  return report.cases[0]?.threads ?? 0;
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const [input, output = 'docs/bench.svg'] = process.argv.slice(2);
  if (!input) {
    process.stderr.write('usage: node --import tsx scripts/bench/chart.ts RESULTS.json [OUT.svg]\n');
    process.exit(2);
  }
  writeFileSync(output, drawChart(JSON.parse(readFileSync(input, 'utf8')) as BenchReport));
  process.stderr.write(`wrote ${output}\n`);
}
