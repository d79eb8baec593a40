// Safety 1: fork storms. Every process of the tree forks short-lived children
// without pause, from the main thread and from a second thread, and some of
// them leave orphans behind (the root is a subreaper, so they stay in the
// tree). Stopping must still converge to a tree that is entirely stopped and
// no longer grows; killing must leave nothing alive.
import { expect } from 'chai';
import { continueTree, killTree, snapshot, stopTree, type TreeSnapshot } from '../src/index.js';
import { spawnTree, type TreeFixture } from '../src/testing/index.js';

const TRIALS = 50;
const storm = { depth: 1, fanout: 2, threads: 2, forkFromThreads: true, storm: true, intervalMs: 20 } as const;

function pause(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

const isLive = (p: TreeSnapshot['processes'][number]) => p.state !== 'dead';

/** Processes held by the fixture's reaper that are still alive (the reaper itself excluded). */
async function survivors(tree: TreeFixture): Promise<string[]> {
  const held = await snapshot(tree.supervisor.pid);
  return held.processes.filter((p) => p.pid !== tree.supervisor.pid && isLive(p)).map((p) => `${p.pid} ${p.comm} (${p.threads.map((t) => t.state).join('')})`);
}

describe('safety: fork storms', function () {
  this.timeout(180_000);

  it(`stops a storming tree completely in every one of ${TRIALS} trials: two looks apart show the same pids, every thread T`, async () => {
    await using tree = await spawnTree(storm);
    let grewBeyondShape = 0;
    for (let trial = 0; trial < TRIALS; trial++) {
      const result = await stopTree(tree.root, { timeoutMs: 10_000 });
      expect(result.state, `trial ${trial}`).to.equal('stopped');
      // The storm's children are never born stopped: whatever was stopped, this stop stopped.
      expect(result.alreadyStopped, `trial ${trial}: taken for the application's own stops`).to.deep.equal([]);
      const first = await snapshot(tree.root);
      await pause(25);
      const second = await snapshot(tree.root);
      const livePids = (s: TreeSnapshot) => s.processes.filter(isLive).map((p) => p.pid).sort((a, b) => a - b);
      expect(livePids(second), `trial ${trial}: the tree changed after stopTree returned`).to.deep.equal(livePids(first));
      const notStopped = second.processes.flatMap((p) => p.threads.filter((t) => !'TZXx'.includes(t.state)).map((t) => `${p.pid}/${t.tid} ${t.state}`));
      expect(notStopped, `trial ${trial}: threads not stopped`).to.deep.equal([]);
      if (first.processes.length > tree.size || result.exited.length > 0) grewBeyondShape++;
      await tree.assertNoProgress({ forMs: 30 });
      expect((await continueTree(tree.root)).keptStopped, `trial ${trial}: left stopped by the continue`).to.deep.equal([]);
      await tree.waitProgress();
    }
    // The storm was real: trials saw storm children beyond the fixture's shape.
    expect(grewBeyondShape, 'trials that saw storm children').to.be.greaterThan(TRIALS / 2);
  });

  it(`kills a storming tree with no survivor in every one of ${TRIALS} trials`, async () => {
    let stormSeen = 0;
    for (let trial = 0; trial < TRIALS; trial++) {
      await using tree = await spawnTree(storm);
      await pause(trial % 5); // vary where in the storm the kill lands
      if ((await snapshot(tree.root)).processes.length > tree.size) stormSeen++;
      const result = await killTree(tree.root, { timeoutMs: 10_000 });
      expect(result.state, `trial ${trial}`).to.equal('dead');
      // Orphans of a dead tree go to the reaper: anything alive there survived the kill.
      await pause(10);
      expect(await survivors(tree), `trial ${trial}: survivors of killTree`).to.deep.equal([]);
    }
    expect(stormSeen, 'trials whose tree had storm children when killed').to.be.greaterThan(TRIALS / 2);
  });
});
