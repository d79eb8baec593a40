// Restoring into a new pid namespace (CRIU's criu-ns, built in): criu runs
// under treestate-reaper --pid-ns, pid 1 of a fresh pid namespace with its
// own /proc, so the images' pids are free there whatever runs on the host.
// The reaper stays as that namespace's init, the restored root's parent:
// when the tree is gone it exits, and the kernel tears the namespace down.
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { TreeStateError } from '../errors.js';
import { nativeExecutable } from '../native.js';
import { withUmask, type CommandExit, type CommandRunner, type RunOptions, type RunningCommand } from './runner.js';

/** Where a tree restored into its own pid namespace lives. */
export interface PidNamespaceInfo {
  /** The restored root's pid inside the namespace: its pid at dump time. */
  pid: number;
  /** Host pid of the namespace's init (treestate-reaper), the restored root's parent. */
  init: number;
}

/** The pid of `pid` inside its own (innermost) pid namespace (/proc/PID/status NSpid). */
export function innermostPid(pid: number): number {
  const line = /^NSpid:\s*(.*)$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? '';
  return Number(line.trim().split(/\s+/).at(-1));
}

function childrenOf(pid: number): number[] {
  const text = readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim();
  return text ? text.split(' ').map(Number) : [];
}

/** Runs one criu restore as the first program of a new pid namespace's init. */
export class PidNamespaceRunner implements CommandRunner {
  private child?: ChildProcess;
  private initPid = 0;

  /** `network`: a network namespace of its own too, with only its loopback (up). */
  constructor(private readonly network = false) {}

  async run(file: string, args: string[], { out, umask }: RunOptions): Promise<RunningCommand> {
    if (this.child) throw new TreeStateError('EINVAL', 'a PidNamespaceRunner runs one program');
    // The reaper, and so criu, take the umask: the reaper opens `out` O_NOFOLLOW.
    const child = withUmask(umask, () => spawn(nativeExecutable('treestate-reaper'), ['--pid-ns', ...(this.network ? ['--net-ns'] : []), '--setsid', '--out', out, '--', file, ...args], {
      // Not even stderr is shared: the init outlives this process, and would
      // hold a caller's pipe open (a shell's $(…) would never end).
      stdio: ['pipe', 'pipe', 'ignore'],
    }));
    this.child = child;
    // The init may be gone (killed on a timeout) before we tell it anything.
    child.stdin!.on('error', () => {});
    const lines = createInterface({ input: child.stdout! })[Symbol.asyncIterator]();
    const next = async () => {
      const line = await lines.next();
      return line.done ? '' : line.value;
    };
    const first = await next();
    const init = /^init (\d+)$/.exec(first);
    const started = init ? await next() : first;
    const pid = /^pid (\d+)$/.exec(started);
    if (!init || !pid) {
      child.stdin!.end();
      throw new TreeStateError('ESPAWN', `cannot start ${file} in a new pid namespace: ${(started || first).replace(/^error \d+ /, '') || 'the reaper exited'}`);
    }
    this.initPid = Number(init[1]);
    const exited = (async (): Promise<CommandExit> => {
      for (;;) {
        const line = await next();
        const exit = /^exit \d+ (-?\d+) (\d+)$/.exec(line);
        if (exit) return { code: Number(exit[1]) >= 0 ? Number(exit[1]) : null, signal: Number(exit[2]) > 0 ? Number(exit[2]) : null };
        if (line === '') return { code: null, signal: 'SIGKILL' };
      }
    })();
    // Killing the init on a timeout kills criu and all it restored.
    return { pid: this.initPid, exited };
  }

  /** The host pid and namespace pid of the restored root, whose namespace pid criu wrote. */
  locate(nsPid: number): PidNamespaceInfo & { host: number } {
    const host = childrenOf(this.initPid).find((p) => innermostPid(p) === nsPid);
    if (!host) throw new TreeStateError('ECRIU', `criu restored pid ${nsPid} in the new pid namespace, but the namespace's init (${this.initPid}) has no such child`);
    return { host, pid: nsPid, init: this.initPid };
  }

  /** Leaves the restored tree to run on with its init, or kills the namespace (after a failure). */
  async finish(keep: boolean): Promise<void> {
    const child = this.child;
    if (!child) return;
    const done = new Promise((resolve) => (child.exitCode !== null || child.signalCode !== null ? resolve(null) : child.once('exit', resolve)));
    child.stdin!.end(keep ? 'detach\n' : 'kill\n');
    if (!keep) {
      await done;
      return;
    }
    // The host-side parent waits for the init for as long as the tree lives:
    // this process need not.
    child.unref();
    (child.stdout as { unref?: () => void } | null)?.unref?.();
  }
}
