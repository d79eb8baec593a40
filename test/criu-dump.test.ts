import { expect } from 'chai';
import { existsSync, openSync, closeSync, writeSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { continueTree, dump, getTreeState, restore, stopTree } from '../src/index.js';
import { spawnTree, type TreeFixture } from '../src/testing/index.js';
import { requireCriu, tempDirs } from './helpers.js';

/** A threaded tree whose children were forked by non-leader threads. */
const shape = { depth: 1, fanout: 2, threads: 3, forkFromThreads: true } as const;

/** Zeroes the counters in the heartbeat file: what counts after a restore must come from restored memory. */
function zeroHeartbeatFile(tree: TreeFixture): void {
  const fd = openSync(tree.heartbeatFile, 'r+');
  try {
    for (let i = 0; i < tree.size; i++) writeSync(fd, Buffer.alloc(8), 0, 8, 16 + i * 16 + 8);
  } finally {
    closeSync(fd);
  }
}

describe('criu dump', () => {
  requireCriu();
  const tempDir = tempDirs();

  it('--final-state dead (the default): the tree is killed, and a restore resumes every heartbeat from its dumped value', async () => {
    await using tree = await spawnTree(shape);
    const imagesDir = tempDir();
    const result = await dump(tree.root, { imagesDir });
    expect(result).to.include({ verb: 'dump', root: tree.root, finalState: 'dead', state: 'dead' });
    expect(result.request).to.not.have.any.keys('leave_running', 'leave_stopped');
    expect(existsSync(join(imagesDir, 'inventory.img'))).to.equal(true);
    await expect(tree.root).to.be.a.deadTree;
    const atDump = tree.heartbeats();
    zeroHeartbeatFile(tree);

    const restored = await restore({ imagesDir, runner: tree.supervisor });
    expect(restored).to.include({ verb: 'restore', root: tree.root, state: 'running' });
    await expect(tree.root).to.be.a.runningTree;
    await tree.waitProgress();
    const after = tree.heartbeats();
    expect(after.map((h) => h.pid)).to.deep.equal(atDump.map((h) => h.pid));
    after.forEach((h, i) => expect(h.counter, `pid ${h.pid}`).to.be.greaterThan(atDump[i]!.counter));
    const status = await getTreeState(tree.root);
    expect(status.processes.map((p) => p.threads.length)).to.deep.equal([3, 3, 3]);
  });

  it('--final-state running: the tree goes on running and counting', async () => {
    await using tree = await spawnTree(shape);
    const result = await dump(tree.root, { imagesDir: tempDir(), finalState: 'running' });
    expect(result.state).to.equal('running');
    expect(result.request).to.include({ leave_running: true, pid: tree.root });
    expect(result.processes).to.have.members(tree.pids());
    await expect(tree.root).to.be.a.runningTree;
    await tree.waitProgress();
  });

  it('--final-state stopped: every thread is in T, the heartbeats are frozen, and continue resumes them', async () => {
    await using tree = await spawnTree(shape);
    const result = await dump(tree.root, { imagesDir: tempDir(), finalState: 'stopped' });
    expect(result.state).to.equal('stopped');
    expect(result.request).to.include({ leave_stopped: true });
    const status = await getTreeState(tree.root);
    expect(status.processes.flatMap((p) => p.threads.map((t) => t.state)).join('')).to.equal('T'.repeat(9));
    await tree.assertNoProgress();
    await continueTree(tree.root);
    await tree.waitProgress();
  });

  it('a tree already stopped before the dump ends running when running is asked for', async () => {
    await using tree = await spawnTree(shape);
    await stopTree(tree.root);
    const result = await dump(tree.root, { imagesDir: tempDir(), finalState: 'running' });
    expect(result.state).to.equal('running');
    expect(result.continued).to.equal(true);
    await tree.waitProgress();
  });

  it('writes its log into the images directory, with criu run as an RPC worker', async () => {
    await using tree = await spawnTree({ depth: 0 });
    const imagesDir = tempDir();
    const result = await dump(tree.root, { imagesDir, finalState: 'running' });
    expect(result.logFile).to.equal(join(imagesDir, 'dump.log'));
    expect(readFileSync(result.logFile, 'utf8')).to.include('Dumping finished successfully');
    expect(result.argv).to.deep.equal(['swrk', '3']);
    expect(result.request).to.include({ pid: tree.root, log_file: 'dump.log' });
  });

  it('with extraArgs, runs criu as a command line (RPC has no argument vector), and it still works', async () => {
    await using tree = await spawnTree({ depth: 0 });
    const imagesDir = tempDir();
    const result = await dump(tree.root, { imagesDir, finalState: 'running', extraArgs: ['--file-locks'] });
    expect(result.argv.slice(0, 5)).to.deep.equal(['dump', '-t', String(tree.root), '-D', imagesDir]);
    expect(result.argv).to.include('--file-locks');
    expect(result.request).to.equal(undefined);
    expect(readFileSync(result.logFile, 'utf8')).to.include('Dumping finished successfully');
    await tree.waitProgress();
  });
});
