// Tree-state assertions: a chai plugin and a plain helper for other runners.
import { TreeStateError, describeThreads } from '../errors.js';
import { getTreeState, liveThreads, threadState, type TreeState, type TreeStatus } from '../tree.js';
import { waitForState } from '../transitions.js';
import { DURATION, checkNumbers } from '../options.js';

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
  checkNumbers(options, { timeoutMs: DURATION });
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

/**
 * The chai properties are promises: `expect(pid).to.be.a.stoppedTree` alone,
 * not awaited, would pass whatever the tree is. So each one is registered as
 * it is made and struck off when something awaits it (or calls `then`,
 * `catch`, `finally`); the mocha hook fails a test that leaves one behind
 * (`checkAssertionsAwaited`). The registry lives on globalThis so that the
 * hook loaded by `--require treestate/testing` (CommonJS) and the plugin a
 * test imports (ESM) share it.
 */
interface Unawaited {
  what: string;
  stack: string;
}

const registryKey = Symbol.for('treestate.testing.unawaited');
function unawaited(): Set<Unawaited> {
  const g = globalThis as { [registryKey]?: Set<Unawaited> };
  return (g[registryKey] ??= new Set());
}

class TreeAssertion implements Promise<void> {
  readonly [Symbol.toStringTag] = 'Promise';
  private readonly entry: Unawaited;

  constructor(
    private readonly work: Promise<void>,
    what: string,
  ) {
    // Not awaited, a failure is reported by the hook, not as an unhandled rejection.
    work.catch(() => {});
    // Where the test made it: the frames below chai's property getter.
    const frames = (new Error().stack ?? '').split('\n').slice(3).filter((f) => !/[\\/]chai[\\/]|Reflect\.get/.test(f));
    this.entry = { what, stack: frames.slice(0, 3).join('\n') };
    unawaited().add(this.entry);
  }

  then<A = void, B = never>(onFulfilled?: ((value: void) => A | PromiseLike<A>) | null, onRejected?: ((reason: unknown) => B | PromiseLike<B>) | null): Promise<A | B> {
    unawaited().delete(this.entry);
    return this.work.then(onFulfilled, onRejected);
  }

  catch<B = never>(onRejected?: ((reason: unknown) => B | PromiseLike<B>) | null): Promise<void | B> {
    return this.then(undefined, onRejected);
  }

  finally(onFinally?: (() => void) | null): Promise<void> {
    unawaited().delete(this.entry);
    return this.work.finally(onFinally);
  }
}

/** Rejects (ENOTAWAITED) naming each chai tree assertion made since the last call and never awaited; forgets them. */
export async function checkAssertionsAwaited(): Promise<void> {
  const left = [...unawaited()];
  unawaited().clear();
  if (left.length === 0) return;
  const where = left.map((a) => `${a.what}\n${a.stack}`).join('\n');
  throw new TreeStateError('ENOTAWAITED', `the test did not await ${left.length === 1 ? 'a tree assertion' : `${left.length} tree assertions`}, which therefore proved nothing: ${where}`);
}

// Structural types, so users' chai (any version with addProperty) fits.
type ChaiLike = { Assertion: { addProperty(name: string, getter: (this: object) => unknown): void } };
type ChaiUtils = { flag(assertion: object, key: string): unknown };

/**
 * chai plugin: `await expect(pid).to.be.a.stoppedTree` (also `runningTree`,
 * `deadTree`, and `.not.` forms). The properties return promises: await
 * them; the mocha hook fails a test that does not (ENOTAWAITED).
 */
export function chaiTreeState(chai: ChaiLike, utils: ChaiUtils): void {
  const add = (name: string, state: TreeState) =>
    chai.Assertion.addProperty(name, function (this: object) {
      const pid = utils.flag(this, 'object') as number;
      const negate = Boolean(utils.flag(this, 'negate'));
      const work = negate ? assertNotTreeState(pid, state) : assertTreeState(pid, state).then(() => undefined);
      return new TreeAssertion(work, `expect(${pid}).${negate ? 'not.' : ''}to.be.a.${name}`);
    });
  add('runningTree', 'running');
  add('stoppedTree', 'stopped');
  add('deadTree', 'dead');
}

declare global {
  namespace Chai {
    interface Assertion {
      /** Await it: resolves when the tree is Running. */
      readonly runningTree: Promise<void>;
      readonly stoppedTree: Promise<void>;
      readonly deadTree: Promise<void>;
    }
  }
}
