// The tree as treestate sees it: a snapshot, and what state it is in.
import { constants as osConstants } from 'node:os';
import { frozenCgroupOf } from './cgroup/frozen.js';
import { TreeStateError, describePids, hasCode, type ThreadRef } from './errors.js';
import { recordOf } from './stop-records.js';
import { native, type Identity, type NativeFailure, type NativeProcess, type NativeWalkCache, type NativeWalkOptions, type NativeWalkResult } from './native.js';

/**
 * The three final states CRIU defines, `frozen` (a `run` tree held by its
 * cgroup's freezer, see src/cgroup/), and `mixed` for a tree that is in none of them.
 */
export type TreeState = 'running' | 'stopped' | 'dead' | 'mixed' | 'frozen';
/** How one thread or process stands. `traced` is ptrace-stop ('t'): SIGCONT cannot resume it. */
export type ProcessState = 'running' | 'stopped' | 'traced' | 'dead' | 'mixed';

export interface ThreadInfo {
  tid: number;
  /** The kernel's state letter: R, S, D, T, t, Z, X … */
  state: string;
  tracerPid?: number;
}

export interface ProcessInfo {
  pid: number;
  ppid: number;
  /** Clock ticks after boot (field 22 of /proc/PID/stat). */
  startTime: number;
  comm: string;
  state: ProcessState;
  threads: ThreadInfo[];
  children: number[];
}

export interface TreeSnapshot {
  root: number;
  /** `children`: /proc/PID/task/TID/children of every thread; `scan`: one pass over /proc/*\/stat. */
  walk: 'children' | 'scan';
  processes: ProcessInfo[];
}

export interface TreeStatus extends TreeSnapshot {
  state: TreeState;
  /** For `mixed`: the threads not in the tree's most common state. */
  differing: ThreadRef[];
  counts: Record<Exclude<ProcessState, 'mixed'>, number>;
  /** Only for a frozen `run` tree: its cgroup. */
  cgroup?: string;
  /**
   * A `running` tree in which these processes are stopped all the same: the
   * application stopped them itself, and treestate keeps them stopped (see
   * continueTree). The only threads in T are theirs.
   */
  keptStopped?: number[];
}

export interface WalkOptions {
  /** Force the /proc/*\/stat fallback walk (what a kernel without CONFIG_PROC_CHILDREN gets). */
  scan?: boolean;
}

export function threadState(letter: string): Exclude<ProcessState, 'mixed'> {
  switch (letter) {
    case 'T':
      return 'stopped';
    case 't':
      return 'traced';
    case 'Z':
    case 'X':
    case 'x':
      return 'dead';
    default:
      return 'running';
  }
}

export function processState(threads: ThreadInfo[]): ProcessState {
  const live = threads.map((t) => threadState(t.state)).filter((s) => s !== 'dead');
  if (live.length === 0) return 'dead';
  return live.every((s) => s === live[0]) ? live[0]! : 'mixed';
}

const MAX_PID = 4_194_304; // PID_MAX_LIMIT on 64-bit

/**
 * A root that has exited but is not yet reaped (a zombie) has no tree left:
 * its children went to a subreaper or init as it exited. Stop, continue and
 * dump say so, rather than report an empty tree moved (or let criu fail on
 * it); kill's goal, Dead, already holds.
 */
export function refuseDeadRoot(root: { pid: number; ppid: number; threads: Array<{ state: string }> } | undefined, verb: string): void {
  if (root && root.threads.every((t) => threadState(t.state) === 'dead')) {
    throw new TreeStateError('ESRCH', `cannot ${verb} the tree of ${root.pid}: the process has exited (a zombie its parent ${root.ppid} has not reaped yet), so its tree is dead`, { pid: root.pid });
  }
}

/** Checks what a pid argument can be before anything touches /proc. */
export function checkPid(pid: unknown): number {
  if (typeof pid === 'string' && /^\d+$/.test(pid.trim())) pid = Number(pid.trim());
  if (typeof pid !== 'number' || !Number.isSafeInteger(pid) || pid <= 0 || pid > MAX_PID) {
    throw new TreeStateError('EINVAL_PID', `not a process id: ${JSON.stringify(pid)} (expected an integer from 1 to ${MAX_PID})`);
  }
  if (pid === 1) {
    throw new TreeStateError('EREFUSED', 'refusing pid 1: its tree is the whole system', { pid });
  }
  return pid;
}

let ancestry: number[] | undefined;

