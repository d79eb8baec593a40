// The tools the benchmark compares, each behind the same four operations.
// Every operation resolves to the milliseconds it took; the caller checks the
// tree's state afterwards (untimed) so a tool that did not do the work fails
// the run instead of looking fast.
import { execFileSync, spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { createRequire } from 'node:module';
import pidtree from 'pidtree';
import { continueTree, freezeTree, getTreeState, snapshot, stopTree, thawTree, waitForState, type TreeState } from '../../src/index.ts';
import { nativeExecutable, packageRoot } from '../../src/native.ts';

const require = createRequire(import.meta.url);
const psTree = require('ps-tree') as (pid: number, cb: (err: Error | null, children: { PID: string; PPID: string; STAT: string }[]) => void) => void;
const treeKill = require('tree-kill') as (pid: number, signal: string, cb: (err?: Error) => void) => void;

export type Op = 'snapshot' | 'status' | 'stop' | 'cont' | 'freeze' | 'thaw' | 'kill';
/** freeze and thaw: treestate's only (the tree is a `run` tree, in a cgroup of its own). kill is timed once per tree, last (run.ts). */
export const OPS: Op[] = ['snapshot', 'status', 'stop', 'cont', 'freeze', 'thaw'];

export interface Tool {
  name: string;
  /** How it finds the tree, and how a stop or continue is verified. */
  how: string;
  /** Largest tree it is run on (tree-kill runs ps once per process). */
  maxProcesses?: number;
  /** A reference (node-start): it touches no tree, so the tree is neither prepared for it nor checked after it. */
  reference?: boolean;
  ops: Partial<Record<Op, (root: number) => Promise<number>>>;
}

const now = () => performance.now();

async function timed(fn: () => Promise<unknown>): Promise<number> {
  const t = now();
  await fn();
  return now() - t;
}

function run(file: string, args: string[]): Promise<{ code: number | null; out: string; err: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(file, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (err += d));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, out, err }));
  });
}

async function mustRun(file: string, args: string[], ok: (code: number | null) => boolean = (c) => c === 0): Promise<string> {
  const r = await run(file, args);
  if (!ok(r.code)) throw new Error(`${file} ${args.join(' ')} exited ${r.code}: ${r.err.trim()}`);
  return r.out;
}

/**
 * The python3 interpreter itself: a `python3` on PATH may be a version
 * manager's shim (pyenv's is a shell script that costs ~75 ms per start),
 * which would time the shim, not the script.
 */
function pythonInterpreter(): string {
  try {
    return execFileSync('python3', ['-c', 'import sys; print(sys.executable)'], { encoding: 'utf8' }).trim() || 'python3';
  } catch {
    return 'python3';
  }
}

/** Peers cannot verify: they all get the same check, treestate's own, polled every millisecond. */
function verify(root: number, state: TreeState): Promise<unknown> {
  return waitForState(root, state, { intervalMs: 1, timeoutMs: 10_000 });
}

function killEach(pids: number[], signal: NodeJS.Signals): void {
  for (const pid of pids) {
    try {
      process.kill(pid, signal);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ESRCH') throw e;
    }
  }
}

function pidtreeOf(root: number): Promise<number[]> {
  return pidtree(root, { root: true }) as Promise<number[]>;
}

function psTreeOf(root: number): Promise<{ PID: string; PPID: string; STAT: string }[]> {
  return new Promise((resolve, reject) => psTree(root, (err, children) => (err ? reject(err) : resolve(children))));
}

function treeKillOf(root: number, signal: string): Promise<void> {
  return new Promise((resolve, reject) => treeKill(root, signal, (err) => (err ? reject(err) : resolve())));
}

/** The session of a process (field 6 of its stat line). */
export function sessionOf(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[3]);
}

/** pkill may only ever target a session the benchmark created: the fixture root leads its own. */
function ownSession(root: number): number {
  const sid = sessionOf(root);
  if (sid !== root) throw new Error(`refusing pkill -s ${sid}: process ${root} does not lead its own session`);
  return sid;
}

