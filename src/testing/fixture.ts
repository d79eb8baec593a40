// Fixture trees with a heartbeat: the semantic proof of a state. Running
// means every counter advances; Stopped means none does.
import { existsSync, lstatSync, mkdtempSync, readFileSync, readdirSync, readlinkSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { TreeStateError, describePids } from '../errors.js';
import { nativeExecutable } from '../native.js';
import { DURATION, checkNumbers, wholeNumber, type NumberRule } from '../options.js';
import { readStatFields } from '../proc-stat.js';
import { writeControl } from '../cgroup/hierarchy.js';
import { run } from '../cgroup/run.js';
import { Supervisor, spawnSupervised } from './supervisor.js';

export interface TreeShape {
  /** Levels below the root (0: the root alone). Default 1. */
  depth?: number;
  /** Children per process. Default 2. */
  fanout?: number;
  /** Threads per process, the main thread included. Default 1. */
  threads?: number;
  /** Fork children from the non-leader threads, so only those threads' children files list them. */
  forkFromThreads?: boolean;
}

export interface TreeOptions extends TreeShape {
  /** Every process forks short-lived children without pause (and so may leave orphans, which the root adopts). */
  storm?: boolean;
  /** The root is a child subreaper: orphans of the tree stay in the tree. */
  subreaper?: boolean;
  /** Processes at this depth drop to `uid` after forking their children. */
  uidDepth?: number;
  uid?: number;
  /** The root allocates and touches this much memory (a dump that takes a while). */
  memoryMb?: number;
  /** The root keeps one unreaped, exited child: a zombie inside the tree. */
  zombie?: boolean;
  /** The leaves exit when they receive SIGCONT. */
  exitOnCont?: boolean;
  /** The root sits in uninterruptible sleep (D), in vfork for a child that never execs (killable only by SIGKILL). */
  vforkHold?: boolean;
  /**
   * The root waits in vfork (D) for a child that execs `sleep 1000` only once
   * it has been stopped and continued: a posix_spawn (make, say) that a stop
   * caught between the vfork and the exec.
   */
  vforkExecOnCont?: boolean;
  /** With vforkExecOnCont: that child stops itself (SIGSTOP) first, the application's own stop. */
  vforkChildStops?: boolean;
  /**
   * The root listens on TCP and UDP on 127.0.0.1 and on an abstract unix
   * socket, and answers between heartbeats (see `endpoints()`).
   */
  sockets?: boolean;
  /** With `sockets`: the root also holds an established loopback TCP connection to itself (dumps need `tcpEstablished`). */
  tcpPair?: boolean;
  /**
   * The root stops its N-th child (1-based) itself, once that child's
   * heartbeat has started, and keeps it stopped: a process the application
   * stopped on purpose. Its heartbeat does not advance (see `waitProgress`'s `except`).
   */
  stopChild?: number;
  /** Heartbeat period in ms (default 5). */
  intervalMs?: number;
  /** How long the tree may take to come up (default 20 000 ms). */
  readyTimeoutMs?: number;
  /** Start the tree with treestate's `run`, in a cgroup of its own (freezeTree, thawTree, kill through cgroup.kill). */
  cgroup?: boolean;
}

/** What a fixture tree runs under: a Supervisor, or `run`'s subreaper. */
export interface TreeOwner {
  readonly root: number;
  /** Kills and reaps everything the tree holds. */
  dispose(): Promise<void>;
}

/** A fixture started by `run`: its own cgroup, emptied through cgroup.kill on dispose. */
async function runOwner(file: string, args: string[]): Promise<TreeOwner & { cgroup: string }> {
  const tree = await run(file, args, { stdio: 'ignore', setsid: true });
  let disposed: Promise<void> | undefined;
  return {
    root: tree.root,
    cgroup: tree.cgroup,
    dispose: () =>
      (disposed ??= (async () => {
        try {
          writeControl(tree.cgroup, 'cgroup.kill', '1');
        } catch {
          // removed: the tree ended by itself
        }
        await tree.exited;
      })()),
  };
}

/** Where a `sockets` fixture root listens. */
export interface Endpoints {
  tcp: number;
  udp: number;
  /** Abstract unix socket name (without the leading NUL). */
  unix: string;
}

export interface Heartbeat {
  pid: number;
  depth: number;
  counter: number;
}

const HEADER = 16;
const SLOT = 16;
/**
 * Heartbeat files live in `PREFIX<pid namespace>-<pid>-XXXXXX/`, a private
 * directory per tree. The pid namespace is in the name because /dev/shm may
 * be shared with runs in other pid namespaces, whose pids mean nothing here.
 */
const PREFIX = 'treestate-heartbeats-';

/** The inode of our pid namespace ("pid:[4026531836]"), or 0 where it cannot be read. */
function pidNamespaceId(): number {
  try {
    return Number(/\[(\d+)\]/.exec(readlinkSync('/proc/self/ns/pid'))?.[1] ?? 0);
  } catch {
    return 0;
  }
}

/**
 * Removes the heartbeat directories that crashed runs left in `base`: only
 * our own (a directory, not a link, of our uid), of a pid of our pid
 * namespace that no longer runs.
 */
function removeStaleHeartbeats(base: string, ns: number): void {
  let names: string[];
  try {
    names = readdirSync(base);
  } catch {
    return;
  }
  const uid = process.geteuid?.() ?? 0;
  for (const name of names) {
    const match = /^treestate-heartbeats-(\d+)-(\d+)-\w+$/.exec(name);
    const pid = Number(match?.[2]);
    if (!match || Number(match[1]) !== ns || !pid || pid === process.pid) continue;
    try {
      process.kill(pid, 0);
      continue; // alive (or another user's: EPERM, below)
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ESRCH') continue;
    }
    const path = join(base, name);
    try {
      const st = lstatSync(path);
      if (st.isDirectory() && st.uid === uid) rmSync(path, { recursive: true, force: true });
    } catch {
      // raced with another run's cleanup
    }
  }
}

/**
 * A fresh heartbeat file path in a directory of its own (mkdtemp: 0700,
 * created, never reused), so that no one can plant a file or symlink at the
 * name; the fixture creates the file itself, O_EXCL | O_NOFOLLOW, 0600.
 */
function heartbeatPath(): string {
  const base = process.env.TREESTATE_HEARTBEAT_DIR ?? (process.platform === 'linux' ? '/dev/shm' : tmpdir());
  const ns = pidNamespaceId();
  removeStaleHeartbeats(base, ns);
  return join(mkdtempSync(join(base, `${PREFIX}${ns}-${process.pid}-`)), 'heartbeats');
}

export function treeSize({ depth = 1, fanout = 2 }: TreeShape): number {
  let size = 0;
  for (let d = 0, level = 1; d <= depth; d++, level *= fanout) size += level;
  return size;
}

function fixtureArgs(o: TreeOptions, heartbeatFile: string): string[] {
  const args = ['--depth', String(o.depth ?? 1), '--fanout', String(o.fanout ?? 2), '--threads', String(o.threads ?? 1), '--shm', heartbeatFile];
  if (o.forkFromThreads) args.push('--fork-from-threads');
  if (o.storm) args.push('--storm');
  if (o.subreaper) args.push('--subreaper');
  if (o.uidDepth !== undefined) args.push('--uid-depth', String(o.uidDepth), '--uid', String(o.uid ?? 65534));
  if (o.memoryMb) args.push('--memory-mb', String(o.memoryMb));
  if (o.zombie) args.push('--zombie');
  if (o.exitOnCont) args.push('--exit-on-cont');
  if (o.vforkHold) args.push('--vfork-hold');
  if (o.vforkExecOnCont) args.push('--vfork-exec-on-cont');
  if (o.vforkChildStops) args.push('--vfork-child-stops');
  if (o.intervalMs) args.push('--interval-ms', String(o.intervalMs));
  if (o.sockets || o.tcpPair) args.push('--sockets', socketsFile(heartbeatFile));
  if (o.tcpPair) args.push('--tcp-pair');
  if (o.stopChild) args.push('--stop-child', String(o.stopChild));
  return args;
}

function socketsFile(heartbeatFile: string): string {
  return `${heartbeatFile}.sockets`;
}

function pause(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

export class TreeFixture {
  /** The tree's root pid. */
  readonly root: number;
  /** How many processes the shape has (storm children not counted). */
  readonly size: number;

  constructor(
    readonly owner: TreeOwner,
    readonly heartbeatFile: string,
    size: number,
  ) {
    this.root = owner.root;
    this.size = size;
  }

  /** The reaper of a tree spawned without `cgroup` (criu restore runs under it too). */
  get supervisor(): Supervisor {
    if (!(this.owner instanceof Supervisor)) throw new TreeStateError('EINVAL', 'this fixture runs under treestate run, not a supervisor');
    return this.owner;
  }

  /** The tree's own cgroup, for a fixture spawned with `cgroup`. */
  get cgroup(): string | undefined {
    return (this.owner as { cgroup?: string }).cgroup;
  }

  /** One counter per process, read from the shared heartbeat file. */
  heartbeats(): Heartbeat[] {
    const buf = readFileSync(this.heartbeatFile);
    const out: Heartbeat[] = [];
    for (let i = 0; i < this.size && HEADER + (i + 1) * SLOT <= buf.length; i++) {
      const at = HEADER + i * SLOT;
      out.push({ pid: buf.readInt32LE(at), depth: buf.readInt32LE(at + 4), counter: Number(buf.readBigUInt64LE(at + 8)) });
    }
    return out;
  }

  /** The ports and socket name a `sockets` root serves on (it answers TCP and unix clients with "fixture PID BEAT PAIR"). */
  endpoints(): Endpoints {
    const fields = new Map(readFileSync(socketsFile(this.heartbeatFile), 'utf8').trim().split('\n').map((l) => l.split(' ') as [string, string]));
    return { tcp: Number(fields.get('tcp')), udp: Number(fields.get('udp')), unix: fields.get('unix') ?? '' };
  }

  /** Every process of the shape (storm children not included). */
  pids(): number[] {
    return this.heartbeats().map((h) => h.pid);
  }

  /** Resolves once every counter (but those of `except`'s pids) has advanced; rejects naming the processes whose counters did not. */
  async waitProgress(options: { timeoutMs?: number; except?: number[] } = {}): Promise<void> {
    checkNumbers(options, { timeoutMs: DURATION });
    const timeoutMs = options.timeoutMs ?? 5000;
    const before = this.heartbeats();
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const now = this.heartbeats();
      const still = now.filter((h, i) => h.counter <= before[i]!.counter && !options.except?.includes(h.pid)).map((h) => h.pid);
      if (still.length === 0) return;
      if (Date.now() > deadline) {
        throw new TreeStateError('ETIMEDOUT', `heartbeat did not advance within ${timeoutMs} ms for ${describePids(still.map(threadStates))}`, { pids: still });
      }
      await pause(5);
    }
  }

  /** Rejects naming any process whose counter advances within `forMs`: the proof that nothing runs. */
  async assertNoProgress(options: { forMs?: number } = {}): Promise<void> {
    checkNumbers(options, { forMs: DURATION });
    const forMs = options.forMs ?? 100;
    const before = this.heartbeats();
    await pause(forMs);
    const moved = this.heartbeats().filter((h, i) => h.counter !== before[i]!.counter).map((h) => h.pid);
    if (moved.length > 0) {
      throw new TreeStateError('EMISMATCH', `heartbeat advanced within ${forMs} ms for ${describePids(moved)}: they are running`, { pids: moved });
    }
  }

  /** Kills and reaps everything the fixture made, and removes its heartbeat file and directory. */
  async dispose(): Promise<void> {
    await this.owner.dispose();
    rmSync(dirname(this.heartbeatFile), { recursive: true, force: true });
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.dispose();
  }
}

/**
 * "PID (tid STATE in WCHAN, …)": where the threads of a process that did not
 * beat are (stopped, or asleep in the kernel, and where); the pid alone once
 * the process is gone.
 */
function threadStates(pid: number): string {
  try {
    const threads = readdirSync(`/proc/${pid}/task`).map((tid) => {
      const state = readStatFields(`/proc/${pid}/task/${tid}/stat`)[0];
      let wchan = '';
      try {
        wchan = readFileSync(`/proc/${pid}/task/${tid}/wchan`, 'utf8');
      } catch {
        // not readable here
      }
      return `${tid} ${state}${wchan && wchan !== '0' ? ` in ${wchan}` : ''}`;
    });
    return `${pid} (${threads.join(', ')})`;
  } catch {
    return String(pid);
  }
}

/** Spawns a fixture tree under a reaper and resolves once every process is up and counting. */
const TREE_NUMBERS: { [K in keyof TreeOptions]: NumberRule } = {
  depth: wholeNumber(0, 64),
  fanout: wholeNumber(0, 100_000),
  threads: wholeNumber(1, 4096),
  uidDepth: wholeNumber(0, 64),
  uid: wholeNumber(0, 4_294_967_294),
  memoryMb: wholeNumber(0, 1 << 20),
  intervalMs: wholeNumber(1, 2_147_483_647),
  readyTimeoutMs: DURATION,
  stopChild: wholeNumber(0, 100_000),
};

export async function spawnTree(options: TreeOptions = {}): Promise<TreeFixture> {
  checkNumbers(options, TREE_NUMBERS);
  const size = treeSize(options);
  const heartbeatFile = heartbeatPath();
  const file = nativeExecutable('treestate-fixture');
  const args = fixtureArgs(options, heartbeatFile);
  let owner: TreeOwner;
  try {
    owner = options.cgroup ? await runOwner(file, args) : await spawnSupervised(file, args);
  } catch (e) {
    rmSync(dirname(heartbeatFile), { recursive: true, force: true });
    throw e;
  }
  const fixture = new TreeFixture(owner, heartbeatFile, size);
  const deadline = Date.now() + (options.readyTimeoutMs ?? 20_000);
  for (;;) {
    let beats: Heartbeat[] = [];
    try {
      beats = fixture.heartbeats();
    } catch {
      // the root has not created the file yet
    }
    const served = !(options.sockets || options.tcpPair) || existsSync(socketsFile(heartbeatFile));
    if (served && beats.length === size && beats.every((h) => h.pid > 0 && h.counter > 0)) return fixture;
    if (Date.now() > deadline) {
      await fixture.dispose();
      const up = beats.filter((h) => h.pid > 0).length;
      throw new TreeStateError('ETIMEDOUT', `fixture tree did not come up: ${up} of ${size} processes running`);
    }
    await pause(5);
  }
}
