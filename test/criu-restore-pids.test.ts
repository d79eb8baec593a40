import { expect } from 'chai';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { dump, restore } from '../src/index.js';
import { spawnSupervised, spawnTree } from '../src/testing/index.js';
import { hasExited, rejection, requireCriu, spawnLazyParent, tempDirs } from './helpers.js';

describe('criu restore: the checkpoint\'s pids', () => {
  requireCriu();
  const tempDir = tempDirs();

  it('waits for a zombie of the dumped tree to be reaped, then restores it', async () => {
    await using parent = await spawnLazyParent();
    const pid = parent.child;
    await using sup = await spawnSupervised('sleep', ['1000']); // the reaper the restored tree lands under
    const imagesDir = tempDir();
    await dump(pid, { imagesDir }); // killed: a zombie of its parent now
    expect(hasExited(pid)).to.equal(true);
    expect(existsSync(`/proc/${pid}`)).to.equal(true);

    const phases: string[] = [];
    let reaped: Promise<void> | undefined;
    const result = await restore({
      imagesDir,
      runner: sup,
      onProgress: (p) => {
        if (p.phase === 'waiting for pids') reaped ??= parent.reap();
        phases.push(p.phase);
      },
    });
    await reaped;
    expect(phases).to.include('waiting for pids');
    expect(result).to.include({ root: pid, state: 'running' });
    await expect(pid).to.be.a.runningTree;
  });

  it('names a live process that holds a pid of the checkpoint, and its parent, before criu runs', async () => {
    await using tree = await spawnTree({ depth: 1, fanout: 1 });
    const imagesDir = tempDir();
    await dump(tree.root, { imagesDir, finalState: 'running' });
    const e = await rejection(restore({ imagesDir, runner: tree.supervisor }));
    expect(e.code).to.equal('EPIDTAKEN');
    expect(e.pids).to.have.members(tree.pids());
    expect(e.message).to.match(/^cannot restore: the checkpoint needs pids \d+, \d+ and they are taken: /);
    expect(e.message).to.include(`${tree.root} is held by process "treestate-fixtu" whose parent is ${tree.supervisor.pid}`);
    expect(e.message).to.include('end the holder (or have its parent reap it)');
    expect(existsSync(join(imagesDir, 'restore.log'))).to.equal(false);
    await expect(tree.root).to.be.a.runningTree;
  });
});
