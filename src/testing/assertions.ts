// Tree-state assertions: a chai plugin and a plain helper for other runners.
import { TreeStateError, describeThreads } from '../errors.js';
import { getTreeState, liveThreads, threadState, type TreeState, type TreeStatus } from '../tree.js';
import { waitForState } from '../transitions.js';

export interface AssertOptions {
  /** How long the tree may take to get there (CRIU detaches before T shows). Default 2000 ms. */
  timeoutMs?: number;
}

/** Which live threads keep the tree from being `wanted`. */
const offFor: Record<TreeState, (state: string) => boolean> = {
  dead: () => true,
  stopped: (s) => s !== 'T',
  running: (s) => threadState(s) !== 'running',
  mixed: (s) => threadState(s) !== 'running',
  // Frozen threads look like running ones: only the cgroup tells (status names it).
  frozen: () => false,
};

function describeStatus(status: TreeStatus, wanted: TreeState): string {
  const off = liveThreads(status.processes, offFor[wanted]);
  return `is ${status.state}${off.length ? `: ${describeThreads(off)}` : ''}`;
}

/** Resolves once the tree of `pid` is in `state`; rejects naming the processes and threads that are not. */
export async function assertTreeState(pid: number, state: TreeState, options: AssertOptions = {}): Promise<TreeStatus> {
  try {
    return await waitForState(pid, state, { timeoutMs: options.timeoutMs ?? 2000 });
  } catch (e) {
    if (!(e instanceof TreeStateError) || e.code !== 'ETIMEDOUT') {
      if (e instanceof TreeStateError && e.code === 'ESRCH') throw new TreeStateError('EMISMATCH', `expected the tree of ${pid} to be ${state}, but process ${pid} does not exist`, { pid });
      throw e;
    }
    const status = (e.details?.status as TreeStatus | undefined) ?? (await getTreeState(pid));
    throw new TreeStateError('EMISMATCH', `expected the tree of ${pid} to be ${state}, but it ${describeStatus(status, state)}`, { pid, threads: e.threads });
  }
}

/** Resolves if the tree of `pid` is not in `state` right now. */
export async function assertNotTreeState(pid: number, state: TreeState): Promise<void> {
  let status: TreeStatus;
  try {
    status = await getTreeState(pid);
  } catch (e) {
    if (e instanceof TreeStateError && e.code === 'ESRCH' && state !== 'dead') return;
    throw e;
  }
  if (status.state === state) throw new TreeStateError('EMISMATCH', `expected the tree of ${pid} not to be ${state}, but it is`, { pid });
}

// Structural types, so users' chai (any version with addProperty) fits.
// eslint-disable-next-line @typescript-eslint/no-explicit-any
type ChaiLike = { Assertion: { addProperty(name: string, getter: (this: any) => any): void } };
type ChaiUtils = { flag(assertion: object, key: string): unknown };

/**
 * chai plugin: `await expect(pid).to.be.a.stoppedTree` (also `runningTree`,
 * `deadTree`, and `.not.` forms). The properties return promises: await them.
 */
export function chaiTreeState(chai: ChaiLike, utils: ChaiUtils): void {
  const add = (name: string, state: TreeState) =>
    chai.Assertion.addProperty(name, function (this: object) {
      const pid = utils.flag(this, 'object') as number;
      return utils.flag(this, 'negate') ? assertNotTreeState(pid, state) : assertTreeState(pid, state).then(() => undefined);
    });
  add('runningTree', 'running');
  add('stoppedTree', 'stopped');
  add('deadTree', 'dead');
}

declare global {
  // eslint-disable-next-line @typescript-eslint/no-namespace
  namespace Chai {
    interface Assertion {
      /** Await it: resolves when the tree is Running. */
      readonly runningTree: Promise<void>;
      readonly stoppedTree: Promise<void>;
      readonly deadTree: Promise<void>;
    }
  }
}
