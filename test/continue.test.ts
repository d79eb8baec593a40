import { expect } from 'chai';
import { TreeStateError, continueTree, getTreeState, stopTree } from '../src/index.js';
import { native, nativeExecutable } from '../src/native.js';
import { observePasses, spawnSupervised, spawnTree } from '../src/testing/index.js';
import { betweenNativePasses, hasExited, waitFor } from './helpers.js';


describe('continue', () => {
  it('resumes every thread of every process, children before their parent, and every heartbeat advances', async () => {
    await using tree = await spawnTree({ depth: 2, fanout: 2, threads: 3 });
    await stopTree(tree.root);
    await tree.assertNoProgress();
    const result = await continueTree(tree.root);
    expect(result.state).to.equal('running');
    expect(result.signalled).to.have.members(tree.pids());
    // Children first: the root is signalled last.
    expect(result.signalled.at(-1)).to.equal(tree.root);
    await expect(tree.root).to.be.a.runningTree;
    await tree.waitProgress();
  });

  it('continues children forked by a non-leader thread', async () => {
    await using tree = await spawnTree({ depth: 2, fanout: 3, threads: 3, forkFromThreads: true });
    await stopTree(tree.root);
    await continueTree(tree.root);
    const status = await getTreeState(tree.root);
    expect(status.state).to.equal('running');
    expect(status.processes).to.have.length(13);
    await tree.waitProgress();
  });

  it('continues through the fallback walk too', async () => {
    await using tree = await spawnTree({ depth: 2, fanout: 2, threads: 2, forkFromThreads: true });
    await stopTree(tree.root);
    const result = await continueTree(tree.root, { scan: true });
    expect(result.walk).to.equal('scan');
    await tree.waitProgress();
  });

  it('reports a thread in ptrace-stop with its tracer instead of claiming success', async () => {
    await using tree = await spawnTree({ depth: 1, fanout: 2 });
    await stopTree(tree.root);
    const leaf = tree.pids()[1]!;
    await using tracer = await spawnSupervised(nativeExecutable('treestate-fixture'), ['--trace', String(leaf)]);
    await waitFor(async () => (await getTreeState(tree.root)).processes.find((p) => p.pid === leaf)?.threads[0]?.state === 't');
    try {
      await continueTree(tree.root);
      expect.fail('continueTree resolved');
    } catch (e) {
      expect(e).to.be.instanceOf(TreeStateError);
      const error = e as TreeStateError;
      expect(error.code).to.equal('ETRACED');
      expect(error.threads).to.deep.equal([{ pid: leaf, tid: leaf, state: 't', tracerPid: tracer.root }]);
      expect(error.message).to.include(`pid ${leaf} (t, traced by ${tracer.root})`);
    }
    // Everything else was continued.
    const status = await getTreeState(tree.root);
    expect(status.processes.filter((p) => p.pid !== leaf).map((p) => p.state)).to.deep.equal(['running', 'running']);
  });

  it('names a non-leader thread in ptrace-stop, though its process was sent SIGCONT', async () => {
    await using tree = await spawnTree({ depth: 1, fanout: 1, threads: 3 });
    await stopTree(tree.root);
    const leaf = tree.pids()[1]!;
    const thread = (await getTreeState(tree.root)).processes.find((p) => p.pid === leaf)!.threads[2]!.tid;
    expect(thread).to.not.equal(leaf);
    await using tracer = await spawnSupervised(nativeExecutable('treestate-fixture'), ['--trace', String(thread)]);
    await waitFor(async () => (await getTreeState(tree.root)).processes.find((p) => p.pid === leaf)?.threads[2]?.state === 't');
    const error = await continueTree(tree.root).then(
      () => expect.fail('continueTree resolved'),
      (e: unknown) => e as TreeStateError,
    );
    expect(error.code).to.equal('ETRACED');
    expect(error.threads).to.deep.equal([{ pid: leaf, tid: thread, state: 't', tracerPid: tracer.root }]);
  });

  it('verifies in the same native call, reading again only what its SIGCONTs did not resume', async () => {
    await using tree = await spawnTree({ depth: 1, fanout: 2, threads: 3 });
    const [root, stopped, running] = tree.pids() as [number, number, number];
    await stopTree(tree.root);
    const addon = native();
    process.kill(running, 'SIGCONT');
    await waitFor(async () => (await getTreeState(tree.root)).processes.find((p) => p.pid === running)?.state === 'running');
    // As continueTree's later passes: only what is stopped is signalled,
    // so `running` is not, and its threads are read again.
    const pass = await addon.walk({ root, kind: 'continue', verify: true });
    expect(pass.signalled).to.deep.equal([stopped, root]);
    const next = pass.verifying!;
    expect(next, 'the follow-up pass').to.not.equal(undefined);
    expect(next.signalled).to.deep.equal([]);
    const states = Object.fromEntries(next.processes.map((p) => [p.pid, p.threads.map((t) => t.state)]));
    // A leader's state is always read; the other threads of a process this
    // call resumed are not (SIGCONT resumed them before kill returned).
    expect(states[stopped]!.slice(1)).to.deep.equal(['+', '+']);
    expect(states[root]!.slice(1)).to.deep.equal(['+', '+']);
    expect(states[running]!.filter((s) => s !== 'S' && s !== 'R')).to.deep.equal([]);
    expect(Object.values(states).flat()).to.not.include('T');
    await expect(tree.root).to.be.a.runningTree;
    // continueTree gets both passes from one native call (the settle looks
    // after it, skipped here, are others).
    await stopTree(tree.root);
    let calls = 0;
    const stop = observePasses({ afterPass: () => void calls++, separateVerify: false });
    try {
      expect((await continueTree(tree.root, { settleMs: 0 })).passes).to.equal(2);
    } finally {
      stop();
    }
    expect(calls).to.equal(1);
    await tree.waitProgress();
  });

  it('reports processes that exit during the continue as exited, not as errors', async () => {
    await using tree = await spawnTree({ depth: 1, fanout: 3, exitOnCont: true });
    await stopTree(tree.root);
    const leaves = tree.pids().slice(1);
    // Each leaf exits as soon as it runs its SIGCONT handler. Holding the
    // continue after its first pass until they have puts the exits between
    // its passes every time (left to chance, the second pass can come first).
    const result = await betweenNativePasses(
      (index) => (index === 0 ? waitFor(() => leaves.every(hasExited), 5000, 'the leaves exiting') : undefined),
      () => continueTree(tree.root),
    );
    expect(result.state).to.equal('running');
    expect(result.passes).to.equal(2);
    expect(result.exited).to.have.members(leaves);
    expect(result.processes).to.deep.equal([tree.root]);
  });

  it('leaves an already running tree running', async () => {
    await using tree = await spawnTree({ depth: 1, fanout: 2 });
    const result = await continueTree(tree.root);
    expect(result.state).to.equal('running');
    expect(result.passes).to.equal(1);
    await tree.waitProgress();
  });
});
