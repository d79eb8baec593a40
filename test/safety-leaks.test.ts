// Safety 7: no leaks. A long-lived process (a supervisor, a test runner) may
// look at big trees again and again: every pass opens one pidfd per process,
// and each must be closed; memory must not grow with the number of passes.
import { readdirSync, readlinkSync } from 'node:fs';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { expect } from 'chai';
import { snapshot } from '../src/index.js';
import { spawnTree } from '../src/testing/index.js';

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

function fds(): { all: number; pidfds: number } {
  let all = 0;
  let pidfds = 0;
  for (const fd of readdirSync('/proc/self/fd')) {
    all++;
    try {
      if (readlinkSync(`/proc/self/fd/${fd}`).includes('pidfd')) pidfds++;
    } catch {
      // the directory's own fd, closed by now
    }
  }
  return { all, pidfds };
}

function memory(): { rss: number; heap: number } {
  gc();
  const m = process.memoryUsage();
  return { rss: m.rss, heap: m.heapUsed };
}

const MB = 1 << 20;

describe('safety: no leaks', function () {
  this.timeout(300_000);

  it('takes 1000 snapshots of a 1000-process tree with flat file descriptors, pidfds and memory', async () => {
    // depth 3, fanout 10: 1111 processes, each beating once a second.
    await using tree = await spawnTree({ depth: 3, fanout: 10, intervalMs: 1000, readyTimeoutMs: 120_000 });
    // V8 and malloc grow their pools over the first hundreds of passes; a
    // leak keeps growing after that, so compare the last 700 passes only.
    const warmup = 300;
    let before = { fds: fds(), mem: memory() };
    for (let i = 0; i < 1000; i++) {
      const snap = await snapshot(tree.root);
      expect(snap.processes.length, `snapshot ${i}`).to.be.at.least(1111);
      if (i === warmup - 1) before = { fds: fds(), mem: memory() };
    }
    const after = { fds: fds(), mem: memory() };
    expect(after.fds.pidfds, 'pidfds left open').to.equal(0);
    expect(after.fds.all, 'open file descriptors').to.be.at.most(before.fds.all);
    const rssGrowth = (after.mem.rss - before.mem.rss) / MB;
    const heapGrowth = (after.mem.heap - before.mem.heap) / MB;
    // 700 snapshots of 1111 processes: a leak of even 16 bytes per process per
    // snapshot would be 12 MB. Allow some allocator noise, not growth.
    expect(rssGrowth, `RSS grew by ${rssGrowth.toFixed(1)} MB`).to.be.below(10);
    expect(heapGrowth, `heap grew by ${heapGrowth.toFixed(1)} MB`).to.be.below(4);
  });
});
