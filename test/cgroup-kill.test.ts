import { expect } from 'chai';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { killTree, run, snapshot } from '../src/index.js';
import { spawnTree } from '../src/testing/index.js';
import { cli, hasExited, tempDirs, waitFor } from './helpers.js';
import { leaveNoCgroups, procsOf } from './cgroup-support.js';

describe('cgroup: kill through cgroup.kill', () => {
  leaveNoCgroups();
  const tempDir = tempDirs();

  it('kills a double-forked grandchild with treestate kill', async () => {
    const pidFile = join(tempDir(), 'grandchild');
    // The middle shell exits at once: its child leaves the root's parent links.
    const tree = await run('sh', ['-c', `sh -c 'sleep 1000 & echo $! > ${pidFile}'; exec sleep 1000`], { stdio: 'ignore', setsid: true });
    try {
      await waitFor(() => existsSync(pidFile) && readFileSync(pidFile, 'utf8').endsWith('\n'), 5000, 'the grandchild to start');
      const grandchild = Number(readFileSync(pidFile, 'utf8'));
      await waitFor(async () => !(await snapshot(tree.root)).processes.some((p) => p.pid === grandchild), 5000, 'the grandchild to leave the tree');
      expect(procsOf(tree.cgroup)).to.include(grandchild);
      const r = await cli(['kill', String(tree.root), '--json']);
      expect(r.code, r.stdout + r.stderr).to.equal(0);
      expect(JSON.parse(r.stdout).signalled).to.include(grandchild);
      expect(hasExited(grandchild), `grandchild ${grandchild}`).to.equal(true);
      expect(hasExited(tree.root)).to.equal(true);
    } finally {
      await killTree(tree.root).catch(() => undefined);
      expect((await tree.exited).signal).to.equal(9);
    }
    expect(existsSync(tree.cgroup)).to.equal(false);
  });

  it('kills a fork storm in one step', async () => {
    await using tree = await spawnTree({ cgroup: true, depth: 1, fanout: 2, threads: 2, storm: true });
    const result = await killTree(tree.root);
    expect(result.state).to.equal('dead');
    expect(result.passes).to.equal(1);
    for (const pid of tree.pids()) expect(hasExited(pid), `pid ${pid}`).to.equal(true);
    await waitFor(() => !existsSync(tree.cgroup!) || procsOf(tree.cgroup!).length === 0, 5000, 'an empty cgroup');
  });
});
