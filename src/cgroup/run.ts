// `run`: start a program as a tree that owns a cgroup v2 of its own, under
// treestate-run (native/tools/run.cc), a child subreaper that keeps the
// tree's orphans, kills what is left when the root exits and removes the
// cgroup once it is empty. Such a tree can be frozen atomically and killed
// whole, double-forked processes included (src/cgroup/tree.ts).
import { spawn, type ChildProcess } from 'node:child_process';
import { openSync, closeSync, mkdirSync, rmdirSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { getSystemErrorName } from 'node:util';
import { TreeStateError, hasCode } from '../errors.js';
import { nativeExecutable } from '../native.js';
import { ensureRunDir, requireHierarchy } from './hierarchy.js';

export interface RunOptions {
  /** The cgroup's name under `<cgroup2 mount>/treestate/` (default `run-PID-N`): letters, digits, `.`, `_`, `-`. */
  name?: string;
  /**
   * Leave the tree running on its own: the program gets a session of its
   * own and stdin/stdout/stderr on /dev/null (or `out`), and `run` resolves
   * once it has started. Otherwise the program shares our terminal (stdio
   * inherited) and `exited` says how it ended.
   */
  detach?: boolean;
  /** File for the program's stdout and stderr (appended to). */
  out?: string;
  /** In the foreground: 'ignore' puts stdin, and stdout/stderr unless `out`, on /dev/null (default 'inherit'). */
  stdio?: 'inherit' | 'ignore';
  /** The program's own session even in the foreground (what CRIU wants of a tree it dumps without --shell-job). */
  setsid?: boolean;
}

export interface RunExit {
  /** The root's exit code, or null when a signal killed it. */
  code: number | null;
  signal: number | null;
  /** What a shell reports: the code, or 128 + the signal. */
  status: number;
}

export interface RunTree {
  /** The program's pid: the root of the tree. */
  root: number;
  /** The tree's cgroup (absolute path in the cgroup2 mount). */
  cgroup: string;
}

export interface ForegroundRun extends RunTree {
  /** The pid of treestate-run, the tree's subreaper parent. */
  helper: number;
  /** Resolves when the root has exited, the rest of its cgroup is dead and the cgroup is removed. */
  exited: Promise<RunExit>;
  /** Sends a signal to the root (through its parent, so a reaped pid is never signalled). */
  signal(signal: NodeJS.Signals): void;
}

let serial = 0;

function cgroupName(name: string | undefined): string {
  if (name === undefined) return `run-${process.pid}-${++serial}-${Date.now().toString(36)}`;
  if (!/^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}$/.test(name)) {
    throw new TreeStateError('EINVAL', `not a cgroup name for run: ${JSON.stringify(name.slice(0, 70))} (1 to 64 letters, digits, '.', '_' or '-', not starting with '.')`);
  }
  return name;
}

function startError(file: string, stage: string, errno: number, cgroup: string): TreeStateError {
  const name = getSystemErrorName(-errno);
  if (stage === 'cgroup') return new TreeStateError('ECGROUP', `cannot move the program into ${cgroup} (${name})`, { errno: -errno });
  return new TreeStateError('ESPAWN', `cannot start ${file} (${name})`, { errno: -errno, syscall: 'execve' });
}

export function run(file: string, args: string[], options: RunOptions & { detach: true }): Promise<RunTree>;
export function run(file: string, args?: string[], options?: RunOptions & { detach?: false }): Promise<ForegroundRun>;
export function run(file: string, args?: string[], options?: RunOptions): Promise<RunTree | ForegroundRun>;
/** Starts `file` in a new cgroup of its own; see RunOptions for the foreground and detached forms. */
export async function run(file: string, args: string[] = [], options: RunOptions = {}): Promise<RunTree | ForegroundRun> {
  const name = cgroupName(options.name);
  const hierarchy = requireHierarchy();
  const cgroup = join(ensureRunDir(hierarchy), name);
  try {
    mkdirSync(cgroup);
  } catch (e) {
    if (hasCode(e, 'EEXIST')) throw new TreeStateError('ECGROUP', `${cgroup} already exists: another run tree has the name ${JSON.stringify(name)}`, { cause: e });
    if (hasCode(e, 'EACCES', 'EPERM', 'EROFS')) throw new TreeStateError('ECGROUP', `cannot create ${cgroup}: the cgroup v2 hierarchy is not writable here (${(e as NodeJS.ErrnoException).code}); run needs root or a delegated hierarchy`, { cause: e });
    throw new TreeStateError('ECGROUP', `cannot create ${cgroup}: ${(e as Error).message}`, { cause: e });
  }
  const detach = options.detach === true;
  const quiet = detach || options.stdio === 'ignore';
  let out: number | 'ignore' | 'inherit' = quiet ? 'ignore' : 'inherit';
  let child: ChildProcess;
  try {
    if (options.out) out = openSync(options.out, 'a', 0o644);
    const flags = ['--cgroup', cgroup, '--report-fd', '3', ...(detach || options.setsid ? ['--setsid'] : []), ...(detach ? ['--detached'] : [])];
    child = spawn(nativeExecutable('treestate-run'), [...flags, '--', file, ...args], {
      stdio: [quiet ? 'ignore' : 'inherit', out, out, 'pipe'],
      detached: detach,
    });
  } catch (e) {
    rmdirSync(cgroup);
    throw e;
  } finally {
    if (typeof out === 'number') closeSync(out);
  }
  const lines = createInterface({ input: child.stdio[3] as NodeJS.ReadableStream })[Symbol.asyncIterator]();
  const exit = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const first = await lines.next();
  const started = /^pid (\d+)$/.exec(first.done ? '' : first.value);
  if (!started) {
    await exit;
    try {
      rmdirSync(cgroup);
    } catch {
      // the helper removed it
    }
    const failed = /^error (\w+) (\d+)$/.exec(first.done ? '' : first.value);
    if (failed) throw startError(file, failed[1]!, Number(failed[2]), cgroup);
    throw new TreeStateError('ESPAWN', `cannot start ${file}: treestate-run exited without starting it`);
  }
  const root = Number(started[1]);
  if (detach) {
    (child.stdio[3] as NodeJS.ReadableStream & { destroy(): void }).destroy();
    child.unref();
    return { root, cgroup };
  }
  const exited = (async () => {
    let report: RunExit | undefined;
    for (;;) {
      const next = await lines.next();
      if (next.done) break;
      const m = /^exit (-?\d+) (\d+)$/.exec(next.value);
      if (m) {
        const code = Number(m[1]) >= 0 ? Number(m[1]) : null;
        const signal = Number(m[2]) > 0 ? Number(m[2]) : null;
        report = { code, signal, status: code ?? 128 + signal! };
      }
    }
    const status = await exit;
    return report ?? { code: status, signal: null, status: status ?? 1 };
  })();
  return {
    root,
    cgroup,
    helper: child.pid!,
    exited,
    signal: (signal) => {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
    },
  };
}
