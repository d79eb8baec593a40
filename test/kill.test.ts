import { expect } from 'chai';
import { getTreeState, killTree, snapshot, stopTree } from '../src/index.js';
import { spawnTree } from '../src/testing/index.js';

describe('kill', () => {
  it('kills every process of a running tree and waits until all are gone', async () => {
    await using tree = await spawnTree({ depth: 2, fanout: 3, threads: 2, forkFromThreads: true });
    const pids = tree.pids();
    const result = await killTree(tree.root);
    expect(result.state).to.equal('dead');
    expect(result.exited).to.include.members(pids);
    for (const pid of pids) {
      // gone, or at most a zombie waiting for the reaper
      const state = await getTreeState(pid).then((s) => s.state, () => 'dead');
      expect(state, `pid ${pid}`).to.equal('dead');
    }
    await expect(tree.root).to.be.a.deadTree;
  });

  it('kills a stopped tree', async () => {
    await using tree = await spawnTree({ depth: 1, fanout: 2, threads: 2 });
    await stopTree(tree.root);
    await killTree(tree.root);
    await expect(tree.root).to.be.a.deadTree;
  });

  it('kills a tree that keeps forking, leaving no survivor', async () => {
    await using tree = await spawnTree({ depth: 1, fanout: 2, threads: 2, forkFromThreads: true, storm: true });
    const before = await snapshot(tree.root);
    await killTree(tree.root);
    await expect(tree.root).to.be.a.deadTree;
    for (const p of before.processes) {
      const alive = await getTreeState(p.pid).then((s) => s.state !== 'dead' && s.processes[0]!.startTime === p.startTime, () => false);
      expect(alive, `pid ${p.pid}`).to.equal(false);
    }
  });
});
