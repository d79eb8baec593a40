import { expect } from 'chai';
import { getTreeState, killTree, snapshot, stopTree } from '../src/index.js';
import { native, nativeExecutable } from '../src/native.js';
import { killSession } from '../src/transitions.js';
import { observePasses, spawnSupervised, spawnTree } from '../src/testing/index.js';
import { betweenNativePasses, countingNativePasses, hasExited, waitFor } from './helpers.js';

describe('kill', () => {
  it('says which walk found the tree: scan with { scan: true }, children files otherwise', async () => {
    await using scanned = await spawnTree({ depth: 1, fanout: 2 });
    expect((await killTree(scanned.root, { scan: true })).walk).to.equal('scan');
    await using walked = await spawnTree({ depth: 1, fanout: 2 });
    expect((await killTree(walked.root)).walk).to.equal('children');
  });

  it('sweeps the session of a root that leads one when a killed process exited before its children could be listed again', async () => {
    // The race itself (a child forked in the microseconds before the SIGKILL,
    // its parent gone before the relisting) is exercised by the hostile-trees
    // test; here its report is placed on a pass, and the unseen child is
    // real: a sleep of the root's session that left the tree by a double fork.
    const orphanOf = async (sup: { root: number; pid: number }) => {
      let orphan = 0;
      await waitFor(async () => {
        orphan = (await getTreeState(sup.pid)).processes.find((p) => p.comm === 'sleep' && p.ppid === sup.pid && p.pid !== sup.root)?.pid ?? 0;
        return orphan > 0;
      }, 5000, 'the orphan under the reaper');
      expect((await getTreeState(sup.root)).processes.map((p) => p.pid)).to.not.include(orphan);
      return orphan;
    };
    const script = '(sleep 1000 &); exec sleep 1000';
    // Without a reported race the kill leaves what left the tree alone.
    await using plain = await spawnSupervised('sh', ['-c', script]);
    const left = await orphanOf(plain);
    expect((await killTree(plain.root)).state).to.equal('dead');
    expect(hasExited(left), 'the orphan without a race').to.equal(false);
    // With one, the session is swept: the orphan dies with the tree.
    await using raced = await spawnSupervised('sh', ['-c', script]);
    const orphan = await orphanOf(raced);
    const stop = observePasses({
      afterPass: (pass, request) => {
        if (request.kind?.startsWith('kill') && pass.processes[0]?.pid === raced.root) pass.unlisted.push(raced.root);
      },
    });
    try {
      expect((await killTree(raced.root)).state).to.equal('dead');
    } finally {
      stop();
    }
    await waitFor(() => hasExited(orphan), 2000, 'the orphan killed through the session');
  });

  it('killSession removes what is left of a session after its leader\'s tree, and nothing outside it', async () => {
    await using sup = await spawnSupervised('sh', ['-c', '(sleep 1000 &); exec sleep 1000']);
    let orphan = 0;
    await waitFor(async () => {
      orphan = (await getTreeState(sup.pid)).processes.find((p) => p.comm === 'sleep' && p.ppid === sup.pid && p.pid !== sup.root)?.pid ?? 0;
      return orphan > 0;
    }, 5000, 'the orphan under the reaper');
    const born = (await snapshot(sup.root)).processes[0]!.startTime;
    expect((await killTree(sup.root)).state).to.equal('dead');
    expect(hasExited(orphan), 'the orphan left the tree, so the kill of the tree leaves it').to.equal(false);
    // Born after the leader: a member that started before it could only be of an older session of that pid.
    expect(await killSession(sup.root, (await snapshot(orphan)).processes[0]!.startTime + 1)).to.deep.equal([]);
    expect(hasExited(orphan), 'a member older than `born` is left').to.equal(false);
    expect(await killSession(sup.root, born)).to.deep.equal([]);
    await waitFor(() => hasExited(orphan), 2000, 'the orphan killed through the session');
    expect(hasExited(sup.pid), 'the reaper, outside the session').to.equal(false);
  });

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

  // The root exits while it is being killed: its children move to the
  // subreaper (the harness's reaper) and no walk from the root finds them.
  // They were in the tree when the kill began, so the kill finds them by
  // identity and kills them; it used to resume them and fail with ESRCH.
  it('kills the children of a root that exits during the stop phase, where they moved', async () => {
    await using tree = await spawnTree({ depth: 2, fanout: 2, threads: 2 });
    const pids = tree.pids();
    const result = await betweenNativePasses(async (index) => {
      if (index !== 0) return;
      process.kill(tree.root, 'SIGKILL');
      await waitFor(() => hasExited(tree.root), 2000, 'the root exiting');
    }, () => killTree(tree.root));
    expect(result.state).to.equal('dead');
    expect(result.exited).to.have.members(pids);
    for (const pid of pids) expect(hasExited(pid), `pid ${pid}`).to.equal(true);
  });

  it('kills the children of a root that exits between the stop and the kill', async () => {
    await using tree = await spawnTree({ depth: 2, fanout: 2, threads: 2 });
    const pids = tree.pids();
    let killedRoot = false;
    const result = await betweenNativePasses(async (_index, pass, options) => {
      // A stop pass that signals nothing found every thread stopped: the stop is done.
      if (killedRoot || options.kind !== 'stop' || pass.signalled.length > 0) return;
      killedRoot = true;
      process.kill(tree.root, 'SIGKILL');
      await waitFor(() => hasExited(tree.root), 2000, 'the root exiting');
    }, () => killTree(tree.root));
    expect(killedRoot).to.equal(true);
    expect(result.state).to.equal('dead');
    expect(result.exited).to.have.members(pids);
    for (const pid of pids) expect(hasExited(pid), `pid ${pid}`).to.equal(true);
  });

  it('kills a tree whose stop cannot finish without resuming what the stop reached', async () => {
    await using tree = await spawnTree({ depth: 1, fanout: 2, threads: 2 });
    // A traced leaf never reaches group-stop: the stop ends ETRACED. A stop
    // on its own resumes the rest then (a signalList of SIGCONT); a kill
    // must not, or the resumed processes could fork children it misses.
    const leaf = tree.pids()[2]!;
    await using tracer = await spawnSupervised(nativeExecutable('treestate-fixture'), ['--trace', String(leaf)]);
    await waitFor(async () => (await getTreeState(tree.root)).processes.some((p) => p.threads.some((t) => t.state === 't')));
    const { SIGCONT } = native().signals;
    const resumed: number[][] = [];
    const stop = observePasses({
      afterSignalList: (_outcome, { targets, signal }) => {
        if (signal === SIGCONT) resumed.push(targets.map((t) => t.pid));
      },
    });
    try {
      const result = await killTree(tree.root, { timeoutMs: 5000 });
      expect(result.state).to.equal('dead');
    } finally {
      stop();
    }
    expect(resumed, 'processes resumed before the kill').to.deep.equal([]);
    await expect(tree.root).to.be.a.deadTree;
    await tracer.dispose();
  });

  it('kills a tree whose root is in uninterruptible sleep without waiting for it to stop first', async () => {
    // The root waits in vfork (D): no stop reaches it, SIGKILL does. A stop
    // would wait for it until its timeout; a kill only needs the rest not to
    // fork away, so it gives up on the D thread after a few passes and kills.
    // With other threads beside it the root never stops at all (the kernel
    // handed the SIGSTOP to the thread in vfork, the others sleep on): the
    // kill gives up on that whole process the same way.
    await using tree = await spawnTree({ depth: 1, fanout: 2, threads: 3, vforkHold: true });
    await waitFor(async () => (await getTreeState(tree.root)).processes[0]!.threads[0]!.state === 'D', 5000, 'the root in vfork');
    const { value: result, passes } = await countingNativePasses(() => killTree(tree.root, { timeoutMs: 10_000 }));
    expect(result.state).to.equal('dead');
    expect(passes, 'passes before and during the kill (waiting out the stop timeout takes hundreds)').to.be.below(30);
    await expect(tree.root).to.be.a.deadTree;
  });
});
