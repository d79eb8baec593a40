// A program run under treestate-reaper: a child subreaper that reaps every
// orphan and killed process of the tree at once, so nothing lingers as a
// zombie of pid 1 and a CRIU restore right after a kill finds its pids free.
import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { closeSync } from 'node:fs';
import type { CommandExit, CommandRunner, RunOptions, RunningCommand } from '../criu/runner.js';
import { TreeStateError } from '../errors.js';
import { native, nativeExecutable } from '../native.js';

export interface SuperviseOptions {
  /**
   * The program's session. true (default): a session of its own, what CRIU
   * wants of a tree it dumps without --shell-job. 'reaper': the reaper's
   * session, led from outside the tree whatever the caller's session is (a
   * tree started from a shell, as CRIU sees it). false: the caller's session.
   */
  setsid?: boolean | 'reaper';
  /** Start it stopped right after its execve (ptrace TRACEME, exec, detach with SIGSTOP). */
  stopped?: boolean;
  /** File for the program's stdout and stderr (default /dev/null). */
  out?: string;
}

const live = new Set<Supervisor>();

/** Supervisors started and not yet disposed: what a test left behind. */
export function liveSupervisors(): Supervisor[] {
  return [...live];
}

export class Supervisor implements CommandRunner {
  /** The program's pid: the root of the supervised tree. */
  readonly root: number;
  /** The reaper's own pid. */
  readonly pid: number;
  readonly command: string[];
  private readonly exits = new Map<number, CommandExit>();
  // Every waiter of a pid is told: a second exited() must not replace the first.
  private readonly waiters = new Map<number, Array<(exit: CommandExit) => void>>();
  private readonly spawns = new Map<string, { resolve: (pid: number) => void; reject: (e: Error) => void }>();
  private nextId = 1;
  private readonly done: Promise<void>;

  private constructor(
    private readonly child: ChildProcess,
    /** Our end of the socket that carries descriptors to the reaper for `run` (its --fds-from). */
    private readonly fdChannel: number,
    root: number,
    lines: AsyncIterator<string>,
    command: string[],
  ) {
    this.root = root;
    this.pid = child.pid!;
    this.command = command;
    live.add(this);
    this.done = (async () => {
      for (;;) {
        const next = await lines.next();
        if (next.done) break;
        this.onLine(next.value);
      }
    })();
  }

  static async start(file: string, args: string[] = [], options: SuperviseOptions = {}): Promise<Supervisor> {
    const session = options.setsid === 'reaper' ? ['--lead-session'] : options.setsid === false ? [] : ['--setsid'];
    const flags = [...session, ...(options.stopped ? ['--stopped'] : []), ...(options.out ? ['--out', options.out] : []), '--fds-from', '3'];
    const [fdChannel, reaperEnd] = native().seqpacketPair();
    let child: ChildProcess;
    try {
      child = spawn(nativeExecutable('treestate-reaper'), [...flags, '--', file, ...args], { stdio: ['pipe', 'pipe', 'inherit', reaperEnd] });
    } finally {
      closeSync(reaperEnd);
    }
    const lines = createInterface({ input: child.stdout! })[Symbol.asyncIterator]();
    const first = await lines.next();
    const match = /^pid (\d+)$/.exec(first.done ? '' : first.value);
    if (!match) {
      closeSync(fdChannel);
      child.stdin!.end();
      await new Promise((resolve) => (child.exitCode === null ? child.once('exit', resolve) : resolve(null)));
      const why = first.done ? 'the reaper exited' : first.value.replace(/^error \d+ /, '');
      throw new TreeStateError('ESPAWN', `cannot start ${file}: ${why}`);
    }
    return new Supervisor(child, fdChannel, Number(match[1]), lines, [file, ...args]);
  }

  private onLine(line: string): void {
    const [kind, a, b, c] = line.split(' ');
    if (kind === 'exit') {
      const exit: CommandExit = { code: Number(b) >= 0 ? Number(b) : null, signal: Number(c) > 0 ? Number(c) : null };
      this.exits.set(Number(a), exit);
      for (const wake of this.waiters.get(Number(a)) ?? []) wake(exit);
      this.waiters.delete(Number(a));
    } else if (kind === 'spawned') {
      this.spawns.get(a!)?.resolve(Number(b));
    } else if (kind === 'spawn-failed') {
      this.spawns.get(a!)?.reject(new TreeStateError('ESPAWN', `cannot start a program under the reaper (errno ${b})`, { errno: -Number(b) }));
    }
  }

  /** Resolves when a program this reaper started exits. */
  exited(pid: number): Promise<CommandExit> {
    const known = this.exits.get(pid);
    if (known) return Promise.resolve(known);
    return new Promise((resolve) => this.waiters.set(pid, [...(this.waiters.get(pid) ?? []), resolve]));
  }

  /**
   * Runs another program as a child of the reaper (criu, so that a tree it
   * restores lands here when it exits); `fds` become its fds 3, 4, ….
   */
  async run(file: string, args: string[], options: RunOptions): Promise<RunningCommand> {
    if (args.some((a) => a.includes('\n')) || /\s/.test(options.out)) {
      throw new TreeStateError('EINVAL', 'arguments run under the reaper cannot hold newlines, nor the output path white space');
    }
    const id = String(this.nextId++);
    const fds = options.fds ?? [];
    // The descriptors go first: the reaper reads them when the command line arrives.
    if (fds.length) await native().sendMessage(this.fdChannel, Buffer.from(id), fds);
    let pid: number;
    try {
      pid = await new Promise<number>((resolve, reject) => {
        this.spawns.set(id, { resolve, reject });
        const umask = options.umask === undefined ? '' : ` ${(options.umask & 0o777).toString(8)}`;
        this.child.stdin!.write(`spawn ${id} ${options.out} ${args.length + 1} ${fds.length}${umask}\n${[file, ...args].join('\n')}\n`);
      });
    } finally {
      // A failed spawn's entry goes too, not only a successful one's.
      this.spawns.delete(id);
    }
    return { pid, exited: this.exited(pid) };
  }

  /** Kills everything the reaper holds (SIGKILL, repeated until no child is left), reaps it, and ends the reaper. */
  async dispose(): Promise<void> {
    if (!live.delete(this)) return this.done;
    const ended = new Promise((resolve) => (this.child.exitCode !== null || this.child.signalCode !== null ? resolve(null) : this.child.once('exit', resolve)));
    this.child.stdin!.end('kill\n');
    await Promise.all([ended, this.done]);
    closeSync(this.fdChannel);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.dispose();
  }
}

/** Runs `file` as a tree whose orphans and killed processes are reaped at once. */
export function spawnSupervised(file: string, args: string[] = [], options: SuperviseOptions = {}): Promise<Supervisor> {
  return Supervisor.start(file, args, options);
}

/** Starts `file` stopped right after its execve: state T, no tracer; `continueTree` starts it. */
export function spawnStopped(file: string, args: string[] = [], options: Omit<SuperviseOptions, 'stopped'> = {}): Promise<Supervisor> {
  return Supervisor.start(file, args, { ...options, stopped: true });
}
