// Nothing left behind: after each test, every supervisor must be disposed and
// the test process must have no other child processes (running or zombie).
import { TreeStateError, describePids } from '../errors.js';
import { snapshot } from '../tree.js';
import { liveSupervisors } from './supervisor.js';

/** Disposes what a test left behind and rejects naming it; resolves if nothing was left. */
export async function checkNoLeaks(): Promise<void> {
  const left = liveSupervisors();
  await Promise.all(left.map((s) => s.dispose()));
  const problems: string[] = [];
  if (left.length > 0) {
    problems.push(`left ${left.length} supervised tree(s) running: ${left.map((s) => `${s.command[0]?.split('/').pop()} (root ${s.root})`).join(', ')}`);
  }
  const strays = (await snapshot(process.pid)).processes.filter((p) => p.pid !== process.pid);
  if (strays.length > 0) {
    const what = strays.map((p) => `${p.pid} ${p.comm}${p.state === 'dead' ? ' (zombie)' : ''}`);
    problems.push(`left processes behind: ${describePids(what)}`);
  }
  if (problems.length > 0) throw new TreeStateError('ELEAK', `the test ${problems.join('; ')}`, { pids: strays.map((p) => p.pid) });
}

/** A mocha root hook plugin: `--require treestate/testing` (or list it in .mocharc) fails a test that leaks. */
export const mochaHooks = {
  async afterEach(): Promise<void> {
    await checkNoLeaks();
  },
};