/** Refuses trees that hold treestate itself: stopping them would stop us halfway. */
export function checkNotSelf(pid: number): number[] {
  // Our ancestry can only shrink (an orphan goes to a subreaper or init that
  // is already an ancestor), so the cached list is a safe superset: only a
  // hit is read again, since an ancestor's pid may since name someone else.
  ancestry ??= native().selfAndAncestors();
  if (ancestry.includes(pid)) ancestry = native().selfAndAncestors();
  const protect = ancestry;
  if (protect.includes(pid)) {
    const who = pid === process.pid ? 'treestate itself' : 'an ancestor of treestate';
    throw new TreeStateError('EREFUSED', `refusing pid ${pid}: it is ${who}, so its tree contains this process`, { pid });
  }
  return protect;
}

export function toProcessInfo(p: NativeProcess): ProcessInfo {
  return {
    pid: p.pid,
    ppid: p.ppid,
    startTime: p.startTime,
    comm: p.comm,
    state: processState(p.threads),
    threads: p.threads,
    children: p.children,
  };
}

/**
 * One native pass; a root that does not exist becomes our ESRCH error, one
 * that cannot be read (EMFILE, EACCES …) a TreeStateError with that code. A
 * pass that only looks and could not read some process fails as a whole: a
 * tree it read in part is not the tree. (A pass that signals returns such
 * failures with what it signalled, for the transition to undo.)
 */
export async function walkTree(options: NativeWalkOptions): Promise<NativeWalkResult> {
  let result: NativeWalkResult;
  try {
    result = await native().walk(options);
  } catch (e) {
    const tgid = (e as { tgid?: unknown }).tgid;
    if (hasCode(e, 'EINVAL_PID') && typeof tgid === 'number') throw threadError(options.root, tgid, options.protect ?? []);
    if (hasCode(e, 'ESRCH') && !(e instanceof TreeStateError)) {
      throw new TreeStateError('ESRCH', `no such process: ${options.root}`, { pid: options.root, errno: -osConstants.errno.ESRCH, syscall: 'open', cause: e });
    }
    const f = e as Partial<NativeFailure>;
    if (typeof f.code === 'string' && typeof f.errno === 'number') {
      throw new TreeStateError(f.code, `cannot read process ${options.root}: ${reason(f)}`, { pid: options.root, errno: f.errno, syscall: f.syscall, cause: e });
    }
    throw e;
  }
  const root = result.processes[0];
  if (root?.kernelThread) {
    throw new TreeStateError('EREFUSED', `refusing pid ${options.root}: it is a kernel thread (${root.comm})`, { pid: options.root });
  }
  if (!options.signal && result.failures.length > 0) throw readFailure(result.failures);
  return result;
}

/**
 * The pid given names a thread, not a process: /proc/TID opens, and a signal
 * through it reaches the whole process, so it is refused rather than taken
 * for the process. Threads of what is never signalled are refused as it is.
 */
function threadError(pid: number, tgid: number, protect: number[]): TreeStateError {
  if (tgid === 1) return new TreeStateError('EREFUSED', `refusing pid ${pid}: it is a thread of pid 1, whose tree is the whole system`, { pid });
  if (protect.includes(tgid)) {
    const who = tgid === process.pid ? 'treestate itself' : 'an ancestor of treestate';
    return new TreeStateError('EREFUSED', `refusing pid ${pid}: it is a thread of process ${tgid}, ${who}`, { pid });
  }
  return new TreeStateError('EINVAL_PID', `${pid} is a thread of process ${tgid}, not a process; name the process`, { pid, details: { tgid } });
}

/**
 * "too many open files (EMFILE)": the errno's own words (the native error's
 * description), then its code. EPERM from open names a process that is alive
 * but that /proc will not show this user (hidepid), not one that is gone.
 */
export function reason(f: Partial<NativeFailure>): string {
  const words = f.description || 'failed';
  const hidden = f.code === 'EPERM' && f.syscall === 'open' ? ': alive, but /proc does not let this user read it (hidepid)' : '';
  return `${words.charAt(0).toLowerCase()}${words.slice(1)} (${f.code})${hidden}`;
}

/** Processes a pass could not read: the tree it saw is incomplete. `extra` ends the message (what was undone). */
export function readFailure(failures: NativeFailure[], extra = ''): TreeStateError {
  const first = failures[0]!;
  const pids = failures.filter((f) => f.code === first.code).map((f) => f.pid);
  return new TreeStateError(first.code, `cannot read ${pids.length === 1 ? 'process' : 'processes'} ${describePids(pids)}: ${reason(first)}; the tree was not read whole${extra}`, {
    pids,
    pid: pids[0],
    errno: first.errno,
    syscall: first.syscall,
  });
}

