import { expect } from 'chai';
import { TreeStateError, continueTree, getTreeState, killTree, stopTree, waitForState } from '../src/index.js';
import { native } from '../src/native.js';
import { spawnTree } from '../src/testing/index.js';
import { waitFor } from './helpers.js';

describe('status and wait', () => {
  it('says running, stopped and dead as the tree moves', async () => {
    await using tree = await spawnTree({ depth: 1, fanout: 2, threads: 2 });
    expect((await getTreeState(tree.root)).state).to.equal('running');
    await stopTree(tree.root);
    const stopped = await getTreeState(tree.root);
    expect(stopped.state).to.equal('stopped');
    expect(stopped.counts).to.deep.equal({ running: 0, stopped: 6, traced: 0, dead: 0 });
    await killTree(tree.root);
    expect((await waitForState(tree.root, 'dead')).state).to.equal('dead');
  });

  it('says mixed, naming the processes and threads that differ', async () => {
    await using tree = await spawnTree({ depth: 1, fanout: 3, threads: 2 });
    const [, a] = tree.pids();
    const startTime = (await getTreeState(a!)).processes[0]!.startTime;
    await native().signalList([{ pid: a!, startTime }], native().signals.SIGSTOP, false, []);
    // Group-stop reaches the second thread a moment after the first.
    await waitFor(async () => (await getTreeState(a!)).state === 'stopped', 2000, 'both threads of the stopped child in T');
    const status = await getTreeState(tree.root);
    expect(status.state).to.equal('mixed');
    expect(status.differing.map((t) => t.pid)).to.deep.equal([a, a]);
    expect(status.differing.every((t) => t.state === 'T')).to.equal(true);
    expect(status.processes.find((p) => p.pid === a)!.state).to.equal('stopped');
  });

  it('waits until the tree reaches a state', async () => {
    await using tree = await spawnTree({ depth: 1, fanout: 2 });
    const waiting = waitForState(tree.root, 'stopped', { timeoutMs: 5000 });
    await new Promise((r) => setTimeout(r, 30));
    await stopTree(tree.root);
    expect((await waiting).state).to.equal('stopped');
    await continueTree(tree.root);
  });

  it('times out with ETIMEDOUT saying what the tree is instead', async () => {
    await using tree = await spawnTree({ depth: 1, fanout: 1 });
    try {
      await waitForState(tree.root, 'stopped', { timeoutMs: 50 });
      expect.fail('waitForState resolved');
    } catch (e) {
      expect(e).to.be.instanceOf(TreeStateError);
      expect((e as TreeStateError).code).to.equal('ETIMEDOUT');
      expect((e as TreeStateError).message).to.match(new RegExp(`the tree of ${tree.root} is running, not stopped, after 50 ms: pid ${tree.root} \\([RS]\\)`));
    }
  });

  it('rejects an unknown state', async () => {
    await using tree = await spawnTree({ depth: 0 });
    try {
      await waitForState(tree.root, 'asleep' as 'running');
      expect.fail('resolved');
    } catch (e) {
      expect((e as TreeStateError).code).to.equal('EINVAL');
    }
  });
});
