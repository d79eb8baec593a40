import { expect } from 'chai';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { dump, TreeStateError } from '../src/index.js';
import { spawnTree } from '../src/testing/index.js';
import { childProcessRunner, type CommandRunner } from '../src/criu/runner.js';
import { hasExited, rejection, requireCriu, tempDirs, waitFor } from './helpers.js';

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

  it('a criu that does not catch SIGALRM yet is killed with every process it started, none orphaned', async () => {
    await using tree = await spawnTree({ depth: 0 });
    // A stand-in for criu still starting up: no SIGALRM handler, and a child
    // (criu's kernel probes fork some). SIGALRM would kill the parent alone.
    for (const runner of [childProcessRunner, tree.supervisor]) {
      const pidFile = join(tempDir(), 'child.pid');
      const starting: CommandRunner = { run: (_file, _args, options) => runner.run('/bin/sh', ['-c', `sleep 1000 & echo $! > ${pidFile}; wait`], options) };
      const work = dump(tree.root, { imagesDir: tempDir(), finalState: 'running', timeoutMs: 300, runner: starting });
      const e = await rejection(work);
      const child = Number(readFileSync(pidFile, 'utf8'));
      try {
        expect(e.code).to.equal('ETIMEDOUT');
        expect(e.message).to.match(new RegExp(`^criu dump did not finish within 300 ms and was killed together with the 1 process it had started \\(${child}\\); the tree of ${tree.root} is running`));
        await waitFor(() => hasExited(child), 2000, `the stand-in's child ${child} gone`);
      } finally {
        if (!hasExited(child) && readFileSync(`/proc/${child}/comm`, 'utf8').trim() === 'sleep') process.kill(child, 'SIGKILL');
      }
    }
  });
});
