import { expect } from 'chai';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { dump, freezeTree, getTreeState, killTree, restore, thawTree } from '../src/index.js';
import { readEvents } from '../src/cgroup/hierarchy.js';
import { spawnTree } from '../src/testing/index.js';
import { cli, hasExited, requireCriu, statFields, tempDirs, waitFor } from './helpers.js';
import { leaveNoCgroups, procsOf, runCgroupsDir } from './cgroup-support.js';

describe('cgroup: CRIU and run trees', () => {
  requireCriu();
  leaveNoCgroups();
  const tempDir = tempDirs();

  it('dumps a run tree by freezing its cgroup, and leaves it running in it', async () => {
    await using tree = await spawnTree({ cgroup: true, depth: 1, fanout: 2, threads: 2 });
    const imagesDir = tempDir();
    const dumped = await dump(tree.root, { imagesDir, finalState: 'running' });
    expect(dumped.argv.join(' ')).to.include(`--freeze-cgroup ${tree.cgroup}`);
    expect(dumped.cgroup).to.equal(tree.cgroup);
    expect(readFileSync(join(imagesDir, 'dump.log'), 'utf8')).to.match(/freezing cgroup/);
    expect(readEvents(tree.cgroup!).frozen).to.equal(0);
    await tree.waitProgress();
    expect(procsOf(tree.cgroup!)).to.have.members(tree.pids());
  });

  it('restores a dumped run tree into a cgroup of its own, which can be frozen and killed', async () => {
    await using tree = await spawnTree({ cgroup: true, depth: 1, fanout: 2, threads: 2 });
    const pids = tree.pids();
    const imagesDir = tempDir();
    await dump(tree.root, { imagesDir });
    // The original run ended with its root: its cgroup is gone.
    await waitFor(() => !existsSync(tree.cgroup!), 5000, 'the dumped run cgroup to be removed');
    const name = `restored-${process.pid}`;
    const restored = await restore({ imagesDir, cgroup: name });
    expect(restored).to.include({ root: tree.root, state: 'running', cgroup: join(runCgroupsDir(), name) });
    expect(restored.argv).to.include('--manage-cgroups=ignore');
    const cgroup = restored.cgroup!;
    expect(procsOf(cgroup)).to.have.members(pids);
    const helper = Number(statFields(tree.root)[1]);
    expect(readFileSync(`/proc/${helper}/comm`, 'utf8').trim()).to.equal('treestate-run');
    await tree.waitProgress();

    await freezeTree(tree.root);
    expect((await getTreeState(tree.root)).state).to.equal('frozen');
    await tree.assertNoProgress();
    await thawTree(tree.root);
    await tree.waitProgress();

    const killed = await killTree(tree.root);
    expect(killed.passes).to.equal(1); // cgroup.kill, not signal passes
    for (const pid of pids) expect(hasExited(pid), `pid ${pid}`).to.equal(true);
    await waitFor(() => !existsSync(cgroup) && !existsSync(`/proc/${helper}`), 5000, 'the restored run to end');
  });

  it('treestate restore --cgroup, from the command line', async () => {
    await using tree = await spawnTree({ cgroup: true, depth: 1, fanout: 1 });
    const imagesDir = tempDir();
    await dump(tree.root, { imagesDir });
    await waitFor(() => !existsSync(tree.cgroup!), 5000, 'the dumped run cgroup to be removed');
    const r = await cli(['restore', '-D', imagesDir, '--cgroup', '--json']);
    expect(r.code, r.stderr).to.equal(0);
    const restored = JSON.parse(r.stdout) as { root: number; cgroup: string };
    expect(restored.root).to.equal(tree.root);
    expect(restored.cgroup).to.match(/\/treestate\/run-\d+-/);
    await tree.waitProgress();
    const frozen = await cli(['freeze', String(tree.root)]);
    expect(frozen.code, frozen.stderr).to.equal(0);
    await tree.assertNoProgress();
    const killed = await cli(['kill', String(tree.root)]);
    expect(killed.code, killed.stderr).to.equal(0);
    await waitFor(() => !existsSync(restored.cgroup), 5000, 'the restored cgroup to be removed');
    expect((await cli(['restore', '-D', imagesDir, '--name', 'x'])).code).to.equal(2);
  });

  it('refuses cgroup together with a runner', async () => {
    await using tree = await spawnTree({ depth: 0 });
    const e = await restore({ imagesDir: tempDir(), cgroup: true, runner: tree.supervisor }).catch((x) => x);
    expect(e.code).to.equal('EINVAL');
  });
});
