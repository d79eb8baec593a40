// The passes of one operation share a walk cache: the tree's /proc files stay
// open between passes and are read again with pread. What a later pass reads
// through them must be as fresh as a first look, and the cache must stay
// within its bound and close everything when released.
import { readdirSync } from 'node:fs';
import { expect } from 'chai';
import { native, type NativeWalkResult } from '../src/native.js';
import { spawnSupervised, spawnTree } from '../src/testing/index.js';
import { statFields, waitFor } from './helpers.js';

function openFds(): number {
  return readdirSync('/proc/self/fd').length;
}

function stateOf(pid: number): string {
  return statFields(pid)[0]!;
}

function pidsIn(pass: NativeWalkResult): number[] {
  return pass.processes.map((p) => p.pid).sort((a, b) => a - b);
}

describe('walk cache', function () {
  this.timeout(30_000);

  it('keeps the files of a pass open, and a later pass reads fresh thread states through them', async () => {
    await using tree = await spawnTree({ depth: 1, fanout: 2, threads: 3 });
    const leaf = tree.pids().find((pid) => pid !== tree.root)!;
    const cache = native().createWalkCache();
    try {
      const before = openFds();
      const first = await native().walk({ root: tree.root, cache });
      // 3 processes x 3 threads: at least a pin, a stat file and a children file each.
      expect(openFds() - before, 'files kept open by the first pass').to.be.at.least(9);
      expect(first.processes.flatMap((p) => p.threads.map((t) => t.state))).to.not.include('T');

      process.kill(leaf, 'SIGSTOP');
      await waitFor(() => stateOf(leaf) === 'T', 5000, 'the leaf stops');
      const second = await native().walk({ root: tree.root, cache });
      const stopped = second.processes.find((p) => p.pid === leaf)!;
      expect(stopped.threads).to.have.length(3);
      for (const t of stopped.threads) expect(t.state, `thread ${t.tid} of the stopped leaf`).to.equal('T');
      for (const p of second.processes.filter((p) => p.pid !== leaf)) {
        for (const t of p.threads) expect(t.state, `thread ${t.tid} of ${p.pid}`).to.not.equal('T');
      }

      process.kill(leaf, 'SIGCONT');
      await waitFor(() => stateOf(leaf) !== 'T', 5000, 'the leaf resumes');
      const third = await native().walk({ root: tree.root, cache });
      for (const t of third.processes.find((p) => p.pid === leaf)!.threads) expect(t.state).to.not.equal('T');
    } finally {
      native().releaseWalkCache(cache);
    }
  });

  it('sees children that appear and processes that are reaped between passes', async () => {
    await using supervisor = await spawnSupervised('sleep', ['600']);
    const cache = native().createWalkCache();
    try {
      const first = await native().walk({ root: supervisor.pid, cache });
      expect(pidsIn(first)).to.deep.equal([supervisor.pid, supervisor.root].sort((a, b) => a - b));

      const added = await supervisor.run('sleep', ['600'], { out: '/dev/null' });
      const second = await native().walk({ root: supervisor.pid, cache });
      expect(pidsIn(second)).to.deep.equal([supervisor.pid, supervisor.root, added.pid].sort((a, b) => a - b));

      process.kill(supervisor.root, 'SIGKILL');
      await supervisor.exited(supervisor.root);
      const third = await native().walk({ root: supervisor.pid, cache });
      expect(pidsIn(third)).to.deep.equal([supervisor.pid, added.pid].sort((a, b) => a - b));
    } finally {
      native().releaseWalkCache(cache);
    }
  });

  it('stays within its bound of files, still reads the whole tree, and closes every file when released', async () => {
    await using tree = await spawnTree({ depth: 2, fanout: 3 });
    const baseline = openFds();
    const cache = native().createWalkCache(10);
    const first = await native().walk({ root: tree.root, cache });
    expect(first.processes).to.have.length(13);
    expect(openFds() - baseline, 'files kept with a bound of 10').to.be.within(1, 10);
    const second = await native().walk({ root: tree.root, cache });
    expect(pidsIn(second)).to.deep.equal(pidsIn(first));
    native().releaseWalkCache(cache);
    // The files are closed off the JS thread.
    await waitFor(() => openFds() <= baseline, 5000, 'the released cache closes its files');
  });

  it('serves one pass at a time, and nothing once released', async () => {
    await using tree = await spawnTree({ depth: 1, fanout: 2 });
    const cache = native().createWalkCache();
    const running = native().walk({ root: tree.root, cache });
    expect(() => native().walk({ root: tree.root, cache })).to.throw(TypeError, /one pass at a time/);
    await running;
    native().releaseWalkCache(cache);
    expect(() => native().walk({ root: tree.root, cache })).to.throw(TypeError, /not a live walk cache/);
    expect(() => native().walk({ root: tree.root, cache: {} as never })).to.throw(TypeError, /not a live walk cache/);
  });
});
