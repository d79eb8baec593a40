import { expect } from 'chai';
import { readFileSync } from 'node:fs';
import { TreeStateError, continueTree, getTreeState, snapshot, stopTree } from '../src/index.js';
import { native, nativeExecutable } from '../src/native.js';
import { spawnSupervised, spawnTree } from '../src/testing/index.js';
import { betweenNativePasses, countingNativePasses, hasExited, readTracer, rejection, statFields, waitFor } from './helpers.js';

describe('stop', () => {
  it('stops every thread of every process, parents first, and the heartbeats freeze', async () => {
    await using tree = await spawnTree({ depth: 2, fanout: 3, threads: 3 });
    const result = await stopTree(tree.root);
    expect(result.state).to.equal('stopped');
    expect(result.signalled).to.have.members(tree.pids());
    expect(result.signalled[0]).to.equal(tree.root);
    const status = await getTreeState(tree.root);
    expect(status.processes).to.have.length(13);
    expect(status.processes.flatMap((p) => p.threads.map((t) => t.state))).to.satisfy((s: string[]) => s.length === 39 && s.every((x) => x === 'T'));
    await expect(tree.root).to.be.a.stoppedTree;
    await tree.assertNoProgress();
  });

  it('stops children forked by non-leader threads', async () => {
    await using tree = await spawnTree({ depth: 2, fanout: 2, threads: 3, forkFromThreads: true });
    await stopTree(tree.root);
    await expect(tree.root).to.be.a.stoppedTree;
    await tree.assertNoProgress();
  });

  it('stops through the fallback walk too', async () => {
    await using tree = await spawnTree({ depth: 2, fanout: 2, threads: 2, forkFromThreads: true });
    const result = await stopTree(tree.root, { scan: true });
    expect(result.walk).to.equal('scan');
    await tree.assertNoProgress();
  });

  it('signals nothing when the tree is already stopped', async () => {
    await using tree = await spawnTree({ depth: 1, fanout: 2 });
    await stopTree(tree.root);
    const again = await stopTree(tree.root);
    expect(again.signalled).to.deep.equal([]);
    expect(again.passes).to.equal(1);
  });

  it('converges on a tree that keeps forking while it is being stopped', async () => {
    await using tree = await spawnTree({ depth: 1, fanout: 2, threads: 2, forkFromThreads: true, storm: true });
    const result = await stopTree(tree.root);
    expect(result.passes).to.be.greaterThan(1);
    const first = await snapshot(tree.root);
    await new Promise((r) => setTimeout(r, 50));
    const second = await snapshot(tree.root);
    expect(second.processes.map((p) => p.pid)).to.deep.equal(first.processes.map((p) => p.pid));
    await expect(tree.root).to.be.a.stoppedTree;
  });

  it('reports processes that exit during the stop as exited, not as errors', async () => {
    await using tree = await spawnTree({ depth: 1, fanout: 2 });
    const [, leaf, other] = tree.pids() as [number, number, number];
    // The leaf is killed after the pass that stops it, before the pass that verifies.
    const result = await betweenNativePasses(async (index) => {
      if (index !== 0) return;
      process.kill(leaf, 'SIGKILL');
      await waitFor(() => hasExited(leaf), 2000, 'the leaf exiting');
    }, () => stopTree(tree.root));
    expect(result.state).to.equal('stopped');
    expect(result.exited).to.deep.equal([leaf]);
    expect(result.processes).to.have.members([tree.root, other]);
  });

  it('never reports a process that is still there as exited, on a tree whose children live for microseconds', async () => {
    await using tree = await spawnTree({ depth: 1, fanout: 2, storm: true });
    const result = await stopTree(tree.root);
    const present = new Set((await snapshot(tree.root)).processes.filter((p) => p.state !== 'dead').map((p) => p.pid));
    for (const pid of result.exited) expect(present.has(pid)).to.equal(false);
    // A stopped tree neither forks nor exits: what the stop reports is what is there.
    expect(result.processes).to.have.members([...present]);
  });

  it('keeps a zombie in the tree without counting it as running', async () => {
    await using tree = await spawnTree({ depth: 1, fanout: 1, zombie: true });
    await waitFor(async () => (await getTreeState(tree.root)).counts.dead === 1, 2000, 'the zombie child');
    const result = await stopTree(tree.root);
    expect(result.state).to.equal('stopped');
    const status = await getTreeState(tree.root);
    expect(status.counts.dead).to.equal(1);
    expect(status.state).to.equal('stopped');
  });

  it('fails with ENOTSETTLED, and resumes what it stopped, when the tree keeps forking new processes', async () => {
    await using tree = await spawnTree({ depth: 1, fanout: 2, storm: true });
    // The root cannot be stopped (its tracer discards stop signals) and forks without pause.
    await using tracer = await spawnSupervised(nativeExecutable('treestate-fixture'), ['--swallow-stops', String(tree.root)]);
    await waitFor(() => readTracer(tree.root) === tracer.root, 2000, 'the tracer attached');
    const e = await rejection(stopTree(tree.root, { maxPasses: 1 }));
    expect(e.code, e.message).to.equal('ENOTSETTLED');
    expect(e.message).to.match(new RegExp(`^the tree of ${tree.root} kept forking new processes through 1 pass; the (1 process it had stopped was|\\d+ processes it had stopped were) resumed$`));
    await tracer.dispose();
    await tree.waitProgress();
  });

  it('refuses a tree with a thread held in ptrace-stop before it signals anything, leaving the tracee\'s pending signals untouched', async () => {
    await using tree = await spawnTree({ depth: 1, fanout: 2 });
    // A traced thread never reaches group-stop while its tracer holds it.
    const leaf = tree.pids()[2]!;
    await using tracer = await spawnSupervised(nativeExecutable('treestate-fixture'), ['--trace', String(leaf)]);
    await waitFor(async () => (await getTreeState(tree.root)).processes.some((p) => p.threads.some((t) => t.state === 't')));
    const pending = () => /ShdPnd:\s*(\w+)/.exec(readFileSync(`/proc/${leaf}/status`, 'utf8'))![1];
    expect(pending()).to.equal('0000000000000000');
    const e = await rejection(stopTree(tree.root, { timeoutMs: 200 }));
    // A signal sent to a tracee waits for its tracer (SIGSTOP, or the rollback's SIGCONT: 0x20000).
    expect(pending()).to.equal('0000000000000000');
    expect(e.code).to.equal('ETRACED');
    expect(e.message).to.equal(`cannot stop the tree of ${tree.root}: pid ${leaf} (t, traced by ${tracer.root}) in ptrace-stop, which a stop cannot end; nothing was signalled`);
    const status = await getTreeState(tree.root);
    expect(status.processes.filter((p) => p.pid !== leaf).every((p) => p.state === 'running')).to.equal(true);
  });

  it('ends ETRACED, without waiting for its timeout, when only a traced leader is left of a stopped process', async () => {
    await using tree = await spawnTree({ depth: 1, fanout: 1, threads: 3 });
    const leaf = tree.pids()[1]!;
    // Only the leader thread is traced, held in ptrace-stop: the stop's
    // looks before it signals see it, and it refuses at once.
    await using tracer = await spawnSupervised(nativeExecutable('treestate-fixture'), ['--trace', String(leaf)]);
    await waitFor(async () => (await getTreeState(tree.root)).processes.find((p) => p.pid === leaf)?.threads[0]?.state === 't');
    const error = await stopTree(tree.root, { timeoutMs: 30_000 }).then(
      () => expect.fail('stopTree resolved'),
      (e: unknown) => e as TreeStateError,
    );
    expect(error.code).to.equal('ETRACED');
    expect(error.threads).to.deep.equal([{ pid: leaf, tid: leaf, state: 't', tracerPid: tracer.root }]);
    await tracer.dispose();
    await tree.waitProgress();
  });

  it('fails fast with EVFORK, naming the parent, when a parent waits in vfork for a child the stop stopped, and resumes the tree', async () => {
    await using tree = await spawnTree({ depth: 1, fanout: 2, vforkHold: true });
    await waitFor(async () => (await getTreeState(tree.root)).processes[0]!.threads[0]!.state === 'D', 5000, 'the root in vfork');
    const started = performance.now();
    const e = await rejection(stopTree(tree.root, { timeoutMs: 10_000 }));
    expect(performance.now() - started, 'well before the 10 s timeout').to.be.below(3000);
    expect(e.code, e.message).to.equal('EVFORK');
    expect(e.pids).to.deep.equal([tree.root]);
    expect(e.message).to.match(new RegExp(`^cannot stop the tree of ${tree.root}: ${tree.root} waits in vfork for a stopped child, .*; the children it had stopped were resumed 3 times to let it exec, and it did not; the \\d+ processes it had stopped were resumed$`));
    // The root stays in vfork (its child never execs); everything else runs again.
    await tree.waitProgress({ except: [tree.root] });
    const status = await getTreeState(tree.root);
    expect(status.processes.filter((p) => p.pid !== tree.root).every((p) => p.state === 'running')).to.equal(true);
  });

  it('stops a parent caught in vfork (a posix_spawn between vfork and exec): resumes the child it stopped, which execs, and ends with the tree stopped', async () => {
    await using tree = await spawnTree({ depth: 1, fanout: 2, vforkExecOnCont: true });
    await waitFor(async () => (await getTreeState(tree.root)).processes[0]!.threads[0]!.state === 'D', 5000, 'the root in vfork');
    const result = await stopTree(tree.root, { timeoutMs: 10_000 });
    expect(result.state).to.equal('stopped');
    expect(result.alreadyStopped).to.deep.equal([]);
    const after = await snapshot(tree.root);
    // The vfork child ran on to its exec (only a SIGCONT lets it), and the stop stopped the program it became.
    const execed = after.processes.filter((p) => p.ppid === tree.root && p.comm === 'sleep');
    expect(execed, 'the vfork child, now sleep').to.have.lengthOf(1);
    expect(after.processes.flatMap((p) => p.threads.map((t) => `${p.pid}/${t.tid} ${t.state}`)).filter((t) => !t.endsWith(' T'))).to.deep.equal([]);
    await tree.assertNoProgress({ forMs: 50 });
    await continueTree(tree.root);
    await tree.waitProgress();
  });

  it('never resumes a vfork child the application stopped itself: EVFORK says so, and the child stays stopped', async () => {
    await using tree = await spawnTree({ depth: 1, fanout: 2, vforkExecOnCont: true, vforkChildStops: true });
    await waitFor(async () => {
      const s = await snapshot(tree.root);
      return s.processes[0]!.threads[0]!.state === 'D' && s.processes.some((p) => p.ppid === tree.root && p.threads[0]!.state === 'T');
    }, 5000, 'the root in vfork, its child stopped by itself');
    const child = (await snapshot(tree.root)).processes.find((p) => p.ppid === tree.root && p.threads[0]!.state === 'T')!.pid;
    const e = await rejection(stopTree(tree.root, { timeoutMs: 10_000 }));
    expect(e.code, e.message).to.equal('EVFORK');
    expect(e.pids).to.deep.equal([tree.root]);
    expect(e.message).to.match(new RegExp(`^cannot stop the tree of ${tree.root}: ${tree.root} waits in vfork for a stopped child, .*; ${child} is stopped, not by this stop \\(by the application, say\\), and a stop resumes only what it stopped; the \\d+ processes it had stopped were resumed$`));
    // The application's stop is kept: the child is still stopped, before its exec, and the rest runs.
    expect(statFields(child)[0]).to.equal('T');
    expect(readFileSync(`/proc/${child}/comm`, 'utf8').trim()).to.equal('treestate-fixtu');
    await tree.waitProgress({ except: [tree.root] });
  });

  it('does not read the other threads of a process it stops behind a running leader, and verifies them after', async () => {
    await using tree = await spawnTree({ depth: 1, fanout: 2, threads: 3 });
    const addon = native();
    const pass = await addon.walk({ root: tree.root, kind: 'stop', first: true });
    expect(pass.signalled).to.deep.equal(tree.pids());
    // Signalled whatever they were doing: their states were not read ('?').
    for (const p of pass.processes) expect(p.threads.map((t) => t.state).slice(1)).to.deep.equal(['?', '?']);
    await waitFor(async () => (await getTreeState(tree.root)).state === 'stopped', 5000, 'every thread in group-stop');
    // A stop now reads every thread (the leaders are stopped) and has nothing to do.
    const result = await stopTree(tree.root);
    expect(result.signalled).to.deep.equal([]);
    expect(result.passes).to.equal(1);
  });

  it('signals through pidfds in one native pass per round, whatever the tree size', async () => {
    await using tree = await spawnTree({ depth: 3, fanout: 3 });
    const { value: result, passes } = await countingNativePasses(() => stopTree(tree.root));
    expect(passes).to.equal(result.passes);
    expect(result.processes).to.have.length(40);
    expect(passes).to.be.below(10);
  });
});

