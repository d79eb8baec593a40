// Frozen, the fourth state, and a kill nothing escapes: both act on the
// cgroup of a `run` tree, and only on one that holds nothing but the tree.
import { TreeStateError, describePids, hasCode } from '../errors.js';
import { checkNotSelf, checkPid, snapshot } from '../tree.js';
import type { TransitionResult } from '../transitions.js';
import { cgroupMembers, cgroupOfPid, runCgroupOf, waitEvent, writeControl } from './hierarchy.js';

/** A tree that owns its cgroup: everything in `cgroup` belongs to the tree of `root`. */
export interface OwnedTree {
  root: number;
  cgroup: string;
  /** The processes in the cgroup when it was checked. */
  members: number[];
  /** The root's start time (clock ticks after boot). */
  rootStartTime: number;
  /** The root's parent: the run's subreaper (or init), where the tree's orphans go. */
  subreaper: number;
  /** Every process found to belong to the tree. */
  known: Set<number>;
}

export interface FreezeResult {
  root: number;
  cgroup: string;
  /** `frozen` after freezeTree, `running` after thawTree (cgroup.events says so). */
  state: 'frozen' | 'running';
  /** The processes in the cgroup. */
  processes: number[];
  elapsedMs: number;
}

export interface FreezeOptions {
  /** How long the cgroup may take to report the state (default 10 000 ms). */
  timeoutMs?: number;
}

const DEFAULT_TIMEOUT_MS = 10_000;

/**
 * Whether `pid` is the root of a tree that owns its cgroup, and why not.
 * The tree of a `run` root is every process of its cgroup, and those are:
 * its descendants, the orphans re-parented to its parent (the run's
 * subreaper, or init), and their descendants. A cgroup that holds anything
 * else, or a pid that is not the root (its parent is in the cgroup too),
 * is not the tree's own.
 */
export async function inspectOwnership(pid: number): Promise<{ owned: OwnedTree } | { reason: string }> {
  const cgroup = runCgroupOf(pid);
  if (!cgroup) return { reason: `the tree of ${pid} has no cgroup of its own: it was not started by treestate run` };
  // Members first, the tree after: a member forked meanwhile is then found
  // in the tree, and one that moved (its parent exited) hangs below a
  // process already seen.
  const members = cgroupMembers(cgroup);
  const snap = await snapshot(pid);
  const top = snap.processes[0]!;
  let parentCgroup: string | null = null;
  try {
    parentCgroup = cgroupOfPid(top.ppid);
  } catch (e) {
    if (!hasCode(e, 'ESRCH')) throw e;
  }
  if (parentCgroup === cgroup) return { reason: `pid ${pid} is not the root of the run tree in ${cgroup}: its parent ${top.ppid} is in it too` };
  const known = new Set(snap.processes.map((p) => p.pid));
  const others = await adoptMembers(members, known, top.ppid);
  if (others.length > 0) return { reason: `the cgroup ${cgroup} also holds processes outside the tree of ${pid}: ${describePids(others)}` };
  return { owned: { root: pid, cgroup, members, rootStartTime: top.startTime, subreaper: top.ppid, known } };
}

/**
 * Adds to `known` the members that belong to the tree: orphans that came to
 * the run's subreaper, processes whose parent is known, their descendants.
 * Returns the members that do not belong.
 */
async function adoptMembers(members: number[], known: Set<number>, subreaper: number): Promise<number[]> {
  let others = members.filter((m) => !known.has(m));
  for (let progress = true; others.length > 0 && progress; ) {
    progress = false;
    for (const m of others) {
      if (known.has(m)) continue;
      let sub;
      try {
        sub = await snapshot(m);
      } catch (e) {
        if (!hasCode(e, 'ESRCH')) throw e;
        known.add(m); // exited meanwhile
        progress = true;
        continue;
      }
      const ppid = sub.processes[0]!.ppid;
      if (ppid === subreaper || known.has(ppid)) {
        for (const p of sub.processes) known.add(p.pid);
        progress = true;
      }
    }
    others = others.filter((m) => !known.has(m));
  }
  return others;
}

/** The tree's own cgroup, or undefined when it has none (the signal path is then the only one). */
export async function ownedCgroup(pid: number): Promise<OwnedTree | undefined> {
  let r;
  try {
    r = await inspectOwnership(pid);
  } catch (e) {
    // A process this user cannot read (hidepid) or that is gone: not a run
    // tree as far as we can tell; the signal path then says what it is.
    if (hasCode(e, 'ESRCH', 'ENOENT', 'EPERM', 'EACCES')) return undefined;
    throw e;
  }
  return 'owned' in r ? r.owned : undefined;
}

