// npm run bench [-- --quick] [-- --json] [-- --runs N] [-- --save FILE] [-- --svg FILE]
//                [-- --only TOOL,TOOL] [-- --sizes 7,121,1093,3280]   (--only criu: the CRIU case alone)
//                [-- --only migrate [-- --shapes 6x3,1x1:1024] [-- --lazy]]   (migrate between two hosts of this machine: ./migrate.ts)
//                [-- --big]   (adds 11111 processes × 1 thread: fanout 10, depth 4; pid_max is often 32768)
//
// treestate beside its peers in one run: the same fixture trees, the same
// operations, every tool in turn (round-robin within each run, so load that
// comes and goes hits every tool alike). Medians of several runs after a
// warm-up, with ratios to c-floor, the cost floor (scripts/bench/c-floor.c).
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';
import { continueTree, getTreeState, killTree, stopTree, thawTree } from '../../src/index.ts';
import { packageRoot } from '../../src/native.ts';
import { spawnTree, type TreeFixture } from '../../src/testing/index.ts';
import { drawChart } from './chart.ts';
import { OPS, tools, type Op, type Tool } from './peers.ts';
import { criuTable, measureCriu, type CriuCase } from './criu.ts';
import { measureMigrate, migrateTable, type MigrateCase } from './migrate.ts';

interface Shape {
  label: string;
  depth: number;
  fanout: number;
  /** Threads per process (default THREADS). */
  threads?: number;
  /** An idle tree of this many processes runs beside it: cost must follow the tree, not the host. */
  background?: { depth: number; fanout: number };
}

export interface Case {
  op: Op;
  processes: number;
  threads: number;
  /** Other processes on the host while it ran (the busy-host case). */
  hostProcesses: number;
  busyHost: boolean;
  tool: string;
  /** null when the tool failed on this tree (see `error`). */
  medianMs: number | null;
  minMs: number | null;
  maxMs: number | null;
  runs: number;
  error?: string;
}

export interface BenchReport {
  machine: Record<string, string | number>;
  settings: Record<string, string | number | boolean>;
  tools: Record<string, string>;
  cases: Case[];
  /** treestate's dump and restore beside plain criu (`--only criu`, or every run as root). */
  criu?: CriuCase[];
  /** `treestate migrate` between the two hosts of scripts/testhosts.sh (`--only migrate`). */
  migrate?: MigrateCase[];
}

const args = process.argv.slice(2);
const flag = (name: string) => args.includes(name);
const value = (name: string) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
};
const quick = flag('--quick');
const big = flag('--big');
const json = flag('--json');
const runs = Number(value('--runs') ?? (quick ? 3 : 5));
const warmup = 1;
const only = value('--only')?.split(',');
const THREADS = 3;
const HEARTBEAT_MS = 250;

const sizes = value('--sizes')?.split(',');
const allShapes: Shape[] = quick
  ? [
      { label: '7 (busy host)', depth: 1, fanout: 6, background: { depth: 6, fanout: 3 } },
      { label: '121', depth: 4, fanout: 3 },
    ]
  : [
      { label: '7 (busy host)', depth: 1, fanout: 6, background: { depth: 6, fanout: 3 } },
      { label: '121', depth: 4, fanout: 3 },
      { label: '1093', depth: 6, fanout: 3 },
      { label: '3280', depth: 7, fanout: 3 },
    ];
// 10,000 processes and more, one thread each: what grows with the tree shows here.
if (big) allShapes.push({ label: '11111', depth: 4, fanout: 10, threads: 1 });
const shapes = sizes ? allShapes.filter((s) => sizes.includes(s.label.split(' ')[0]!)) : allShapes;

// Progress goes to stderr, so --json leaves stdout one JSON document.
const log = (s: string) => process.stderr.write(s + '\n');

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

function hostProcesses(): number {
  return execFileSync('ls', ['/proc']).toString().split('\n').filter((n) => /^\d+$/.test(n)).length;
}

function machine(): Record<string, string | number> {
  const cpu = readFileSync('/proc/cpuinfo', 'utf8').match(/^model name\s*:\s*(.*)$/m)?.[1] ?? os.cpus()[0]?.model ?? 'unknown';
  return {
    nproc: Number(execFileSync('nproc').toString().trim()),
    cpu,
    kernel: `${os.type()} ${os.release()}`,
    node: process.version,
    memoryGb: Math.round(os.totalmem() / 2 ** 30),
    loadAvgAtStart: os.loadavg().map((l) => l.toFixed(2)).join(' '),
    hostProcessesAtStart: hostProcesses(),
    // Node 20 reads and parses this file as it starts (~35 ms on the 2-core VM for Debian's bundle): every Node command pays it.
    nodeExtraCaCerts: process.env.NODE_EXTRA_CA_CERTS ? `set (${process.env.NODE_EXTRA_CA_CERTS})` : 'unset',
    date: new Date().toISOString(),
  };
}

async function timedKill(root: number): Promise<number> {
  const t = performance.now();
  // killTree proves its result (every process gone or a zombie); the run tree's root is reaped at once.
  const result = await killTree(root, { timeoutMs: 120_000 });
  const ms = performance.now() - t;
  if (result.state !== 'dead') throw new Error(`treestate-lib kill: the tree is ${result.state}, expected dead`);
  return ms;
}