export function tools(): Tool[] {
  const cFloor = nativeExecutable('treestate-c-floor');
  const cli = join(packageRoot(), 'bin', 'treestate.cjs');
  const floor = async (op: string, root: number, want?: string) => {
    const line = await mustRun(cFloor, [op, String(root)]);
    const r = JSON.parse(line) as { ms: number; state: string };
    if (want && r.state !== want) throw new Error(`c-floor ${op} ${root} ended ${r.state}, not ${want}`);
    return r.ms;
  };
  const node = process.execPath;
  const python = pythonInterpreter();
  const pyCont = join(packageRoot(), 'scripts', 'bench', 'pstree_cont.py');
  return [
    {
      name: 'c-floor',
      how: 'C, children files + kill(2); verifies itself by walking again (time measured inside the program, no exec)',
      ops: {
        snapshot: (root) => floor('snapshot', root),
        status: (root) => floor('status', root),
        stop: (root) => floor('stop', root, 'stopped'),
        cont: (root) => floor('cont', root, 'running'),
      },
    },
    {
      name: 'treestate-lib',
      how: 'library in this process; stopTree/continueTree verify themselves, freezeTree/thawTree wait for cgroup.events',
      ops: {
        snapshot: (root) => timed(() => snapshot(root)),
        status: (root) => timed(() => getTreeState(root)),
        stop: (root) => timed(() => stopTree(root)),
        cont: (root) => timed(() => continueTree(root)),
        freeze: (root) => timed(() => freezeTree(root)),
        thaw: (root) => timed(() => thawTree(root)),
      },
    },
    {
      name: 'treestate-cli',
      how: 'whole process: node bin/treestate.cjs tree|status|stop|cont|freeze|thaw PID --json; stop/cont/freeze/thaw verify themselves',
      ops: {
        snapshot: (root) => timed(() => mustRun(node, [cli, 'tree', String(root), '--json'])),
        status: (root) => timed(() => mustRun(node, [cli, 'status', String(root), '--json'], (c) => c !== null && c <= 1)),
        stop: (root) => timed(() => mustRun(node, [cli, 'stop', String(root), '--json'])),
        cont: (root) => timed(() => mustRun(node, [cli, 'cont', String(root), '--json'])),
        freeze: (root) => timed(() => mustRun(node, [cli, 'freeze', String(root), '--json'])),
        thaw: (root) => timed(() => mustRun(node, [cli, 'thaw', String(root), '--json'])),
      },
    },
    {
      name: 'c-floor-exec',
      how: 'the same C program timed as a whole process from here (exec and process start included), as a user runs a command',
      ops: {
        snapshot: (root) => timed(() => floor('snapshot', root)),
        status: (root) => timed(() => floor('status', root)),
        stop: (root) => timed(() => floor('stop', root, 'stopped')),
        cont: (root) => timed(() => floor('cont', root, 'running')),
      },
    },
    {
      name: 'node-start',
      reference: true,
      how: "node -e 0 as a whole process: Node's own start and exit, which every treestate command pays before and after its work (a reference, not a peer: it touches no tree). NODE_EXTRA_CA_CERTS makes Node read that file as it starts (see the report's machine)",
      ops: {
        snapshot: () => timed(() => mustRun(node, ['-e', '0'])),
        status: () => timed(() => mustRun(node, ['-e', '0'])),
        cont: () => timed(() => mustRun(node, ['-e', '0'])),
      },
    },
    {
      name: 'treestate-cli-settle0',
      how: 'whole process: node bin/treestate.cjs cont PID --settle 0 --json (a continue without the settle watch), verifies itself',
      ops: {
        cont: (root) => timed(() => mustRun(node, [cli, 'cont', String(root), '--settle', '0', '--json'])),
      },
    },
    {
      name: 'pstree_cont.py',
      how: "whole process: the seed's Python continuer run by the python3 interpreter itself (sys.executable, not a version manager's shim) (scripts/bench/pstree_cont.py: leader's children file only, SIGCONT children first, no verification); verified with treestate waitForState (1 ms poll), untimed",
      ops: {
        cont: async (root) => {
          const ms = await timed(() => mustRun(python, [pyCont, String(root)]));
          // Untimed: the seed's script claims nothing, so it is given no verification time.
          await verify(root, 'running');
          return ms;
        },
      },
    },
    {
      name: 'pidtree',
      how: 'pidtree (ps -A -o ppid,pid) + process.kill each pid; verified with treestate waitForState (1 ms poll)',
      ops: {
        snapshot: (root) => timed(() => pidtreeOf(root)),
        stop: (root) =>
          timed(async () => {
            killEach(await pidtreeOf(root), 'SIGSTOP');
            await verify(root, 'stopped');
          }),
        cont: (root) =>
          timed(async () => {
            killEach((await pidtreeOf(root)).reverse(), 'SIGCONT');
            await verify(root, 'running');
          }),
      },
    },
    {
      name: 'ps-tree',
      how: 'ps-tree (ps -A -o ppid,pid,stat,comm) + process.kill each pid; status from its STAT column; verified with treestate waitForState (1 ms poll)',
      ops: {
        snapshot: (root) => timed(() => psTreeOf(root)),
        status: (root) =>
          timed(async () => {
            const rows = await psTreeOf(root);
            // Process-level only: ps-tree has no thread states.
            return rows.every((r) => r.STAT.startsWith('T')) ? 'stopped' : rows.some((r) => r.STAT.startsWith('T')) ? 'mixed' : 'running';
          }),
        stop: (root) =>
          timed(async () => {
            const rows = await psTreeOf(root);
            killEach([root, ...rows.map((r) => Number(r.PID))], 'SIGSTOP');
            await verify(root, 'stopped');
          }),
        cont: (root) =>
          timed(async () => {
            const rows = await psTreeOf(root);
            killEach([...rows.map((r) => Number(r.PID)).reverse(), root], 'SIGCONT');
            await verify(root, 'running');
          }),
      },
    },
    {
      name: 'tree-kill',
      how: 'tree-kill (one ps --ppid per process) signals the tree; verified with treestate waitForState (1 ms poll)',
      maxProcesses: 200,
      ops: {
        stop: (root) =>
          timed(async () => {
            await treeKillOf(root, 'SIGSTOP');
            await verify(root, 'stopped');
          }),
        cont: (root) =>
          timed(async () => {
            await treeKillOf(root, 'SIGCONT');
            await verify(root, 'running');
          }),
      },
    },
    {
      name: 'pkill',
      how: 'procps pkill -STOP|-CONT -s SID (the fixture session only), pgrep -s SID for snapshot; verified with treestate waitForState (1 ms poll)',
      ops: {
        snapshot: (root) => {
          const sid = String(ownSession(root));
          return timed(() => mustRun('pgrep', ['-s', sid]));
        },
        stop: (root) => {
          const sid = String(ownSession(root));
          return timed(async () => {
            await mustRun('pkill', ['-STOP', '-s', sid]);
            await verify(root, 'stopped');
          });
        },
        cont: (root) => {
          const sid = String(ownSession(root));
          return timed(async () => {
            await mustRun('pkill', ['-CONT', '-s', sid]);
            await verify(root, 'running');
          });
        },
      },
    },
  ];
}
