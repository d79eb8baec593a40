import { execFileSync, spawn } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { expect } from 'chai';
import { continueTree, snapshot, stopTree } from '../src/index.js';
import { nativeExecutable } from '../src/native.js';
import { spawnSupervised, type Supervisor } from '../src/testing/index.js';
import { cli, statFields, waitFor } from './helpers.js';

const pause = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Each thread of `pids` whose /proc/PID/task/TID/stat says T, read here rather than by treestate. */
function stoppedThreads(pids: number[]): string[] {
  const stopped: string[] = [];
  for (const pid of pids) {
    for (const tid of readdirSync(`/proc/${pid}/task`)) {
      const stat = execFileSync('cat', [`/proc/${pid}/task/${tid}/stat`], { encoding: 'utf8' });
      if (stat.slice(stat.lastIndexOf(')') + 2).split(' ')[0] === 'T') stopped.push(`${pid}/${tid}`);
    }
  }
  return stopped;
}

async function treeOf(sup: Supervisor, size: number): Promise<number[]> {
  let pids: number[] = [];
  await waitFor(async () => (pids = (await snapshot(sup.root)).processes.map((p) => p.pid)).length === size, 5000, `a tree of ${size}`);
  return pids;
}

/** Cycles of stop and continue, each checked `afterMs` after the continue returned. */
async function cycles(root: number, pids: number[], count: number, afterMs: number): Promise<void> {
  for (let i = 0; i < count; i++) {
    await stopTree(root);
    await continueTree(root);
    await pause(afterMs);
    expect(stoppedThreads(pids), `cycle ${i + 1}: stopped ${afterMs} ms after the continue`).to.deep.equal([]);
  }
}

describe('continue holds', () => {
  it('resumes a parent that stops itself in reaction to its child having been stopped, 100 cycles', async function () {
    this.timeout(120_000);
    // Stops itself 5 ms after it is resumed, every time its child was stopped.
    await using parent = await spawnSupervised(nativeExecutable('treestate-fixture'), ['--mirror-stop', '5']);
    const pids = await treeOf(parent, 2);
    await cycles(parent.root, pids, 100, 200);
  });

  it('waits past its window while a parent it resumed has not yet come off the CPU', async () => {
    // Busy (R) for 40 ms once resumed, then stops itself: longer than the
    // 20 ms window, as a parent on a loaded host gets to its reaction late.
    await using parent = await spawnSupervised(nativeExecutable('treestate-fixture'), ['--mirror-stop-spin', '40']);
    const pids = await treeOf(parent, 2);
    await cycles(parent.root, pids, 5, 200);
  });

  it('reports what it had to resume again', async () => {
    await using parent = await spawnSupervised(nativeExecutable('treestate-fixture'), ['--mirror-stop', '2']);
    await treeOf(parent, 2);
    await stopTree(parent.root);
    const result = await continueTree(parent.root);
    expect(result.settle?.resumedAgain).to.deep.equal([parent.root]);
    expect(result.state).to.equal('running');
    expect(statFields(parent.root)[0]).to.not.equal('T');
  });

  it('treestate cont says what it resumed again; --settle 0 does not watch, and the parent stops after it', async () => {
    await using parent = await spawnSupervised(nativeExecutable('treestate-fixture'), ['--mirror-stop', '2']);
    const pids = await treeOf(parent, 2);
    await stopTree(parent.root);
    const cont = await cli(['cont', String(parent.root)]);
    expect(cont.stdout).to.match(new RegExp(`^continued the tree of ${parent.root}: 2 processes, 1 process resumed again after stopping itself \\(`));
    await pause(200);
    expect(stoppedThreads(pids)).to.deep.equal([]);
    await stopTree(parent.root);
    expect((await cli(['cont', String(parent.root), '--settle', '0'])).code).to.equal(0);
    await waitFor(() => statFields(parent.root)[0] === 'T', 2000, 'the parent stopping itself');
    await continueTree(parent.root);
  });

  it('fails, naming it, on a process that stops itself again every time it is resumed', async () => {
    // A shell that stops itself in a loop: no number of SIGCONTs makes it stay running.
    await using looper = await spawnSupervised('/bin/sh', ['-c', 'while :; do kill -STOP $$; done']);
    await waitFor(() => statFields(looper.root)[0] === 'T');
    const error = await continueTree(looper.root).then(
      () => expect.fail('continueTree resolved'),
      (e: { code: string; message: string; pids: number[] }) => e,
    );
    expect(error.code).to.equal('ETIMEDOUT');
    expect(error.pids).to.deep.equal([looper.root]);
    // Usually a pass sees it run between its SIGCONT and its next stop, and
    // the settle watch counts the rounds; when no pass ever does (it stops
    // again within microseconds), the continue's own deadline names it.
    expect(error.message).to.match(/stopped again each time it was resumed \(\d+ times\)|did not resume within \d+ ms: pid \d+ \(T\) still stopped/);
  });

  it('holds with a real runuser under load', async function () {
    this.timeout(180_000);
    // Two busy loops, one per core: the parent then runs late, as on a loaded host.
    const busy = [0, 1].map(() => spawn(process.execPath, ['-e', 'for (;;);'], { stdio: 'ignore' }));
    try {
      await using runuser = await spawnSupervised('runuser', ['-u', 'nobody', '--', 'sleep', '1000']);
      const pids = await treeOf(runuser, 2);
      await cycles(runuser.root, pids, 60, 200);
    } finally {
      for (const b of busy) b.kill('SIGKILL');
      await Promise.all(busy.map((b) => (b.exitCode !== null || b.signalCode !== null ? null : new Promise((r) => b.once('exit', r)))));
    }
  });
});