async function requireOwned(pid: number, verb: string): Promise<OwnedTree> {
  const root = checkPid(pid);
  checkNotSelf(root);
  const r = await inspectOwnership(root);
  if ('reason' in r) throw new TreeStateError('ENOCGROUP', `cannot ${verb} ${root}: ${r.reason}`, { pid: root });
  if (r.owned.members.includes(process.pid)) {
    throw new TreeStateError('EREFUSED', `refusing to ${verb} ${root}: its cgroup holds treestate itself`, { pid: root });
  }
  return r.owned;
}

/**
 * Running → Frozen through the cgroup freezer: one write holds every
 * process of the cgroup, forks included (a child is born into its parent's
 * cgroup, frozen). Verified through cgroup.events (`frozen 1`), since frozen
 * threads show S or D, not T. Only for a tree that owns its cgroup (ENOCGROUP).
 */
export async function freezeTree(pid: number, options: FreezeOptions = {}): Promise<FreezeResult> {
  return setFrozen(await requireOwned(pid, 'freeze'), true, options);
}

/** Frozen → Running: the cgroup freezer lets go; verified through cgroup.events (`frozen 0`). */
export async function thawTree(pid: number, options: FreezeOptions = {}): Promise<FreezeResult> {
  return setFrozen(await requireOwned(pid, 'thaw'), false, options);
}

async function setFrozen(tree: OwnedTree, frozen: boolean, options: FreezeOptions): Promise<FreezeResult> {
  const started = performance.now();
  const timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  const verb = frozen ? 'freeze' : 'thaw';
  writeControl(tree.cgroup, 'cgroup.freeze', frozen ? '1' : '0');
  if (!(await waitEvent(tree.cgroup, 'frozen', frozen ? 1 : 0, timeoutMs))) {
    // A freeze that did not complete is undone: no half-frozen tree is left behind.
    if (frozen) writeControl(tree.cgroup, 'cgroup.freeze', '0');
    throw new TreeStateError('ETIMEDOUT', `the cgroup ${tree.cgroup} of ${tree.root} did not report ${frozen ? 'frozen' : 'thawed'} within ${timeoutMs} ms${frozen ? '; it was thawed again' : ''}`, { pid: tree.root });
  }
  const processes = cgroupMembers(tree.cgroup);
  if (frozen) {
    // What joined the cgroup between the check and the freeze (a fork, or
    // someone moving a process in) is checked now that nothing in it can
    // change: only the processes the first check did not see.
    const strangers = await adoptMembers(processes, tree.known, tree.subreaper);
    if (strangers.length > 0) {
      writeControl(tree.cgroup, 'cgroup.freeze', '0');
      throw new TreeStateError('ENOCGROUP', `cannot ${verb} ${tree.root}: the cgroup ${tree.cgroup} also holds processes outside the tree of ${tree.root}: ${describePids(strangers)}; it was thawed again`, { pid: tree.root });
    }
  }
  return { root: tree.root, cgroup: tree.cgroup, state: frozen ? 'frozen' : 'running', processes, elapsedMs: performance.now() - started };
}

/**
 * → Dead through cgroup.kill: the kernel sends SIGKILL to every process of
 * the cgroup in one step, frozen ones and double-forked ones included, and
 * new forks are refused meanwhile (kernel/cgroup/cgroup.c, cgroup_kill).
 * Resolves once the cgroup is empty (`populated 0`).
 */
export async function killOwnedTree(tree: OwnedTree, options: { timeoutMs?: number } = {}): Promise<TransitionResult> {
  const started = performance.now();
  const timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  writeControl(tree.cgroup, 'cgroup.kill', '1');
  if (!(await waitEvent(tree.cgroup, 'populated', 0, timeoutMs))) {
    let alive: number[] = [];
    try {
      alive = cgroupMembers(tree.cgroup);
    } catch {
      // removed meanwhile: empty after all
    }
    if (alive.length > 0) throw new TreeStateError('ETIMEDOUT', `the tree of ${tree.root} did not die within ${timeoutMs} ms: ${describePids(alive)} still in ${tree.cgroup}`, { pid: tree.root, pids: alive });
  }
  return {
    root: tree.root,
    state: 'dead',
    processes: [],
    signalled: tree.members,
    exited: tree.members,
    passes: 1,
    elapsedMs: performance.now() - started,
    walk: 'children',
    rootStartTime: tree.rootStartTime,
  };
}