/**
 * The walk cache of one operation's passes: each pass reads the tree's /proc
 * files through descriptors kept open by the pass before (one pread each
 * instead of open, read, close). `using` releases it when the operation
 * ends, whatever its outcome; `release()` closes the files sooner and says
 * when they are closed (a rollback wants every descriptor it can get).
 */
export function walkCache(): { handle: NativeWalkCache; release(): Promise<void> } & Disposable {
  const handle = native().createWalkCache();
  const release = () => native().releaseWalkCache(handle);
  return { handle, release, [Symbol.dispose]: () => void release() };
}

export async function snapshot(pid: number, options: WalkOptions = {}): Promise<TreeSnapshot> {
  const root = checkPid(pid);
  const result = await walkTree({ root, scan: options.scan });
  return { root, walk: result.walk, processes: result.processes.map(toProcessInfo) };
}

export function classify(snap: TreeSnapshot): TreeStatus {
  const counts = { running: 0, stopped: 0, traced: 0, dead: 0 };
  const live: ThreadRef[] = [];
  for (const p of snap.processes) {
    for (const t of p.threads) {
      const s = threadState(t.state);
      counts[s]++;
      if (s !== 'dead') live.push({ pid: p.pid, tid: t.tid, state: t.state, tracerPid: t.tracerPid });
    }
  }
  let state: TreeState;
  let differing: ThreadRef[] = [];
  if (live.length === 0) {
    state = 'dead';
  } else if (counts.running === live.length) {
    state = 'running';
  } else if (counts.stopped === live.length) {
    state = 'stopped';
  } else {
    state = 'mixed';
    const majority = (['running', 'stopped', 'traced'] as const).reduce((a, b) => (counts[b] > counts[a] ? b : a));
    differing = live.filter((t) => threadState(t.state) !== majority);
  }
  return { ...snap, state, differing, counts };
}

/** The tree's state now. A process that does not exist is an ESRCH error, not `dead`. */
export async function getTreeState(pid: number, options: WalkOptions = {}): Promise<TreeStatus> {
  const status = classify(await snapshot(pid, options));
  const root = status.processes[0];
  return withFrozen(withKept(status, root && recordOf({ pid: root.pid, startTime: root.startTime }).record?.kept));
}

/**
 * `running` for a tree whose only threads in T are those of `kept`, the
 * application's own stops that treestate keeps (naming them in
 * `keptStopped`); any other status as it is.
 */
export function withKept(status: TreeStatus, kept: Identity[] | undefined): TreeStatus {
  if (!kept?.length || status.state !== 'mixed') return status;
  const keys = new Map(kept.map((p) => [p.pid, p.startTime]));
  const isKept = (p: ProcessInfo) => keys.get(p.pid) === p.startTime;
  const off = status.processes.some((p) =>
    p.threads.some((t) => {
      const s = threadState(t.state);
      return s !== 'dead' && s !== 'running' && !(s === 'stopped' && isKept(p));
    }),
  );
  if (off) return status;
  return { ...status, state: 'running', differing: [], keptStopped: status.processes.filter((p) => isKept(p) && p.threads.some((t) => t.state === 'T')).map((p) => p.pid) };
}

/** `frozen` for a run tree its cgroup's freezer holds: frozen threads show S or D, like running ones, so only the cgroup knows. */
export function withFrozen(status: TreeStatus): TreeStatus {
  const frozen = status.state === 'dead' ? null : frozenCgroupOf(status.root);
  return frozen ? { ...status, state: 'frozen', differing: [], cgroup: frozen } : status;
}

/** Live threads of a pass, as references for error messages. */
export function liveThreads(processes: Array<{ pid: number; threads: ThreadInfo[] }>, keep: (state: string) => boolean): ThreadRef[] {
  const out: ThreadRef[] = [];
  for (const p of processes) {
    for (const t of p.threads) {
      if (threadState(t.state) !== 'dead' && keep(t.state)) out.push({ pid: p.pid, tid: t.tid, state: t.state, tracerPid: t.tracerPid });
    }
  }
  return out;
}

/** The processes the threads belong to, each once. */
export function pidsOf(threads: ThreadRef[]): number[] {
  return [...new Set(threads.map((t) => t.pid))];
}
