import { expect } from 'chai';
import { continueTree, dump, getTreeState, killTree, stopTree } from '../src/index.js';
import { spawnTree } from '../src/testing/index.js';
import { readdirSync } from 'node:fs';
import { cli, hasExited, rejection, requireCriu, spawnLazyParent, tempDirs, waitFor } from './helpers.js';

describe('bad input', () => {
  describe('refused before criu runs', () => {
    requireCriu();
    const tempDir = tempDirs();

    it('`dump -D /proc/self/x` fails at once (EIMAGES), without spinning', async () => {
      await using tree = await spawnTree({ depth: 0 });
      const started = Date.now();
      const run = await cli(['dump', String(tree.root), '-D', '/proc/self/x/y'], { timeoutMs: 10_000 });
      expect(run.stderr).to.match(/^treestate: cannot create the images directory \/proc\/self\/x\/y: ENOENT/);
      expect(run.code).to.equal(1);
      expect(Date.now() - started).to.be.lessThan(5000);
      const e = await rejection(dump(tree.root, { imagesDir: '/proc/self/x' }));
      expect(e.code).to.equal('EIMAGES');
      await expect(tree.root).to.be.a.runningTree;
    });

    it('a dump of a zombie root is refused before criu runs', async () => {
      await using parent = await spawnLazyParent();
      process.kill(parent.child, 'SIGKILL');
      await waitFor(() => hasExited(parent.child), 5000, 'the zombie');
      const imagesDir = tempDir();
      const e = await rejection(dump(parent.child, { imagesDir }));
      expect(e.code).to.equal('ESRCH');
      expect(e.message).to.match(/^cannot dump the tree of \d+: the process has exited \(a zombie its parent \d+ has not reaped yet\)/);
      expect(readdirSync(imagesDir)).to.deep.equal([]);
      await parent.reap();
    });
  });

  describe('a root that is a zombie', () => {
    it('is dead: status says so, stop and continue refuse naming the zombie and its parent, kill finds it dead', async () => {
      await using parent = await spawnLazyParent();
      const pid = parent.child;
      process.kill(pid, 'SIGKILL');
      await waitFor(() => hasExited(pid), 5000, 'the zombie');
      expect((await getTreeState(pid)).state).to.equal('dead');
      for (const [verb, work] of [['stop', stopTree(pid)], ['continue', continueTree(pid)]] as const) {
        const e = await rejection(work);
        expect(e.code).to.equal('ESRCH');
        expect(e.message).to.match(new RegExp(`^cannot ${verb} the tree of ${pid}: the process has exited \\(a zombie its parent \\d+ has not reaped yet\\), so its tree is dead$`));
      }
      expect((await killTree(pid)).state).to.equal('dead');
      for (const verb of ['stop', 'cont']) {
        const run = await cli([verb, String(pid)]);
        expect(run.code, verb).to.equal(1);
        expect(run.stderr).to.include('the process has exited (a zombie its parent');
      }
      const status = await cli(['status', String(pid)]);
      expect(status.stdout).to.match(new RegExp(`^${pid}: dead`));
      expect(status.code).to.equal(0);
      await parent.reap();
    });
  });
});
