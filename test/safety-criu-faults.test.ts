// Safety 4: CRIU faults, with the real criu. A dump whose criu dies (killed by
// us, or by treestate's own timeout) must leave the tree recoverable: its
// state reported, no thread left in ptrace-stop, and `cont` brings it back. A
// restore that fails (pids taken, a corrupt image, a timeout) must leave no
// half-restored process behind.
import { cpSync, mkdtempSync, readdirSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect } from 'chai';
import { dump, restore } from '../src/criu/checkpoint.js';
import { locateCriu } from '../src/criu/locate.js';
import { childProcessRunner, type CommandRunner } from '../src/criu/runner.js';
import { TreeStateError, continueTree, getTreeState, killTree, snapshot } from '../src/index.js';
import { spawnTree, type TreeFixture } from '../src/testing/index.js';
import { cli, inCI, rejection } from './helpers.js';

function pause(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Everything alive under the fixture's reaper (the reaper excluded), with identities. */
async function held(tree: TreeFixture): Promise<string[]> {
  const s = await snapshot(tree.supervisor.pid);
  return s.processes
    .filter((p) => p.pid !== tree.supervisor.pid && p.state !== 'dead')
    .map((p) => `${p.pid}@${p.startTime} ${p.comm}`)
    .sort();
}

function tracedThreads(status: Awaited<ReturnType<typeof getTreeState>>): string[] {
  return status.processes.flatMap((p) => p.threads.filter((t) => t.state === 't').map((t) => `${p.pid}/${t.tid}`));
}

/** Images from a copy without logs, so criu writes fresh ones. */
function copyImages(from: string, dirs: string[]): string {
  const copy = mkdtempSync(join(tmpdir(), 'treestate-safety-images-'));
  dirs.push(copy);
  cpSync(from, copy, { recursive: true });
  for (const f of readdirSync(copy)) if (f.includes('.log')) unlinkSync(join(copy, f));
  return copy;
}

describe('safety: criu faults', function () {
  this.timeout(120_000);
  const dirs: string[] = [];

  before(async function () {
    try {
      await locateCriu();
    } catch (e) {
      if (inCI) throw e; // CI has criu: never skip there
      this.skip();
    }
  });

  afterEach(() => {
    for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
  });

  function imagesDir(): string {
    const d = mkdtempSync(join(tmpdir(), 'treestate-safety-images-'));
    dirs.push(d);
    return d;
  }

  /** After a dump that died: state reported, nothing in ptrace-stop, and cont brings it back. */
  async function expectRecoverable(tree: TreeFixture, error: TreeStateError): Promise<void> {
    expect(error.message).to.match(new RegExp(`the tree of ${tree.root} is (running|stopped|mixed)`));
    const status = await getTreeState(tree.root);
    expect(tracedThreads(status), 'threads left in ptrace-stop').to.deep.equal([]);
    expect(status.processes.map((p) => p.pid).sort()).to.deep.equal([...tree.pids()].sort());
    const run = await cli(['cont', String(tree.root)]);
    expect(run.code, run.stderr).to.equal(0);
    await expect(tree.root).to.be.a.runningTree;
    await tree.waitProgress();
  }

  it('recovers a tree whose criu dump is SIGKILLed while criu holds it in ptrace-stop', async () => {
    await using tree = await spawnTree({ depth: 1, fanout: 2, threads: 2, memoryMb: 768, intervalMs: 20 });
    let criuPid = 0;
    const recording: CommandRunner = {
      async run(file, args, options) {
        const running = await childProcessRunner.run(file, args, options);
        criuPid = running.pid;
        return running;
      },
    };
    const work = dump(tree.root, { imagesDir: imagesDir(), finalState: 'dead', runner: recording });
    let settled = false;
    work.catch(() => undefined).finally(() => (settled = true));
    // Kill criu at the worst moment: once it has seized threads of the tree.
    let seized = false;
    while (!settled && !seized) {
      seized = tracedThreads(await getTreeState(tree.root)).length > 0;
      if (!seized) await pause(1);
    }
    expect(seized, 'criu seized the tree before finishing (is the dump too fast?)').to.equal(true);
    process.kill(criuPid, 'SIGKILL');
    const error = await rejection(work);
    expect(error.code).to.equal('ECRIU');
    expect(error.message).to.match(/killed by signal/);
    await expectRecoverable(tree, error);
  });

  it("recovers a tree whose criu dump runs past treestate's timeout", async () => {
    await using tree = await spawnTree({ depth: 1, fanout: 2, threads: 2, memoryMb: 768, intervalMs: 20 });
    // Interrupted with SIGALRM, criu either gives up and resumes the tree or
    // finishes the dump it was in (see criu-timeout.test.ts): both must leave
    // a tree that `cont` brings back.
    const outcome = await dump(tree.root, { imagesDir: imagesDir(), finalState: 'stopped', timeoutMs: 250 }).catch((e: unknown) => e);
    if (outcome instanceof TreeStateError) {
      expect(outcome.code).to.equal('ETIMEDOUT');
      expect(outcome.message).to.match(/did not finish within 250 ms and (was killed|was interrupted \(SIGALRM)/);
      await expectRecoverable(tree, outcome);
    } else {
      expect(outcome).to.have.property('state', 'stopped');
      await expectRecoverable(tree, new TreeStateError('ETIMEDOUT', `the tree of ${tree.root} is stopped`));
    }
  });

  it('a restore onto pids still taken by the original tree fails and leaves no half-restored process', async () => {
    await using tree = await spawnTree({ depth: 1, fanout: 2, intervalMs: 20 });
    const dir = imagesDir();
    await dump(tree.root, { imagesDir: dir, finalState: 'running' });
    const before = await held(tree);
    const error = await rejection(restore({ imagesDir: dir, runner: tree.supervisor }));
    expect(error.code).to.equal('EPIDTAKEN'); // found before criu runs
    await pause(200);
    expect(await held(tree)).to.deep.equal(before);
    await expect(tree.root).to.be.a.runningTree;
    await tree.waitProgress();
  });

  it('a restore from images with one corrupt file fails and leaves no half-restored process; the intact images still restore', async () => {
    await using tree = await spawnTree({ depth: 1, fanout: 2, intervalMs: 20 });
    const leaf = tree.pids()[2]!;
    const dir = imagesDir();
    await dump(tree.root, { imagesDir: dir, finalState: 'dead' });
    expect(await held(tree)).to.deep.equal([]);
    // A leaf's page map: criu has forked the root and the other child by the time it reads it.
    const corrupt = copyImages(dir, dirs);
    writeFileSync(join(corrupt, `pagemap-${leaf}.img`), 'not an image');
    const missing = copyImages(dir, dirs);
    unlinkSync(join(missing, `core-${leaf}.img`));
    for (const [bad, code] of [[corrupt, 'ECRIU'], [missing, 'EIMAGES']] as const) {
      // A missing core image is found by treestate's own read of the images, before criu runs.
      const error = await rejection(restore({ imagesDir: bad, runner: tree.supervisor }));
      expect(error.code).to.equal(code);
      await pause(200);
      expect(await held(tree), `left by a failed restore from ${bad}`).to.deep.equal([]);
    }
    // Control: the same images, intact, do restore (so the failures above were the corruption's).
    const restored = await restore({ imagesDir: copyImages(dir, dirs), runner: tree.supervisor });
    expect(restored.root).to.equal(tree.root);
    await tree.waitProgress();
    await killTree(restored.root);
  });

  it('a restore that runs past its timeout leaves no half-restored process', async () => {
    await using tree = await spawnTree({ depth: 1, fanout: 2, threads: 2, intervalMs: 20 });
    const dir = imagesDir();
    await dump(tree.root, { imagesDir: dir, finalState: 'dead' });
    let timedOut = 0;
    // criu restore of this tree takes ~100 ms here: kill it at several points on the way.
    for (const timeoutMs of [1, 10, 20, 30, 40, 50, 60, 70, 80]) {
      const copy = copyImages(dir, dirs);
      try {
        const restored = await restore({ imagesDir: copy, runner: tree.supervisor, timeoutMs });
        await killTree(restored.root); // criu was quicker than the timeout
      } catch (e) {
        expect(e).to.be.instanceOf(TreeStateError);
        expect((e as TreeStateError).code, (e as Error).message).to.equal('ETIMEDOUT');
        timedOut++;
      }
      await pause(300); // what criu left would be running (or dying) by now
      expect(await held(tree), `left by a restore killed after ${timeoutMs} ms`).to.deep.equal([]);
    }
    expect(timedOut, 'restores that ran into the timeout').to.be.at.least(3);
  });
});
