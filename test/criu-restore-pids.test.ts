import { expect } from 'chai';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { dump, restore } from '../src/index.js';
import { spawnSupervised, spawnTree } from '../src/testing/index.js';
import { hasExited, rejection, requireCriu, tempDirs } from './helpers.js';

/**
 * A parent that does not reap: it starts `sleep` in a session of its own and
 * reaps it only when told (a line on its stdin), like init between two of its
 * reaping rounds, but deterministically.
 */
const LAZY_PARENT = `
import os, sys
pid = os.fork()
if pid == 0:
    os.setsid()
    fd = os.open('/dev/null', os.O_RDWR)
    for i in (0, 1, 2):
        os.dup2(fd, i)
    os.close(fd)
    os.execvp('sleep', ['sleep', '1000'])
print(pid, flush=True)
sys.stdin.readline()
os.waitpid(pid, 0)
print('reaped', flush=True)
sys.stdin.readline()
`;

describe('criu restore: the checkpoint\'s pids', () => {
  requireCriu();
  const tempDir = tempDirs();

  it('waits for a zombie of the dumped tree to be reaped, then restores it', async () => {
    const parent = spawn('python3', ['-c', LAZY_PARENT], { stdio: ['pipe', 'pipe', 'inherit'] });
    const exited = new Promise((r) => parent.once('exit', r));
    const lines = createInterface({ input: parent.stdout! })[Symbol.asyncIterator]();
    try {
      const pid = Number((await lines.next()).value);
      await using sup = await spawnSupervised('sleep', ['1000']); // the reaper the restored tree lands under
      const imagesDir = tempDir();
      await dump(pid, { imagesDir }); // killed: a zombie of its parent now
      expect(hasExited(pid)).to.equal(true);
      expect(existsSync(`/proc/${pid}`)).to.equal(true);

      const phases: string[] = [];
      const result = await restore({
        imagesDir,
        runner: sup,
        onProgress: (p) => {
          if (p.phase === 'waiting for pids' && !phases.includes(p.phase)) parent.stdin!.write('reap\n');
          phases.push(p.phase);
        },
      });
      expect(phases).to.include('waiting for pids');
      expect((await lines.next()).value).to.equal('reaped');
      expect(result).to.include({ root: pid, state: 'running' });
      await expect(pid).to.be.a.runningTree;
    } finally {
      parent.stdin!.end('\n');
      await exited;
    }
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
