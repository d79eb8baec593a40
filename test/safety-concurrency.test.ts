// Safety 5: concurrency. Two treestate operations on the same tree at once
// (in one process, where the native passes run on worker threads, and as two
// CLI processes) must each end with a result or a TreeStateError, and leave
// the tree in one state, one that an operation that succeeded reported.
import { expect } from 'chai';
import { TreeStateError, continueTree, getTreeState, killTree, snapshot, stopTree, type TransitionResult } from '../src/index.js';
import { spawnTree, type TreeFixture } from '../src/testing/index.js';
import { cli } from './helpers.js';

const TRIALS = 20;
const shape = { depth: 2, fanout: 2, threads: 2, forkFromThreads: true, intervalMs: 20 } as const;

function pause(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function settledOk(outcomes: PromiseSettledResult<TransitionResult>[]): TransitionResult[] {
  for (const o of outcomes) {
    if (o.status === 'rejected') expect(o.reason, String(o.reason?.stack ?? o.reason)).to.be.instanceOf(TreeStateError);
  }
  return outcomes.flatMap((o) => (o.status === 'fulfilled' ? [o.value] : []));
}

/** The tree's state once both settled: one state, proven by the heartbeats too. */
async function settledState(tree: TreeFixture): Promise<string> {
  const status = await getTreeState(tree.root);
  expect(status.state, `threads that differ: ${JSON.stringify(status.differing)}`).to.be.oneOf(['running', 'stopped']);
  if (status.state === 'running') await tree.waitProgress();
  else await tree.assertNoProgress({ forMs: 40 });
  return status.state;
}

describe('safety: concurrency', function () {
  this.timeout(120_000);

  it(`stop and cont at once end running or stopped, as one of them reported, in each of ${TRIALS} trials`, async () => {
    await using tree = await spawnTree(shape);
    for (let trial = 0; trial < TRIALS; trial++) {
      if (trial % 2 === 1) await stopTree(tree.root); // from either state
      const order = trial % 4 < 2 ? [stopTree, continueTree] : [continueTree, stopTree];
      const ok = settledOk(await Promise.allSettled(order.map((op) => op(tree.root, { timeoutMs: 10_000 }))));
      expect(ok.length, `trial ${trial}: neither operation succeeded`).to.be.greaterThan(0);
      const state = await settledState(tree);
      expect(ok.map((r) => r.state), `trial ${trial}: final state ${state}`).to.include(state);
      await continueTree(tree.root);
    }
  });

  it(`kill and stop at once end dead, with no survivor, in each of ${TRIALS} trials`, async () => {
    for (let trial = 0; trial < TRIALS; trial++) {
      await using tree = await spawnTree(shape);
      const ops = trial % 2 === 0 ? [killTree(tree.root), stopTree(tree.root)] : [stopTree(tree.root), killTree(tree.root)];
      const outcomes = await Promise.allSettled(ops);
      settledOk(outcomes);
      const kill = outcomes[trial % 2 === 0 ? 0 : 1]!;
      expect(kill.status, `trial ${trial}: ${kill.status === 'rejected' ? kill.reason : ''}`).to.equal('fulfilled');
      await expect(tree.root).to.be.a.deadTree;
      const held = await snapshot(tree.supervisor.pid);
      expect(held.processes.filter((p) => p.pid !== tree.supervisor.pid && p.state !== 'dead').map((p) => p.pid), `trial ${trial}: survivors`).to.deep.equal([]);
    }
  });

  it('two CLI processes, stop and cont, at once: each exits 0 or 1 with its result or a JSON error, and the tree is in one state', async () => {
    await using tree = await spawnTree(shape);
    for (let trial = 0; trial < 4; trial++) {
      const runs = await Promise.all([cli(['stop', String(tree.root), '--json']), cli(['cont', String(tree.root), '--json'])]);
      const states: string[] = [];
      for (const run of runs) {
        expect(run.code, run.stderr).to.be.oneOf([0, 1]);
        expect(run.stderr).to.not.match(/\n\s+at /);
        if (run.code === 0) states.push(JSON.parse(run.stdout).state);
        // With --json an error is JSON on stdout, as every error of the CLI.
        else expect(JSON.parse(run.stdout).error, run.stdout).to.include.keys('code', 'message');
      }
      const state = await settledState(tree);
      expect(states).to.include(state);
      await continueTree(tree.root);
      await pause(10);
    }
  });
});
