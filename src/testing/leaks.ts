// Nothing left behind: after each test, every supervisor must be disposed and
// the test process must have no descendant (running or zombie) that was not
// there before the test began (a loader's service process, say).
import { TreeStateError, describePids, plural } from '../errors.js';
import { snapshot } from '../tree.js';
import { liveSupervisors } from './supervisor.js';

async function descendants(): Promise<Map<number, { comm: string; startTime: number; zombie: boolean }>> {
  const own = await snapshot(process.pid);
  return new Map(own.processes.filter((p) => p.pid !== process.pid).map((p) => [p.pid, { comm: p.comm, startTime: p.startTime, zombie: p.state === 'dead' }]));
}

let baseline = new Map<number, { startTime: number }>();

/** Records what exists now, so that `checkNoLeaks` blames only what came after. */
export async function recordBaseline(): Promise<void> {
  baseline = await descendants();
}

/** Disposes what a test left behind and rejects naming it; resolves if nothing was left. */
export async function checkNoLeaks(): Promise<void> {
  const left = liveSupervisors();
  await Promise.all(left.map((s) => s.dispose()));
  const problems: string[] = [];
  if (left.length > 0) {
    problems.push(`left ${plural(left.length, 'supervised tree')} running: ${left.map((s) => `${s.command[0]?.split('/').pop()} (root ${s.root})`).join(', ')}`);
  }
  const strays = [...(await descendants())].filter(([pid, p]) => baseline.get(pid)?.startTime !== p.startTime);
  if (strays.length > 0) {
    problems.push(`left processes behind: ${describePids(strays.map(([pid, p]) => `${pid} ${p.comm}${p.zombie ? ' (zombie)' : ''}`))}`);
  }
  if (problems.length > 0) throw new TreeStateError('ELEAK', `the test ${problems.join('; ')}`, { pids: strays.map(([pid]) => pid) });
}

/** A mocha root hook plugin: `--require treestate/testing` (or list it in .mocharc) fails a test that leaks. */
export const mochaHooks = {
  async beforeEach(): Promise<void> {
    await recordBaseline();
  },
  async afterEach(): Promise<void> {
    await checkNoLeaks();
  },
};
