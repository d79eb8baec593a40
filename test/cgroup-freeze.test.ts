import { expect } from 'chai';
import { spawn } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { continueTree, freezeTree, getTreeState, killTree, stopTree, thawTree, waitForState } from '../src/index.js';
import { readEvents } from '../src/cgroup/hierarchy.js';
import { spawnTree } from '../src/testing/index.js';
import { betweenNativePasses, cli, hasExited, rejection, waitFor } from './helpers.js';
import { leaveNoCgroups, procsOf, threadLetters } from './cgroup-support.js';

describe('cgroup: Frozen', () => {
  leaveNoCgroups();

  it('freezes and thaws a run tree: heartbeats stop, then go on', async () => {
    await using tree = await spawnTree({ cgroup: true, depth: 2, fanout: 2, threads: 2, forkFromThreads: true });
    const frozen = await freezeTree(tree.root);
    expect(frozen).to.include({ root: tree.root, cgroup: tree.cgroup, state: 'frozen' });
    expect(frozen.processes).to.have.members(tree.pids());
    expect(readEvents(tree.cgroup!).frozen).to.equal(1);
    await tree.assertNoProgress({ forMs: 150 });
    const status = await getTreeState(tree.root);
    expect(status.state).to.equal('frozen');
    expect(status.cgroup).to.equal(tree.cgroup);
    expect((await waitForState(tree.root, 'frozen', { timeoutMs: 1000 })).state).to.equal('frozen');
    expect((await rejection(waitForState(tree.root, 'running', { timeoutMs: 100 }))).code).to.equal('ETIMEDOUT');
    const thawed = await thawTree(tree.root);
    expect(thawed.state).to.equal('running');
    await tree.waitProgress();
    expect((await getTreeState(tree.root)).state).to.equal('running');
  });

  it('holds a fork storm in one step, 50 times in a row, with nothing running', async () => {
    await using tree = await spawnTree({ cgroup: true, depth: 1, fanout: 2, threads: 2, storm: true });
    for (let i = 0; i < 50; i++) {
      await freezeTree(tree.root);
      // Checked from /proc, not through treestate: no process is born, no
      // heartbeat moves, and no thread is left running. A thread can show R
      // for a moment after `frozen 1` only in the kernel: one being born of
      // a fork that was under way (it traps into the freezer before its
      // first user instruction, kernel/cgroup/cgroup.c, cgroup_post_fork)
      // or one exiting (no longer counted by the freezer).
      const members = procsOf(tree.cgroup!);
      await waitFor(() => procsOf(tree.cgroup!).every((pid) => !threadLetters(pid).includes('R')), 1000, `round ${i}: every thread off the CPU`);
      await tree.assertNoProgress({ forMs: 10 });
      expect(procsOf(tree.cgroup!).filter((pid) => !members.includes(pid)), `round ${i}: processes born while frozen`).to.deep.equal([]);
      await thawTree(tree.root);
    }
    await tree.waitProgress();
  });

  it('refuses a tree that does not own a cgroup, and a pid that is not the root of one', async () => {
    await using plain = await spawnTree({ depth: 1, fanout: 1 });
    const e = await rejection(freezeTree(plain.root));
    expect(e.code).to.equal('ENOCGROUP');
    expect(e.message).to.include('not started by treestate run');
    await plain.waitProgress();
    await using owned = await spawnTree({ cgroup: true, depth: 1, fanout: 1 });
    const child = owned.pids().find((p) => p !== owned.root)!;
    const notRoot = await rejection(freezeTree(child));
    expect(notRoot.code).to.equal('ENOCGROUP');
    expect(notRoot.message).to.include('not the root');
    expect(readEvents(owned.cgroup!).frozen).to.equal(0);
    const r = await cli(['freeze', String(plain.root)]);
    expect(r.code).to.equal(1);
    expect(r.stderr).to.match(/^treestate: cannot freeze \d+: the tree of \d+ has no cgroup of its own/);
  });

  it('never freezes a cgroup that holds a process from outside the tree', async () => {
    await using tree = await spawnTree({ cgroup: true, depth: 1, fanout: 1 });
    const stranger = spawn('sleep', ['1000'], { stdio: 'ignore' });
    const gone = new Promise((resolve) => stranger.once('exit', resolve));
    try {
      writeFileSync(join(tree.cgroup!, 'cgroup.procs'), String(stranger.pid));
      const e = await rejection(freezeTree(tree.root));
      expect(e.code).to.equal('ENOCGROUP');
      expect(e.message).to.include(`outside the tree of ${tree.root}: ${stranger.pid}`);
      expect(readEvents(tree.cgroup!).frozen).to.equal(0);
      await tree.waitProgress();
      // Nor does kill take the cgroup path: the signal path kills the tree, not the stranger.
      const killed = await killTree(tree.root);
      expect(killed.signalled).to.have.members(tree.pids());
      expect(killed.signalled).to.not.include(stranger.pid);
      // Then the run's subreaper sees its root gone and empties the cgroup:
      // what is moved into a run tree's cgroup lives and dies with it (docs/safety.md).
      await waitFor(() => hasExited(stranger.pid!), 5000, 'the stranger to die with the run');
    } finally {
      stranger.kill('SIGKILL');
      await gone;
    }
  });

  it('thaws again and refuses when a process from outside joins between the check and the freeze', async () => {
    await using tree = await spawnTree({ cgroup: true, depth: 1, fanout: 1 });
    const stranger = spawn('sleep', ['1000'], { stdio: 'ignore' });
    const gone = new Promise((resolve) => stranger.once('exit', resolve));
    try {
      // The check reads the members, then walks the tree: the stranger moves in during that walk.
      const e = await betweenNativePasses(
        (index) => {
          if (index === 0) writeFileSync(join(tree.cgroup!, 'cgroup.procs'), String(stranger.pid));
        },
        () => rejection(freezeTree(tree.root)),
      );
      expect(e.code).to.equal('ENOCGROUP');
      expect(e.message).to.include(`${stranger.pid}; it was thawed again`);
      expect(readEvents(tree.cgroup!).frozen).to.equal(0);
      await tree.waitProgress();
    } finally {
      stranger.kill('SIGKILL');
      await gone;
    }
  });

  it('refuses stop and cont of a frozen tree, saying to thaw it; kill takes it', async () => {
    await using tree = await spawnTree({ cgroup: true, depth: 1, fanout: 2 });
    await freezeTree(tree.root);
    for (const op of [stopTree, continueTree]) {
      const e = await rejection(op(tree.root, { timeoutMs: 500 }));
      expect(e.code).to.equal('EFROZEN');
      expect(e.message).to.include(`thaw it first (treestate thaw ${tree.root})`);
    }
    const r = await cli(['cont', String(tree.root)]);
    expect(r.code).to.equal(1);
    expect(r.stderr).to.include('is frozen');
    await tree.assertNoProgress();
    const pids = tree.pids();
    await killTree(tree.root);
    for (const pid of pids) expect(hasExited(pid), `pid ${pid}`).to.equal(true);
  });

  it('stop and cont still work on a run tree that is not frozen', async () => {
    await using tree = await spawnTree({ cgroup: true, depth: 1, fanout: 2 });
    await stopTree(tree.root);
    await expect(tree.root).to.be.a.stoppedTree;
    await continueTree(tree.root);
    await tree.waitProgress();
  });

  it('treestate freeze, status and thaw from the command line', async () => {
    await using tree = await spawnTree({ cgroup: true, depth: 1, fanout: 2 });
    const frozen = await cli(['freeze', String(tree.root), '--json']);
    expect(frozen.code, frozen.stderr).to.equal(0);
    expect(JSON.parse(frozen.stdout)).to.include({ root: tree.root, state: 'frozen', cgroup: tree.cgroup });
    const status = await cli(['status', String(tree.root)]);
    expect(status.stdout).to.match(new RegExp(`^${tree.root}: frozen \\(3 processes`));
    await tree.assertNoProgress();
    const thawed = await cli(['thaw', String(tree.root)]);
    expect(thawed.code, thawed.stderr).to.equal(0);
    expect(thawed.stdout).to.match(/^thawed the tree of \d+: 3 processes in /);
    await tree.waitProgress();
    expect(readFileSync(join(tree.cgroup!, 'cgroup.freeze'), 'utf8').trim()).to.equal('0');
  });
});
