import { expect } from 'chai';
import { readFileSync } from 'node:fs';
import { continueTree, dump, getTreeState, killTree, restore, stopTree } from '../src/index.js';
import { spawnTree } from '../src/testing/index.js';
import { cli, cliPath, requireCriu, tempDirs } from './helpers.js';

const shape = { depth: 1, fanout: 2, threads: 3, forkFromThreads: true } as const;

describe('criu restore', () => {
  requireCriu();
  const tempDir = tempDirs();

  it('--final-state stopped: restored in T with frozen heartbeats; continue resumes them from the dumped values', async () => {
    await using tree = await spawnTree(shape);
    const imagesDir = tempDir();
    await dump(tree.root, { imagesDir });
    const atDump = tree.heartbeats();
    const restored = await restore({ imagesDir, finalState: 'stopped', runner: tree.supervisor });
    expect(restored).to.include({ root: tree.root, finalState: 'stopped', state: 'stopped' });
    await expect(tree.root).to.be.a.stoppedTree;
    await tree.assertNoProgress();
    expect(tree.heartbeats().map((h) => h.counter)).to.deep.equal(atDump.map((h) => h.counter));
    await continueTree(tree.root);
    await tree.waitProgress();
  });

  it('--final-state running (the default) restores a running tree', async () => {
    await using tree = await spawnTree(shape);
    const imagesDir = tempDir();
    await dump(tree.root, { imagesDir });
    const restored = await restore({ imagesDir, runner: tree.supervisor });
    expect(restored.state).to.equal('running');
    expect(restored.processes).to.have.members(tree.pids());
    // Nothing was stopped at dump time: criu resumed the tree itself, as a
    // plain `criu restore` does, and treestate only verified it.
    expect(restored.continued).to.equal(false);
    expect(restored.request).to.not.have.property('leave_stopped');
    await tree.waitProgress();
  });

  it('--final-state running from the command line: criu resumes the tree (no --leave-stopped) when nothing was stopped at dump time', async () => {
    await using tree = await spawnTree(shape);
    const imagesDir = tempDir();
    await dump(tree.root, { imagesDir });
    const restored = await restore({ imagesDir, pidNamespace: 'new' });
    try {
      expect(restored.state).to.equal('running');
      expect(restored.continued).to.equal(false);
      expect(restored.argv).to.include('restore').and.not.include('--leave-stopped');
      expect(restored.processes).to.have.length(tree.pids().length);
    } finally {
      await killTree(restored.root);
    }
  });

  it('restores every child under its parent\'s main thread, whatever thread forked it', async () => {
    await using tree = await spawnTree(shape);
    const children = tree.pids().slice(1);
    expect(readFileSync(`/proc/${tree.root}/task/${tree.root}/children`, 'utf8').trim()).to.equal('');
    const imagesDir = tempDir();
    await dump(tree.root, { imagesDir });
    await restore({ imagesDir, runner: tree.supervisor });
    const listed = readFileSync(`/proc/${tree.root}/task/${tree.root}/children`, 'utf8').trim().split(' ').map(Number);
    expect(listed).to.have.members(children);
  });

  it('a tree that was stopped when dumped comes back stopped, or running when asked', async () => {
    await using tree = await spawnTree(shape);
    await stopTree(tree.root);
    const imagesDir = tempDir();
    await dump(tree.root, { imagesDir });
    const stopped = await restore({ imagesDir, finalState: 'stopped', runner: tree.supervisor });
    expect(stopped.state).to.equal('stopped');
    await tree.assertNoProgress();
    // Kill it again and restore running from the same images.
    await killTree(tree.root);
    const running = await restore({ imagesDir, finalState: 'running', runner: tree.supervisor });
    expect(running.state).to.equal('running');
    // Stopped at dump time: restored stopped, then continued by treestate.
    expect(running.continued).to.equal(true);
    expect(running.request).to.include({ leave_stopped: true });
    await tree.waitProgress();
  });

  it('CLI: dump --final-state stopped, restore --final-state stopped, cont, with --json results', async () => {
    await using tree = await spawnTree(shape);
    const imagesDir = tempDir();
    const dumped = await cli(['dump', String(tree.root), '-D', imagesDir, '--final-state', 'stopped', '--json']);
    expect(dumped.code, dumped.stderr).to.equal(0);
    expect(JSON.parse(dumped.stdout)).to.include({ verb: 'dump', root: tree.root, state: 'stopped' });
    await expect(tree.root).to.be.a.stoppedTree;
    await killTree(tree.root);
    // Run the CLI under the fixture's reaper: the restored tree is re-parented there.
    const out = `${tempDir()}/restore.out`;
    const running = await tree.supervisor.run(process.execPath, [cliPath, 'restore', '-D', imagesDir, '--final-state', 'stopped', '--json'], { out });
    expect((await running.exited).code, readFileSync(out, 'utf8')).to.equal(0);
    expect(JSON.parse(readFileSync(out, 'utf8'))).to.include({ verb: 'restore', root: tree.root, state: 'stopped' });
    const cont = await cli(['cont', String(tree.root)]);
    expect(cont.code).to.equal(0);
    expect((await getTreeState(tree.root)).state).to.equal('running');
    await tree.waitProgress();
  });
});
