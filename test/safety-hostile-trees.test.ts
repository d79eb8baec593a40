// Safety: a hostile tree cannot defeat a kill. A process with more threads
// than the program has descriptors used to make every read fail (EMFILE),
// and a kill then resumed the tree; a root that cannot be stopped and forks
// without pause used to fork children while the kill ran children first,
// and they outlived it as orphans.
import { expect } from 'chai';
import { readdirSync } from 'node:fs';
import { killTree, snapshot } from '../src/index.js';
import { nativeExecutable } from '../src/native.js';
import { spawnSupervised, spawnTree, type Supervisor } from '../src/testing/index.js';
import { cli, hasExited, readTracer, statFields, waitFor } from './helpers.js';

function pause(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Live processes held by a reaper (it adopts every orphan of its tree), the reaper itself excluded. */
async function survivors(supervisor: Supervisor): Promise<string[]> {
  const held = await snapshot(supervisor.pid);
  return held.processes.filter((p) => p.pid !== supervisor.pid && p.state !== 'dead').map((p) => `${p.pid} ${p.comm} (${p.threads.map((t) => t.state).join('')})`);
}

describe('safety: hostile trees', function () {
  this.timeout(120_000);

  it('status, stop, cont and kill a process of 600 threads with 1024 descriptors', async () => {
    await using tree = await spawnTree({ depth: 1, fanout: 1, threads: 600, intervalMs: 20 });
    await waitFor(() => readdirSync(`/proc/${tree.root}/task`).length === 600, 10_000, '600 threads');
    const limit = { fdLimit: 1024 };
    const status = await cli(['status', String(tree.root), '--json'], limit);
    expect(status.code, status.stderr).to.equal(0);
    expect(JSON.parse(status.stdout).processes.map((p: { threads: unknown[] }) => p.threads.length)).to.deep.equal([600, 600]);
    const stop = await cli(['stop', String(tree.root)], limit);
    expect(stop.code, stop.stderr).to.equal(0);
    await expect(tree.root).to.be.a.stoppedTree;
    await tree.assertNoProgress();
    const cont = await cli(['cont', String(tree.root)], limit);
    expect(cont.code, cont.stderr).to.equal(0);
    await tree.waitProgress();
    const pids = tree.pids();
    const kill = await cli(['kill', String(tree.root)], limit);
    expect(kill.code, kill.stderr).to.equal(0);
    for (const pid of pids) expect(hasExited(pid), `pid ${pid}`).to.equal(true);
  });

  it('a kill that runs out of descriptors never resumes what its stop stopped, nor orphans what it could not read', async () => {
    // From comfortable down to a limit Node itself barely starts with: each
    // kill either kills the whole tree, or fails naming EMFILE having
    // resumed nothing, and every process it did not kill is still in the
    // tree (no parent was killed above a child it could not read).
    let failed = 0;
    for (let limit = 30; limit >= 19; limit--) {
      await using tree = await spawnTree({ depth: 1, fanout: 4, threads: 3, intervalMs: 20 });
      const pids = tree.pids();
      const parents = new Map(pids.map((pid) => [pid, Number(statFields(pid)[1])]));
      const kill = await cli(['kill', String(tree.root)], { fdLimit: limit });
      if (kill.code === 0) {
        for (const pid of pids) expect(hasExited(pid), `pid ${pid} after a kill with ${limit} fds`).to.equal(true);
        continue;
      }
      failed++;
      expect(kill.stderr, `kill with ${limit} fds`).to.match(/too many open files|EMFILE/i);
      expect(kill.stderr, `kill with ${limit} fds`).to.not.match(/were resumed/);
      for (const pid of pids.filter((p) => !hasExited(p))) {
        expect(Number(statFields(pid)[1]), `the parent of ${pid}, alive after a kill with ${limit} fds failed`).to.equal(parents.get(pid));
      }
    }
    expect(failed, 'kills that ran out of descriptors').to.be.greaterThan(0);
  });

  it('kills a tree of more processes than it has descriptors, and proves each one dead', async () => {
    // Pins, the walk cache and the pidfds that wait for the exits all stay
    // within the limit; no process is reported alive (or escaped) for want
    // of a descriptor to watch it with.
    await using tree = await spawnTree({ depth: 4, fanout: 3, intervalMs: 50 });
    const pids = tree.pids();
    expect(pids).to.have.length(121);
    const kill = await cli(['kill', String(tree.root)], { fdLimit: 64 });
    expect(kill.code, kill.stderr).to.equal(0);
    for (const pid of pids) expect(hasExited(pid), `pid ${pid}`).to.equal(true);
  });

  it('kills a forking root that cannot be stopped, leaving no process of it alive anywhere, in each of 10 trials', async () => {
    // The root forks long-lived children without pause and its tracer
    // swallows every stop, so the stop cannot finish: the kill must go on
    // while it forks. Every orphan lands in the supervisor's reaper, so a
    // live process there is one that escaped the kill.
    for (let trial = 0; trial < 10; trial++) {
      await using storm = await spawnSupervised('sh', ['-c', 'while :; do sleep 1000 & done']);
      await using tracer = await spawnSupervised(nativeExecutable('treestate-fixture'), ['--swallow-stops', String(storm.root)]);
      await waitFor(() => readTracer(storm.root) === tracer.root, 2000, 'the tracer attached');
      // A big tree takes the kill a while to walk: time for the root to fork.
      await waitFor(async () => (await snapshot(storm.root)).processes.length > 200, 10_000, 'the storm');
      const result = await killTree(storm.root, { timeoutMs: 10_000, maxPasses: 3 });
      expect(result.state, `trial ${trial}`).to.equal('dead');
      await pause(5);
      expect(await survivors(storm), `trial ${trial}: alive after the kill`).to.deep.equal([]);
    }
  });
});
