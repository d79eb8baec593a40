// Nothing left behind: after each test, every supervisor must be disposed and
// the test process must have no descendant (running or zombie) that was not
// there before the test began (a loader's service process, say). What is
// left is killed and reaped, then reported.
import { readFileSync } from 'node:fs';
import { TreeStateError, describePids, hasCode, plural } from '../errors.js';
import { killTree } from '../transitions.js';
import { snapshot } from '../tree.js';
import { checkAssertionsAwaited } from './assertions.js';
import { liveSupervisors } from './supervisor.js';

interface Descendant {
  ppid: number;
  comm: string;
  startTime: number;
  zombie: boolean;
}

async function descendants(): Promise<Map<number, Descendant>> {
  const own = await snapshot(process.pid);
  return new Map(own.processes.filter((p) => p.pid !== process.pid).map((p) => [p.pid, { ppid: p.ppid, comm: p.comm, startTime: p.startTime, zombie: p.state === 'dead' }]));
}

let baseline = new Map<number, { startTime: number }>();

/** Records what exists now, so that `checkNoLeaks` blames only what came after. */
export async function recordBaseline(): Promise<void> {
  baseline = await descendants();
}

/**
 * A loader's own service, not the test's: tsx (and other esbuild-based
 * loaders) start `esbuild --service` as a child of the test process the
 * first time a module is loaded with import() — which happens inside a test
 * when the code under test loads a module lazily (treestate's own CLI does).
 * It lives as long as the loader wants it, and killing it would break the
 * loader.
 */
function loaderService(pid: number, p: Descendant): boolean {
  if (p.ppid !== process.pid || p.comm !== 'esbuild') return false;
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').some((arg) => arg.startsWith('--service'));
  } catch {
    return false;
  }
}

async function strays(): Promise<Array<[number, Descendant]>> {
  return [...(await descendants())].filter(([pid, p]) => baseline.get(pid)?.startTime !== p.startTime && !loaderService(pid, p));
}

/**
 * Kills what a test left (each stray subtree whole, so nothing forks away
 * meanwhile) and waits until it is reaped: by the test process for its own
 * children (Node reaps what it spawned), by init or a subreaper for the
 * others once their parent is dead. Returns what is still there after
 * `timeoutMs`.
 */
async function killAndReap(left: Array<[number, Descendant]>, timeoutMs = 5000): Promise<number[]> {
  const pids = new Set(left.map(([pid]) => pid));
  for (const [pid, p] of left) {
    if (pids.has(p.ppid) || p.zombie) continue; // killed with its parent's subtree, or dead already
    try {
      await killTree(pid, { timeoutMs });
    } catch (e) {
      if (!hasCode(e, 'ESRCH')) throw e;
    }
  }
  const identity = new Map(left.map(([pid, p]) => [pid, p.startTime]));
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const still = [...(await descendants())].filter(([pid, p]) => identity.get(pid) === p.startTime).map(([pid]) => pid);
    if (still.length === 0 || Date.now() > deadline) return still;
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/** Disposes and kills what a test left behind, reaps it, and rejects naming it; resolves if nothing was left. */
export async function checkNoLeaks(): Promise<void> {
  const left = liveSupervisors();
  await Promise.all(left.map((s) => s.dispose()));
  const problems: string[] = [];
  if (left.length > 0) {
    problems.push(`left ${plural(left.length, 'supervised tree')} running: ${left.map((s) => `${s.command[0]?.split('/').pop()} (root ${s.root})`).join(', ')}`);
  }
  const found = await strays();
  if (found.length > 0) {
    const unreaped = await killAndReap(found);
    const note = unreaped.length ? `; ${describePids(unreaped)} could not be reaped (a zombie child of the test process that Node did not spawn?)` : ' (killed and reaped)';
    problems.push(`left processes behind: ${describePids(found.map(([pid, p]) => `${pid} ${p.comm}${p.zombie ? ' (zombie)' : ''}`))}${note}`);
  }
  if (problems.length > 0) throw new TreeStateError('ELEAK', `the test ${problems.join('; ')}`, { pids: found.map(([pid]) => pid) });
}

/**
 * A mocha root hook plugin: `--require treestate/testing` (or list it in
 * .mocharc) fails a test that leaks a process (and kills and reaps it), or
 * that did not await a chai tree assertion.
 */
export const mochaHooks = {
  async beforeEach(): Promise<void> {
    await recordBaseline();
  },
  async afterEach(): Promise<void> {
    const results = await Promise.allSettled([checkNoLeaks(), checkAssertionsAwaited()]);
    const failures = results.flatMap((r) => (r.status === 'rejected' ? [r.reason as Error] : []));
    if (failures.length === 1) throw failures[0];
    if (failures.length > 1) throw new TreeStateError((failures[0] as TreeStateError).code, failures.map((f) => f.message).join('; and '), { cause: failures });
  },
};
