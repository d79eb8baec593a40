// The tree as treestate sees it: a snapshot, and what state it is in.
import { frozenCgroupOf } from './cgroup/frozen.js';
import { TreeStateError, type ThreadRef } from './errors.js';
import { recordOf } from './stop-records.js';
import { native, type Identity, type NativeProcess, type NativeThread } from './native.js';
import { walkTree } from './walk.js';

/**
 * The three final states CRIU defines, `frozen` (a `run` tree held by its
 * cgroup's freezer, see src/cgroup/), and `mixed` for a tree that is in none of them.
 */
export type TreeState = 'running' | 'stopped' | 'dead' | 'mixed' | 'frozen';
/** How one thread or process stands. `traced` is ptrace-stop ('t'): SIGCONT cannot resume it. */
export type ProcessState = 'running' | 'stopped' | 'traced' | 'dead' | 'mixed';

/** A thread as treestate read it (the native record, src/native.ts). */
export type ThreadInfo = NativeThread;

/** A process as treestate read it: the native record, with its state; kernel threads are never in a tree. */
export interface ProcessInfo extends Omit<NativeProcess, 'kernelThread'> {
  state: ProcessState;
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
  // A loop, not map/filter/every: it runs for every process of every pass.
  let state: ProcessState = 'dead';
  for (const t of threads) {
    const s = threadState(t.state);
    if (s === 'dead') continue;
    if (state === 'dead') state = s;
    else if (s !== state) return 'mixed';
  }
  return state;
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

/** Whether any live thread of the processes has a state `keep` accepts (liveThreads without building the list). */
export function anyLiveThread(processes: Array<{ threads: ThreadInfo[] }>, keep: (state: string) => boolean): boolean {
  for (const p of processes) {
    for (const t of p.threads) {
      if (threadState(t.state) !== 'dead' && keep(t.state)) return true;
    }
  }
  return false;
}

/** The identities (pid, start time) of processes, as plain records. */
export function identitiesOf(processes: Array<{ pid: number; startTime: number }>): Identity[] {
  return processes.map((p) => ({ pid: p.pid, startTime: p.startTime }));
}

/** The processes the threads belong to, each once. */
export function pidsOf(threads: ThreadRef[]): number[] {
  return [...new Set(threads.map((t) => t.pid))];
}
