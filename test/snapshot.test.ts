import { expect } from 'chai';
import { readFileSync } from 'node:fs';
import { snapshot } from '../src/index.js';
import { spawnTree, treeSize } from '../src/testing/index.js';
import { countingNativePasses, waitFor } from './helpers.js';

describe('snapshot', () => {
  it('finds every process with pid, ppid, start time, comm and each thread with its state', async () => {
    await using tree = await spawnTree({ depth: 2, fanout: 2, threads: 3 });
    const snap = await snapshot(tree.root);
    expect(snap.root).to.equal(tree.root);
    expect(snap.walk).to.equal('children');
    expect(snap.processes.map((p) => p.pid)).to.have.members(tree.pids());
    const root = snap.processes[0]!;
    expect(root.pid).to.equal(tree.root);
    expect(root.ppid).to.equal(tree.supervisor.pid);
    expect(root.comm).to.equal('treestate-fixtu'); // TASK_COMM_LEN cuts it at 15
    expect(root.startTime).to.be.a('number').above(0);
    for (const p of snap.processes) {
      expect(p.threads).to.have.length(3);
      expect(p.threads[0]!.tid).to.equal(p.pid);
      for (const t of p.threads) expect(t.state).to.match(/^[RSD]$/);
    }
    for (const p of snap.processes.slice(1)) {
      expect(snap.processes.find((q) => q.pid === p.ppid)!.children).to.include(p.pid);
    }
  });

  it('finds children forked by non-leader threads, listed only in those threads\' children files', async () => {
    await using tree = await spawnTree({ depth: 2, fanout: 3, threads: 3, forkFromThreads: true });
    const snap = await snapshot(tree.root);
    expect(snap.processes).to.have.length(treeSize({ depth: 2, fanout: 3 }));
    expect(snap.processes.map((p) => p.pid)).to.have.members(tree.pids());
    // The leader's own children file is empty: a walk that read only it
    // (as pstree_cont.py did) would see the root alone.
    expect(readFileSync(`/proc/${tree.root}/task/${tree.root}/children`, 'utf8').trim()).to.equal('');
  });

  it('gives the same tree through the /proc/*/stat fallback walk', async () => {
    await using tree = await spawnTree({ depth: 2, fanout: 2, threads: 2, forkFromThreads: true });
    const fast = await snapshot(tree.root);
    const scanned = await snapshot(tree.root, { scan: true });
    expect(scanned.walk).to.equal('scan');
    expect(scanned.processes.map((p) => p.pid).sort()).to.deep.equal(fast.processes.map((p) => p.pid).sort());
    expect(scanned.processes.map((p) => p.threads.length)).to.deep.equal(fast.processes.map(() => 2));
  });

  it('includes a zombie child with its Z state', async () => {
    await using tree = await spawnTree({ depth: 0, zombie: true });
    await waitFor(async () => (await snapshot(tree.root)).processes.some((p) => p.state === 'dead'), 5000, 'the child exiting');
    const snap = await snapshot(tree.root);
    const zombie = snap.processes.find((p) => p.pid !== tree.root);
    expect(zombie, 'the unreaped child').to.exist;
    expect(zombie!.state).to.equal('dead');
    expect(zombie!.threads.map((t) => t.state)).to.deep.equal(['Z']);
  });

  it('makes one native call for the whole tree, not one per process', async () => {
    await using tree = await spawnTree({ depth: 3, fanout: 3, threads: 1 });
    const { value: snap, passes } = await countingNativePasses(() => snapshot(tree.root));
    expect(snap.processes).to.have.length(40);
    expect(passes).to.equal(1);
  });
});
