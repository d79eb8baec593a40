import { expect } from 'chai';
import { getTreeState, stopTree } from '../src/index.js';
import { spawnTree } from '../src/testing/index.js';

describe('stop', () => {
  it('stops every thread of every process, parents first, and the heartbeats freeze', async () => {
    await using tree = await spawnTree({ depth: 2, fanout: 3, threads: 3 });
    const result = await stopTree(tree.root);
    expect(result.state).to.equal('stopped');
    expect(result.signalled).to.have.members(tree.pids());
    const status = await getTreeState(tree.root);
    expect(status.processes).to.have.length(13);
    expect(status.processes.flatMap((p) => p.threads.map((t) => t.state))).to.satisfy((s: string[]) => s.length === 39 && s.every((x) => x === 'T'));
    await expect(tree.root).to.be.a.stoppedTree;
    await tree.assertNoProgress();
  });
});
