// Safety 3: permissions. An unprivileged caller (the real CLI, run as nobody)
// may not move root's processes: it gets EPERM naming them, and the tree is
// left exactly as it was, even when it could stop part of the tree first.
//
// nobody runs node and the checkout in place when every directory down to
// build/Release and dist/ is open to others; otherwise test/helpers.ts runs a
// world-readable copy of what the CLI needs (a CI checkout may sit below a
// private directory). The first test checks that nobody can run it at all.
import { accessSync, constants } from 'node:fs';
import { join } from 'node:path';
import { expect } from 'chai';
import { getTreeState, stopTree } from '../src/index.js';
import { packageRoot } from '../src/native.js';
import { spawnTree, type TreeFixture } from '../src/testing/index.js';
import { cli } from './helpers.js';

const nobody = { uid: 65534, gid: 65534 };

/** Pid, ppid and every thread's state: what "exactly as before" compares. */
async function picture(tree: TreeFixture): Promise<string[]> {
  const status = await getTreeState(tree.root);
  return status.processes.map((p) => `${p.pid}<${p.ppid} ${p.threads.map((t) => `${t.tid}:${t.state === 'S' || t.state === 'R' ? 'run' : t.state}`).join(',')}`).sort();
}

function expectNoStack(text: string): void {
  expect(text).to.not.match(/\n\s+at /);
}

describe('safety: permissions', function () {
  this.timeout(60_000);

  it('runs the CLI as nobody (node, dist/ and the addon are readable to it)', async () => {
    const root = packageRoot();
    for (const path of [join(root, 'dist', 'cli.cjs'), join(root, 'build', 'Release', 'treestate.node'), join(root, 'bin', 'treestate.cjs')]) accessSync(path, constants.R_OK);
    const run = await cli(['status', String(process.pid), '--json'], nobody);
    expect(run.stderr).to.equal('');
    expect(run.code).to.equal(0);
    expect(JSON.parse(run.stdout).state).to.equal('running');
  });

  it("refuses nobody on root's running tree with EPERM naming the pids, and leaves the tree exactly as it was", async () => {
    await using tree = await spawnTree({ depth: 1, fanout: 2, threads: 2, intervalMs: 20 });
    const before = await picture(tree);
    for (const verb of ['stop', 'kill', 'cont']) {
      const run = await cli([verb, String(tree.root)], nobody);
      expect(run.code, `${verb}: ${run.stderr}`).to.equal(1);
      expect(run.stderr, verb).to.match(/^treestate: /);
      expect(run.stderr, verb).to.include('EPERM');
      expect(run.stderr, verb).to.include(String(tree.root));
      expectNoStack(run.stderr);
      expect(await picture(tree), `after ${verb}`).to.deep.equal(before);
      await tree.waitProgress();
    }
    await expect(tree.root).to.be.a.runningTree;
  });

  it("refuses nobody on root's stopped tree: it stays stopped", async () => {
    await using tree = await spawnTree({ depth: 1, fanout: 2, intervalMs: 20 });
    await stopTree(tree.root);
    const before = await picture(tree);
    const run = await cli(['cont', String(tree.root)], nobody);
    expect(run.code, run.stderr).to.equal(1);
    expect(run.stderr).to.include('EPERM');
    expect(run.stderr).to.include(String(tree.root));
    expect(await picture(tree)).to.deep.equal(before);
    await tree.assertNoProgress();
  });

  it("rolls back a partial stop: nobody may stop its own root but not root's children, and the root runs again", async () => {
    // The root drops to nobody after forking; its children stay root's.
    await using tree = await spawnTree({ depth: 1, fanout: 2, threads: 2, uidDepth: 0, uid: 65534, intervalMs: 20 });
    const children = tree.pids().filter((p) => p !== tree.root);
    const before = await picture(tree);
    const run = await cli(['stop', String(tree.root)], nobody);
    expect(run.code, run.stderr).to.equal(1);
    expect(run.stderr).to.match(/^treestate: /);
    expect(run.stderr).to.include('EPERM');
    for (const child of children) expect(run.stderr).to.include(String(child));
    expect(run.stderr).to.not.include(`pid ${tree.root} `);
    // The stop did stop the root before it met EPERM, and undid that.
    expect(run.stderr).to.match(/the 1 process it had stopped was resumed/);
    expectNoStack(run.stderr);
    await expect(tree.root).to.be.a.runningTree;
    await tree.waitProgress();
    expect(await picture(tree)).to.deep.equal(before);
  });
});
