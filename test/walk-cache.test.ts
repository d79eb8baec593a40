// The passes of one operation share a walk cache: the tree's /proc files stay
// open between passes and are read again with pread. What a later pass reads
// through them must be as fresh as a first look, and the cache must stay
// within its bound and close everything when released.
import { execFile } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { expect } from 'chai';
import { native, packageRoot, type NativeWalkResult } from '../src/native.js';
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

  // The kernel doubles a descriptor table as it fills, and in a process with
  // threads each doubling waits for an RCU grace period (6-17 ms here): a
  // walk that keeps thousands of files open grows it once, to its full size.
  // FDSize in /proc/PID/status is the table's size. In a fresh process: the
  // table never shrinks.
  it('a walk that keeps hundreds of files open grows the descriptor table to its full size; a small one leaves it as Node made it', async () => {
    await using small = await spawnTree({ depth: 1, fanout: 2 });
    // 85 processes x 3 threads: ~9 files each, past the 192 that ask for the growth.
    await using big = await spawnTree({ depth: 3, fanout: 4, threads: 3 });
    const script = `
      const ts = require(${JSON.stringify(join(packageRoot(), 'dist', 'index.cjs'))});
      const { readFileSync } = require('node:fs');
      const size = () => Number(readFileSync('/proc/self/status', 'utf8').match(/FDSize:\\s*(\\d+)/)[1]);
      const limit = Number(readFileSync('/proc/self/limits', 'utf8').match(/Max open files\\s+(\\d+)/)[1]);
      (async () => {
        const out = { start: size(), limit };
        await ts.stopTree(${small.root});
        await ts.continueTree(${small.root});
        out.small = size();
        await ts.stopTree(${big.root});
        await ts.continueTree(${big.root});
        // The table grows on a thread of its own: give it its grace period.
        const wanted = Math.min(16000, Math.floor(limit / 2));
        for (let i = 0; i < 500 && size() <= wanted; i++) await new Promise((r) => setTimeout(r, 10));
        out.big = size();
        console.log(JSON.stringify(out));
      })();`;
    const { stdout } = await promisify(execFile)(process.execPath, ['-e', script]);
    const out = JSON.parse(stdout) as { start: number; small: number; big: number; limit: number };
    expect(out.small, 'after a walk of 3 processes').to.equal(out.start);
    expect(out.big, 'after a walk of 85 processes x 3 threads').to.be.above(Math.min(16000, Math.floor(out.limit / 2)));
  });
});
