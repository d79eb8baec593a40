// On a big tree, helper threads join a pass (reading /proc is CPU work in the
// kernel, and it spreads over cores). Whatever thread reads what, a pass must
// read every process once, report them in depth-first order, and keep the
// order rules of its signals.
import { availableParallelism } from 'node:os';
import { expect } from 'chai';
import { continueTree, stopTree } from '../src/index.js';
import { native, type NativeWalkResult } from '../src/native.js';
import { spawnTree } from '../src/testing/index.js';
import { betweenNativePasses, hasExited, statFields, waitFor } from './helpers.js';

/** The order one thread visits the records in: depth first, children as their parent lists them. */
function depthFirst(pass: NativeWalkResult): number[] {
  const byPid = new Map(pass.processes.map((p) => [p.pid, p]));
  const order: number[] = [];
  const todo = [pass.processes[0]!.pid];
  while (todo.length > 0) {
    const pid = todo.pop()!;
    order.push(pid);
    const children = byPid.get(pid)!.children.filter((c) => byPid.get(c)?.ppid === pid);
    todo.push(...children.reverse());
  }
  return order;
}

const sorted = (pids: number[]) => [...pids].sort((a, b) => a - b);

function ppidOf(pid: number): number {
  return Number(statFields(pid)[1]);
}

describe('walk threads', function () {
  this.timeout(60_000);
  const walkers = Math.min(availableParallelism(), 4);

  it(`reads a tree of 121 processes with ${walkers} thread(s), each process once, in depth-first order`, async () => {
    await using tree = await spawnTree({ depth: 4, fanout: 3, threads: 2, intervalMs: 200 });
    const pass = await native().walk({ root: tree.root });
    expect(pass.walkers).to.equal(walkers);
    expect(pass.processes[0]!.pid).to.equal(tree.root);
    expect(sorted(pass.processes.map((p) => p.pid))).to.deep.equal(sorted(tree.pids()));
    expect(pass.processes.map((p) => p.pid)).to.deep.equal(depthFirst(pass));
    for (const p of pass.processes) expect(p.threads, `threads of ${p.pid}`).to.have.length(2);
  });

  it('signals parents before children, and children before parents, whichever thread reads them', async () => {
    await using tree = await spawnTree({ depth: 4, fanout: 3, intervalMs: 200 });
    const protect = native().selfAndAncestors();
    const position = (order: number[]) => new Map(order.map((pid, i) => [pid, i]));
    try {
      const stop = await native().walk({ root: tree.root, kind: 'stop', protect });
      expect(stop.walkers).to.equal(walkers);
      expect(sorted(stop.signalled)).to.deep.equal(sorted(tree.pids()));
      const stopped = position(stop.signalled);
      for (const p of stop.processes.slice(1)) {
        expect(stopped.get(p.ppid), `parent ${p.ppid} stopped before ${p.pid}`).to.be.below(stopped.get(p.pid)!);
      }

      const cont = await native().walk({ root: tree.root, kind: 'continue', first: true, protect });
      expect(cont.walkers).to.equal(walkers);
      expect(sorted(cont.signalled)).to.deep.equal(sorted(tree.pids()));
      const continued = position(cont.signalled);
      for (const p of cont.processes.slice(1)) {
        expect(continued.get(p.pid), `${p.pid} continued before its parent ${p.ppid}`).to.be.below(continued.get(p.ppid)!);
      }

      // The same rule when the signals wait until the whole tree is read.
      await native().walk({ root: tree.root, kind: 'stop', protect });
      const after = await native().walk({ root: tree.root, kind: 'continue', first: true, protect });
      expect(after.walkers).to.equal(walkers);
      expect(sorted(after.signalled)).to.deep.equal(sorted(tree.pids()));
      const continuedAfter = position(after.signalled);
      for (const p of after.processes.slice(1)) {
        expect(continuedAfter.get(p.pid), `${p.pid} continued before its parent ${p.ppid} (after read)`).to.be.below(continuedAfter.get(p.ppid)!);
      }
    } finally {
      await continueTree(tree.root);
    }
  });

  it('continues a tree of 121 processes whose 81 leaves exit while the threads read it', async () => {
    await using tree = await spawnTree({ depth: 4, fanout: 3, exitOnCont: true, intervalMs: 200 });
    await stopTree(tree.root);
    const leaves = tree.pids().filter((pid) => !tree.pids().some((other) => other !== pid && ppidOf(other) === pid));
    expect(leaves).to.have.length(81);
    const others = tree.pids().filter((pid) => !leaves.includes(pid));
    let most = 0;
    // Leaves exit during the first pass, which reads them on several threads;
    // the ones still exiting when it ends are waited for before the second
    // pass, so that each leaf is seen gone by the pass that returns.
    const result = await betweenNativePasses(async (index, pass) => {
      most = Math.max(most, pass.walkers);
      if (index === 0) await waitFor(() => leaves.every(hasExited), 10_000, 'the leaves exiting');
    }, () => continueTree(tree.root));
    expect(result.state).to.equal('running');
    expect(result.exited).to.have.members(leaves);
    expect(result.processes).to.have.members(others);
    expect(most, 'threads that read one pass').to.equal(walkers);
  });
});