/** The state every tool must leave the tree in, checked after each timed call (untimed). */
function pause(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Time for a tree that was just continued (every thread runnable at once) to calm down before the next timed call. */
const settleMs = (processes: number) => 20 + Math.round(processes / 20);

const after: Partial<Record<Op, 'stopped' | 'frozen'>> = { stop: 'stopped', freeze: 'frozen' };

async function expect(root: number, state: 'running' | 'stopped' | 'frozen', who: string): Promise<void> {
  const s = await getTreeState(root);
  if (s.state !== state) throw new Error(`${who}: the tree is ${s.state}, expected ${state}`);
}

async function measureShape(shape: Shape, all: Tool[]): Promise<Case[]> {
  let background: TreeFixture | undefined;
  let tree: TreeFixture | undefined;
  try {
    if (shape.background) {
      log(`  starting an idle background tree (depth ${shape.background.depth}, fanout ${shape.background.fanout})`);
      background = await spawnTree({ ...shape.background, threads: 1, intervalMs: 1000, readyTimeoutMs: 120_000 });
    }
    // A run tree (a cgroup of its own), so that freeze and thaw can be measured beside stop and cont.
    const threads = shape.threads ?? THREADS;
    tree = await spawnTree({ depth: shape.depth, fanout: shape.fanout, threads, intervalMs: HEARTBEAT_MS, readyTimeoutMs: 300_000, cgroup: true });
    const root = tree.root;
    const processes = tree.size;
    const host = hostProcesses();
    log(`tree of ${processes} processes x ${threads} threads (root ${root}), ${host} processes on the host`);
    const used = all.filter((t) => (t.maxProcesses ?? Infinity) >= processes);
    const samples = new Map<string, number[]>();
    // A tool that fails (does not reach the state, throws) is reported and not run again on this tree.
    const failed = new Map<string, { op: Op; error: string }>();
    for (let r = 0; r < warmup + runs; r++) {
      // Round-robin, starting from a different tool each run.
      for (let k = 0; k < used.length; k++) {
        const tool = used[(k + r) % used.length]!;
        if (failed.has(tool.name)) continue;
        for (const op of OPS) {
          const fn = tool.ops[op];
          if (!fn) continue;
          let ms: number;
          try {
            // A tool that continues but cannot stop (the seed's script, the
            // CLI's --settle 0 case) gets the tree stopped by the library,
            // untimed: a continue of a running tree wakes nothing.
            if (op === 'cont' && !tool.ops.stop && !tool.reference) {
              await stopTree(root, { timeoutMs: 60_000 });
              await pause(settleMs(processes));
            }
            ms = await fn(root);
            if (!tool.reference) await expect(root, after[op] ?? 'running', `${tool.name} ${op}`);
          } catch (e) {
            const error = (e instanceof Error ? e.message : String(e)).slice(0, 300);
            failed.set(tool.name, { op, error });
            log(`  ${tool.name} ${op} FAILED: ${error}`);
            // Leave the tree running for the next tool.
            if ((await getTreeState(root)).state === 'frozen') await thawTree(root);
            await continueTree(root);
            await pause(settleMs(processes));
            break;
          }
          await pause(settleMs(processes));
          if (r >= warmup) {
            const key = `${tool.name}\0${op}`;
            samples.set(key, [...(samples.get(key) ?? []), ms]);
          }
        }
      }
      log(`  run ${r + 1}/${warmup + runs}${r < warmup ? ' (warm-up)' : ''} done`);
    }
    const cases: Case[] = [];
    for (const tool of used) {
      const failure = failed.get(tool.name);
      for (const op of OPS) {
        if (failure?.op === op) {
          cases.push({ op, processes, threads, hostProcesses: host, busyHost: !!shape.background, tool: tool.name, medianMs: null, minMs: null, maxMs: null, runs: 0, error: failure.error });
          continue;
        }
        // A failed tool's other operations are not reported: the runs stopped early.
        const xs = failure ? undefined : samples.get(`${tool.name}\0${op}`);
        if (!xs) continue;
        cases.push({
          op,
          processes,
          threads,
          hostProcesses: host,
          busyHost: !!shape.background,
          tool: tool.name,
          medianMs: Math.round(median(xs) * 1000) / 1000,
          minMs: Math.round(Math.min(...xs) * 1000) / 1000,
          maxMs: Math.round(Math.max(...xs) * 1000) / 1000,
          runs: xs.length,
        });
      }
    }
    // Kill ends the tree, so it is timed once, last, with the library (the
    // tree is stopped first, as a kill of a stopped tree is the case that reads before it signals).
    if (used.some((t) => t.name === 'treestate-lib')) {
      await stopTree(root, { timeoutMs: 60_000 });
      const ms = await timedKill(root);
      cases.push({ op: 'kill', processes, threads, hostProcesses: host, busyHost: !!shape.background, tool: 'treestate-lib', medianMs: ms, minMs: ms, maxMs: ms, runs: 1 });
    }
    return cases;
  } finally {
    await tree?.dispose();
    await background?.dispose();
  }
}

function fmt(ms: number): string {
  return ms >= 100 ? ms.toFixed(0) : ms >= 10 ? ms.toFixed(1) : ms.toFixed(2);
}

export function table(report: BenchReport): string {
  const toolNames = Object.keys(report.tools);
  const lines: string[] = [];
  for (const op of [...OPS, 'kill' as const]) {
    const cases = report.cases.filter((c) => c.op === op);
    if (cases.length === 0) continue;
    const names = toolNames.filter((t) => cases.some((c) => c.tool === t));
    lines.push(`### ${op}`, '', `| processes | ${names.join(' | ')} |`, `|---:|${names.map(() => '---:').join('|')}|`);
    const sizes = [...new Set(cases.map((c) => `${c.processes}${c.busyHost ? ' busy' : ''}`))];
    for (const size of sizes) {
      const row = cases.filter((c) => `${c.processes}${c.busyHost ? ' busy' : ''}` === size);
      const floor = row.find((c) => c.tool === 'c-floor')?.medianMs ?? undefined;
      const threads = row[0]!.threads === THREADS ? '' : ` (${row[0]!.threads} thread${row[0]!.threads === 1 ? '' : 's'} each)`;
      const label = row[0]!.busyHost ? `${row[0]!.processes} (host: ${row[0]!.hostProcesses})` : `${row[0]!.processes}${threads}`;
      const cells = names.map((t) => {
        const c = row.find((x) => x.tool === t);
        if (!c) return 'n/a';
        if (c.medianMs === null) return 'FAILED';
        return t === 'c-floor' || !floor ? `${fmt(c.medianMs)} ms` : `${fmt(c.medianMs)} ms (${(c.medianMs / floor).toFixed(2)}×)`;
      });
      lines.push(`| ${label} | ${cells.join(' | ')} |`);
    }
    lines.push('');
  }
  return lines.join('\n');
}

async function main(): Promise<void> {
  if (!existsSync(join(packageRoot(), 'dist', 'cli.cjs'))) {
    throw new Error('dist/ is missing: run `npx tsup` first (treestate-cli runs bin/treestate.cjs)');
  }
  // --only migrate needs none of the peers (nor the bench build of c-floor).
  let all = only?.every((o) => o === 'migrate') ? [] : tools();
  if (only) all = all.filter((t) => only.includes(t.name));
  const report: BenchReport = {
    machine: machine(),
    settings: { quick, big, runs, warmup, threadsPerProcess: THREADS, heartbeatMs: HEARTBEAT_MS, settle: 'after every call: an untimed state check, then 20 ms + 1 ms per 20 processes' },
    tools: Object.fromEntries(all.map((t) => [t.name, t.how])),
    cases: [],
  };
  log(`treestate bench: ${runs} runs after ${warmup} warm-up, ${all.map((t) => t.name).join(', ')}`);
  if (process.env.NODE_EXTRA_CA_CERTS) log('  NODE_EXTRA_CA_CERTS is set: every Node process (the CLI cases, node-start) reads and parses that file as it starts; unset it to time Node as a user without it runs it');
  const withCriu = process.geteuid?.() === 0 && (!only || only.includes('criu'));
  // Migration is timed only when asked for: it brings up two sshd and a network namespace.
  if (only?.includes('migrate')) {
    const shapes = (value('--shapes') ?? '6x3,1x1:1024').split(',').map((s) => {
      const [shape, mb] = s.split(':');
      const [depth, fanout] = shape!.split('x').map(Number);
      return { depth: depth!, fanout: fanout!, memoryMb: Number(mb ?? 0) };
    });
    report.migrate = await measureMigrate(shapes, flag('--lazy'));
  }
  if (!only || all.length) for (const shape of shapes) report.cases.push(...(await measureShape(shape, all)));
  if (withCriu) report.criu = await measureCriu(runs, warmup, log);
  const save = value('--save');
  if (save) writeFileSync(save, JSON.stringify(report, null, 2) + '\n');
  const svg = value('--svg');
  if (svg) writeFileSync(svg, drawChart(report));
  if (json) {
    process.stdout.write(JSON.stringify(report, null, 2) + '\n');
  } else {
    const m = report.machine;
    process.stdout.write(`\nmachine: ${m.nproc} × ${m.cpu}, ${m.kernel}, Node ${m.node}, load at start ${m.loadAvgAtStart}, NODE_EXTRA_CA_CERTS ${m.nodeExtraCaCerts}\n`);
    if (report.cases.length) {
      process.stdout.write(`medians of ${runs} runs after ${warmup} warm-up; ratio to c-floor in brackets\n\n`);
      process.stdout.write(table(report) + '\n');
    }
    if (report.criu) process.stdout.write(criuTable(report.criu) + '\n');
    if (report.migrate) process.stdout.write(migrateTable(report.migrate) + '\n');
    for (const [name, how] of Object.entries(report.tools)) process.stdout.write(`  ${name}: ${how}\n`);
  }
}

main().catch((e) => {
  process.stderr.write(`bench failed: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
  process.exitCode = 1;
});
