import { expect } from 'chai';
import { existsSync, readFileSync } from 'node:fs';
import { continueTree, dump, getTreeState, killTree, restore, stopTree, waitForState, type CriuResult } from '../src/index.js';
import { spawnTree } from '../src/testing/index.js';
import { cli, rejection, requireCriu, statFields, tempDirs, waitFor } from './helpers.js';

/** The last NSpid of a process: its pid inside its own pid namespace. */
function innermostPid(pid: number): number {
  const line = /^NSpid:\s*(.*)$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1]!;
  return Number(line.trim().split(/\s+/).at(-1));
}

/** Kills a tree restored into its own namespace and waits until its init, and the init's host-side parent, are gone and reaped. */
async function killNamespace(restored: CriuResult): Promise<void> {
  const init = restored.pidNamespace!.init;
  const parent = Number(statFields(init)[1]);
  await killTree(restored.root);
  await waitFor(() => !existsSync(`/proc/${init}`) && !existsSync(`/proc/${parent}`), 5000, 'the namespace init and its parent to be gone');
}

describe('criu restore into a new pid namespace', () => {
  requireCriu();
  const tempDir = tempDirs();

  it('restores a tree whose original still runs, ten times in a row, with its original pids inside and nothing left behind', async function () {
    this.timeout(120_000);
    await using tree = await spawnTree({ depth: 1, fanout: 2, threads: 2, forkFromThreads: true });
    const imagesDir = tempDir();
    await dump(tree.root, { imagesDir, finalState: 'running' });
    const original = tree.pids();
    for (let round = 0; round < 10; round++) {
      const restored = await restore({ imagesDir, pidNamespace: 'new' });
      expect(restored.state).to.equal('running');
      expect(restored.root).to.not.equal(tree.root);
      expect(restored.pidNamespace).to.include({ pid: tree.root });
      expect(statFields(restored.root)[1], 'the init is the restored root\'s parent').to.equal(String(restored.pidNamespace!.init));
      const status = await getTreeState(restored.root);
      expect(status.processes.map((p) => innermostPid(p.pid))).to.have.members(original);
      // Both trees live side by side.
      expect((await getTreeState(tree.root)).state).to.equal('running');
      // Every transition works on the restored tree by its host pid.
      await stopTree(restored.root);
      await waitForState(restored.root, 'stopped');
      await continueTree(restored.root);
      await waitForState(restored.root, 'running');
      await killNamespace(restored);
    }
    await tree.waitProgress();
  });

  it('restores stopped when asked, and a failed restore leaves no namespace behind', async () => {
    await using tree = await spawnTree({ depth: 1, fanout: 1 });
    const imagesDir = tempDir();
    await dump(tree.root, { imagesDir, finalState: 'running' });
    const stopped = await restore({ imagesDir, finalState: 'stopped', pidNamespace: 'new' });
    expect((await getTreeState(stopped.root)).state).to.equal('stopped');
    await killNamespace(stopped);
    // criu fails inside the namespace: its init kills what is there and goes.
    const e = await rejection(restore({ imagesDir, pidNamespace: 'new', extraArgs: ['--no-such-criu-option'] }));
    expect(e.code).to.equal('ECRIU');
  });

  it('the CLI restores with --pid-ns new and reports both pids', async () => {
    await using tree = await spawnTree({ depth: 0 });
    const imagesDir = tempDir();
    await dump(tree.root, { imagesDir, finalState: 'running' });
    const run = await cli(['restore', '-D', imagesDir, '--pid-ns', 'new', '--json']);
    // With --json an error is JSON on stdout.
    expect(run.code, run.stdout + run.stderr).to.equal(0);
    const restored = JSON.parse(run.stdout) as CriuResult;
    expect(restored.pidNamespace).to.include({ pid: tree.root });
    // The CLI has exited; the restored tree and its init live on.
    expect((await getTreeState(restored.root)).state).to.equal('running');
    const init = restored.pidNamespace!.init;
    await killTree(restored.root);
    await waitFor(() => !existsSync(`/proc/${init}`), 5000, 'the namespace init to exit');
  });

  it('refuses a runner with a new pid namespace', async () => {
    await using tree = await spawnTree({ depth: 0 });
    const e = await rejection(restore({ imagesDir: tempDir(), pidNamespace: 'new', runner: tree.supervisor }));
    expect(e.code).to.equal('EINVAL');
  });
});
