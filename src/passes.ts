// The pass driver: what the passes of every transition share (CRIU's
// collect loop, seize.c). It checks the pid, refuses trees that hold
// treestate, keeps the operation's walk cache, its tally, its clock and its
// deadline, and asks for each pass (src/walk.ts); stop, continue, kill and
// wait are policies over it (src/transitions.ts).
import type { Identity, NativeSignalListResult, NativeWalkOptions, NativeWalkResult } from './native.js';
import { checkNumbers, type NumberRule } from './options.js';
import { checkNotSelf, checkPid, processState, type TreeState } from './tree.js';
import { signalList, walkCache, walkTree } from './walk.js';

export const DEFAULT_TIMEOUT_MS = 10_000;

/** What every transition reports; each policy adds its own (TransitionResult). */
export interface PassTally {
  root: number;
  /** The state the tree was verified to be in when the call returned. */
  state: TreeState;
  /** Live processes of the tree at the end. */
  processes: number[];
  /** Processes this call signalled, in the order of their first signal. */
  signalled: number[];
  /** Processes seen during the call that were gone at the end: exits, not errors. */
  exited: number[];
  passes: number;
  elapsedMs: number;
  walk: 'children' | 'scan';
  /** With the root pid, the identity of the tree's root (clock ticks after boot). */
  rootStartTime: number;
}

/** No pause at all for 0 ms: the next pass is itself asynchronous, so the event loop still turns. */
export async function pause(ms: number): Promise<void> {
  if (ms > 0) await new Promise((resolve) => setTimeout(resolve, ms));
}

/** Backoff between verification passes: the first ones come at once, since delivery takes microseconds. */
export function backoff(quietPasses: number): number {
  return quietPasses < 2 ? 0 : Math.min(16, 2 ** (quietPasses - 2));
}

/** Tracks every process a call has seen, by identity, to report exits. */
export class Tally {
  private readonly seen = new Map<number, number>();
  readonly signalled = new Map<number, Identity>();
  private readonly gone = new Set<number>();
  /** How the passes found the tree: the result says so even when its last pass is not at hand (kill). */
  private walk: NativeWalkResult['walk'] = 'children';

  /** Returns how many processes this pass showed for the first time. */
  add(pass: NativeWalkResult): number {
    this.walk = pass.walk;
    let fresh = 0;
    for (const p of pass.processes) {
      if (this.seen.get(p.pid) !== p.startTime) {
        this.seen.set(p.pid, p.startTime);
        fresh++;
      }
    }
    const byPid = new Map(pass.processes.map((p) => [p.pid, p]));
    for (const pid of pass.signalled) {
      // A process signalled though it could not be read (relistAfterSignal) has no record.
      const p = byPid.get(pid);
      if (p && !this.signalled.has(pid)) this.signalled.set(pid, { pid, startTime: p.startTime });
    }
    for (const pid of pass.gone) this.gone.add(pid);
    return fresh;
  }

  /** Whether this call signalled `p` itself (the same pid and start time). */
  signalledAsItself(p: Identity): boolean {
    return this.signalled.get(p.pid)?.startTime === p.startTime;
  }

  /** Every process seen, in the order first seen (parents before their children). */
  identities(): Identity[] {
    return [...this.seen].map(([pid, startTime]) => ({ pid, startTime }));
  }

  result(root: number, state: TreeState, last: NativeWalkResult | undefined, passes: number, started: number, rootStartTime: number): PassTally {
    const alive = (last?.processes ?? []).filter((p) => processState(p.threads) !== 'dead');
    const present = new Set(alive.map((p) => p.pid));
    const exited = new Set([...this.gone, ...this.seen.keys()].filter((pid) => !present.has(pid)));
    return {
      root,
      state,
      processes: alive.map((p) => p.pid),
      signalled: [...this.signalled.keys()],
      exited: [...exited],
      passes,
      elapsedMs: Math.round((performance.now() - started) * 1000) / 1000,
      walk: last?.walk ?? this.walk,
      rootStartTime,
    };
  }
}

/** The tree an operation may act on: its root, and what it must never signal. */
export interface Target {
  root: number;
  /** treestate and its ancestors: never signalled (empty for an operation that only looks). */
  protect: number[];
}

/**
 * The checks before anything touches the tree: the pid, the numeric
 * options, and (for an operation that signals) that the tree does not hold
 * treestate itself, which would stop or kill us halfway.
 */
export function checkTarget<T extends object>(pid: unknown, options: T, numbers: { [K in keyof T]?: NumberRule }, signals = true): Target {
  const root = checkPid(pid);
  checkNumbers(options, numbers);
  return { root, protect: signals ? checkNotSelf(root) : [] };
}

/** What a policy asks of one pass: the driver fills in the root, the cache, the scan and what to protect. */
export type PassRequest = Partial<NativeWalkOptions>;

/**
 * The passes of one operation over one tree, from its first pass to its
 * result. `using` releases the walk cache however the operation ends.
 */
export class Passes implements Disposable {
  readonly root: number;
  readonly protect: number[];
  readonly started = performance.now();
  readonly timeoutMs: number;
  readonly deadline: number;
  readonly tally: Tally;
  /** With the root pid, the root's identity, from the first pass that counted (or as the policy pins it). */
  rootStartTime: number | undefined;
  /** Passes counted so far (`record`). */
  passes = 0;
  private cache: ReturnType<typeof walkCache> | undefined = walkCache();
  private readonly scan: boolean | undefined;

  constructor(target: Target, options: { timeoutMs?: number; scan?: boolean }, tally = new Tally()) {
    this.root = target.root;
    this.protect = target.protect;
    this.timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    this.deadline = this.started + this.timeoutMs;
    this.scan = options.scan;
    this.tally = tally;
  }

  /**
   * One pass from the root, pinned to its identity once known, through the
   * cache, never signalling what is protected; `request` says what kind of
   * pass and may override any of those (a kill's pass from a stray process).
   */
  walk(request: PassRequest = {}): Promise<NativeWalkResult> {
    return walkTree({ root: this.root, rootStartTime: this.rootStartTime, scan: this.scan, cache: this.cache?.handle, protect: this.protect, ...request });
  }

  /** Signals every thread of processes an earlier pass saw, by identity, never what is protected. */
  signal(targets: Identity[], signal: number): Promise<NativeSignalListResult> {
    return signalList(targets, signal, this.protect);
  }

  /** Learns the root's identity from a pass from the root. */
  identify(pass: NativeWalkResult): void {
    if (pass.root === this.root) this.rootStartTime ??= pass.processes[0]!.startTime;
  }

  /** Counts a pass and tallies what it saw; returns how many processes it showed first. */
  record(pass: NativeWalkResult): number {
    this.passes++;
    this.identify(pass);
    return this.tally.add(pass);
  }

  expired(): boolean {
    return performance.now() > this.deadline;
  }

  /** Milliseconds left before the deadline (0 once past it). */
  remaining(): number {
    return Math.max(0, this.deadline - performance.now());
  }

  /** Closes the cache's files now (a rollback, or a kill out of descriptors, needs them); later passes read without one. */
  async releaseCache(): Promise<void> {
    const cache = this.cache;
    this.cache = undefined;
    await cache?.release();
  }

  get cached(): boolean {
    return this.cache !== undefined;
  }

  result(state: TreeState, last: NativeWalkResult | undefined, passes = this.passes): PassTally {
    return this.tally.result(this.root, state, last, passes, this.started, this.rootStartTime ?? 0);
  }

  [Symbol.dispose](): void {
    void this.releaseCache();
  }
}
