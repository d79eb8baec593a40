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
import type { CommandExit, CommandRunner } from '../criu/runner.js';
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

interface HelperOptions extends RunOptions {
  /** See treestate-run's --adopt-pidfile: the program (criu restore) brings the tree, whose root it writes here. */
  adoptPidfile?: string;
}

interface Helper {
  cgroup: string;
  child: ChildProcess;
  /** The program's pid. */
  pid: number;
  /** Report lines after the first ("program-exit …", "adopted …", "exit …"); ends when the helper closes its end. */
  lines: AsyncIterator<string>;
  /** The helper's own exit code. */
  exit: Promise<number | null>;
}

/** Makes the run cgroup and starts treestate-run in it; resolves once the program has exec'd. */
async function startHelper(file: string, args: string[], options: HelperOptions): Promise<Helper> {
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
    const flags = [
      '--cgroup',
      cgroup,
      '--report-fd',
      '3',
      ...(detach || options.setsid ? ['--setsid'] : []),
      ...(detach ? ['--detached'] : []),
      ...(options.adoptPidfile ? ['--adopt-pidfile', options.adoptPidfile] : []),
    ];
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
  return { cgroup, child, pid: Number(started[1]), lines, exit };
}

/** "exit CODE SIGNAL" and "program-exit CODE SIGNAL" as a RunExit. */
function exitOf(code: string, signal: string): RunExit {
  const c = Number(code) >= 0 ? Number(code) : null;
  const s = Number(signal) > 0 ? Number(signal) : null;
  return { code: c, signal: s, status: c ?? 128 + s! };
}

/** Lets the helper go on alone: it no longer holds our event loop, nor we its report pipe. */
function release(helper: Helper): void {
  (helper.child.stdio[3] as NodeJS.ReadableStream & { destroy(): void }).destroy();
  helper.child.unref();
}

export function run(file: string, args: string[], options: RunOptions & { detach: true }): Promise<RunTree>;
export function run(file: string, args?: string[], options?: RunOptions & { detach?: false }): Promise<ForegroundRun>;
export function run(file: string, args?: string[], options?: RunOptions): Promise<RunTree | ForegroundRun>;
/** Starts `file` in a new cgroup of its own; see RunOptions for the foreground and detached forms. */
export async function run(file: string, args: string[] = [], options: RunOptions = {}): Promise<RunTree | ForegroundRun> {
  const helper = await startHelper(file, args, options);
  const { cgroup, child, pid: root } = helper;
  if (options.detach) {
    release(helper);
    return { root, cgroup };
  }
  const exited = (async () => {
    let report: RunExit | undefined;
    for (;;) {
      const next = await helper.lines.next();
      if (next.done) break;
      const m = /^exit (-?\d+) (\d+)$/.exec(next.value);
      if (m) report = exitOf(m[1]!, m[2]!);
    }
    const status = await helper.exit;
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

/**
 * A CommandRunner (src/criu/runner.ts) for `criu restore --restore-detached
 * --pidfile FILE`: criu runs in a new run cgroup, so every process it
 * restores is born there, and the restored root, orphaned when criu exits,
 * comes to treestate-run, which keeps it as a `run` tree's root (lifetime,
 * cleanup) from then on. `exited` is criu's end.
 */
export function cgroupRestoreRunner(pidFile: string, options: { name?: string } = {}): CommandRunner & { cgroup?: string } {
  const runner: CommandRunner & { cgroup?: string } = {
    async run(file, args, { out }) {
      const helper = await startHelper(file, args, { name: options.name, detach: true, out, adoptPidfile: pidFile });
      runner.cgroup = helper.cgroup;
      const exited = (async (): Promise<CommandExit> => {
        for (;;) {
          const next = await helper.lines.next();
          if (next.done) break;
          const m = /^program-exit (-?\d+) (\d+)$/.exec(next.value);
          if (m) {
            const e = exitOf(m[1]!, m[2]!);
            // Wait for the adoption line (or the end) before letting go.
            if (e.code === 0) await helper.lines.next();
            release(helper);
            return { code: e.code, signal: e.signal };
          }
        }
        return { code: await helper.exit, signal: null };
      })();
      return { pid: helper.pid, exited };
    },
  };
  return runner;
}
