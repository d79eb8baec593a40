import { expect } from 'chai';
import { readFileSync } from 'node:fs';
import { dump, TreeStateError } from '../src/index.js';
import { spawnTree } from '../src/testing/index.js';
import { childProcessRunner, type CommandRunner } from '../src/criu/runner.js';
import { rejection, requireCriu, tempDirs } from './helpers.js';

/** Processes that still have criu's parasite mapped. */
function withParasite(pids: number[]): number[] {
  return pids.filter((pid) => readFileSync(`/proc/${pid}/maps`, 'utf8').includes('CRIUMFD'));
}

describe('criu timeouts', () => {
  requireCriu();
  const tempDir = tempDirs();

  it('a dump timed out while criu is inside the tree leaves no parasite behind, and the tree running', async function () {
    this.timeout(120_000);
    // 1 GB to dump keeps criu inside the tree for a while; the timeout must
    // fire in that window, which the test checks and adjusts to the machine.
    await using tree = await spawnTree({ depth: 1, fanout: 1, memoryMb: 1024 });
    let timeoutMs = 250;
    let inside = 0;
    for (let attempt = 0; attempt < 6 && inside === 0; attempt++) {
      const started = performance.now();
      let atTimeout: number[] = [];
      const probe = setTimeout(() => (atTimeout = withParasite(tree.pids())), timeoutMs);
      let outcome: string;
      try {
        await dump(tree.root, { imagesDir: tempDir(), finalState: 'running', timeoutMs });
        outcome = 'finished';
      } catch (e) {
        if (!(e instanceof TreeStateError) || e.code !== 'ETIMEDOUT') throw e;
        outcome = e.message;
      } finally {
        clearTimeout(probe);
      }
      const elapsed = performance.now() - started;
      expect(withParasite(tree.pids()), `after: ${outcome}`).to.deep.equal([]);
      await expect(tree.root).to.be.a.runningTree;
      await tree.waitProgress();
      if (atTimeout.length > 0) inside++;
      // Fired before criu got in (it was still starting) or after it left.
      else timeoutMs = elapsed < timeoutMs + 50 ? Math.round(timeoutMs / 2) : timeoutMs * 2;
    }
    expect(inside, 'timeouts that fired while criu was inside the tree').to.be.at.least(1);
  });

  it('says criu died of SIGALRM before it seized the tree, whichever runner reports the signal', async () => {
    await using tree = await spawnTree({ depth: 0 });
    // A stand-in that, like criu before it sets its handler, dies of SIGALRM.
    for (const runner of [childProcessRunner, tree.supervisor]) {
      const sleeper: CommandRunner = { run: (_file, _args, options) => runner.run('/bin/sleep', ['10'], options) };
      const e = await rejection(dump(tree.root, { imagesDir: tempDir(), finalState: 'running', timeoutMs: 50, runner: sleeper }));
      expect(e.code).to.equal('ETIMEDOUT');
      expect(e.message).to.match(new RegExp(`^criu dump did not finish within 50 ms and was stopped \\(SIGALRM\\) before it had seized the tree; the tree of ${tree.root} is running`));
    }
  });
});
