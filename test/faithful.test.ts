import { expect } from 'chai';
import { chmodSync, chownSync, cpSync, existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { continueTree, dump, getTreeState, killTree, restore, stopTree } from '../src/index.js';
import { recordsDir } from '../src/stop-records.js';
import { nativeExecutable } from '../src/native.js';
import { innermostPid } from '../src/criu/pidns.js';
import { spawnSupervised, spawnTree, type TreeFixture } from '../src/testing/index.js';
import { cli, rejection, requireCriu, tempDirs, waitFor } from './helpers.js';

// Every thread's state letter, read here from /proc/PID/task/*/stat, not from treestate.
function threadStates(pid: number): string[] {
  return readdirSync(`/proc/${pid}/task`).map((tid) => {
    const stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2)[0]!;
  });
}

/** A tree whose root stops its first child itself (2 threads each); resolves once that child is stopped. */
async function appStoppedTree(): Promise<{ tree: TreeFixture; held: number }> {
  const tree = await spawnTree({ depth: 1, fanout: 2, threads: 2, stopChild: 1 });
  const held = tree.pids()[1]!;
  await waitFor(() => threadStates(held).every((s) => s === 'T'), 5000, `child ${held} stopped by its parent`);
  return { tree, held };
}

/** The application's stop kept, everything else running: every thread, and every other heartbeat. */
async function expectFaithful(tree: TreeFixture, held: number): Promise<void> {
  for (const pid of tree.pids()) {
    const states = threadStates(pid);
    expect(states, `threads of ${pid}`).to.have.length(2);
    if (pid === held) expect(states, `threads of ${pid}, stopped by its parent`).to.deep.equal(['T', 'T']);
    else for (const s of states) expect(s, `a thread of ${pid}`).to.be.oneOf(['R', 'S', 'D']);
  }
  const before = tree.heartbeats().find((h) => h.pid === held)!.counter;
  await tree.waitProgress({ except: [held] });
  expect(tree.heartbeats().find((h) => h.pid === held)!.counter).to.equal(before);
}

/** Every thread of every process running, the application's stop undone too. */
async function expectAllRunning(tree: TreeFixture): Promise<void> {
  for (const pid of tree.pids()) for (const s of threadStates(pid)) expect(s, `a thread of ${pid}`).to.be.oneOf(['R', 'S', 'D']);
  await tree.waitProgress();
}

function recordFile(root: number, startTime: number): string {
  return join(recordsDir()!, `${root}-${startTime}.json`);
}

async function rootStartTime(root: number): Promise<number> {
  return (await getTreeState(root)).processes[0]!.startTime;
}

describe('faithful final states: what the application stopped stays stopped', () => {
  it('(a) stop + cont keeps the child its parent stopped, resumes every other thread, and status says running', async () => {
    const { tree, held } = await appStoppedTree();
    await using _ = tree;
    const stopped = await stopTree(tree.root);
    expect(stopped.alreadyStopped).to.deep.equal([held]);
    // A second stop of the stopped tree does not take treestate's own stops for the application's.
    expect((await stopTree(tree.root)).alreadyStopped).to.deep.equal([held]);
    const continued = await continueTree(tree.root);
    expect(continued.keptStopped).to.deep.equal([held]);
    expect(continued.signalled).to.not.include(held);
    await expectFaithful(tree, held);
    const status = await getTreeState(tree.root);
    expect(status.state).to.equal('running');
    expect(status.keptStopped).to.deep.equal([held]);
    await expect(tree.root).to.be.a.runningTree;
  });

  it('(a) through the command line: the record passes from one treestate process to the next', async () => {
    const { tree, held } = await appStoppedTree();
    await using _ = tree;
    const stop = await cli(['stop', String(tree.root)]);
    expect(stop.code, stop.stderr).to.equal(0);
    expect(stop.stdout).to.include(`already stopped by the application (a continue keeps them stopped): ${held}`);
    const cont = await cli(['cont', String(tree.root)]);
    expect(cont.code, cont.stderr).to.equal(0);
    expect(cont.stdout).to.include(`kept stopped (stopped by the application before treestate's stop): ${held}`);
    await expectFaithful(tree, held);
    const status = await cli(['status', String(tree.root)]);
    expect(status.stdout).to.match(new RegExp(`: running .*kept stopped, as the application stopped it: ${held}`));
  });

  it('a tree treestate never stopped is continued whole', async () => {
    const { tree, held } = await appStoppedTree();
    await using _ = tree;
    const continued = await continueTree(tree.root);
    expect(continued.keptStopped).to.deep.equal([]);
    expect(continued.signalled).to.include(held);
    await expectAllRunning(tree);
  });

  it('--all continues everything and forgets the record', async () => {
    const { tree } = await appStoppedTree();
    await using _ = tree;
    await stopTree(tree.root);
    const file = recordFile(tree.root, await rootStartTime(tree.root));
    expect(existsSync(file)).to.equal(true);
    const cont = await cli(['cont', String(tree.root), '--all', '--json']);
    expect(cont.code, cont.stderr).to.equal(0);
    expect(JSON.parse(cont.stdout).keptStopped).to.deep.equal([]);
    await expectAllRunning(tree);
    expect(existsSync(file)).to.equal(false);
  });

  it('a stale record (its root pid now names another process) is ignored and removed: the tree is continued whole', async () => {
    const { tree, held } = await appStoppedTree();
    await using _ = tree;
    await stopTree(tree.root);
    const start = await rootStartTime(tree.root);
    const real = recordFile(tree.root, start);
    const record = JSON.parse(readFileSync(real, 'utf8'));
    rmSync(real);
    // The same pid, an earlier start time: a process that had the pid before this root.
    const stale = recordFile(tree.root, start - 1);
    writeFileSync(stale, JSON.stringify({ ...record, root: { pid: tree.root, startTime: start - 1 } }), { mode: 0o600 });
    const continued = await continueTree(tree.root);
    expect(continued.keptStopped).to.deep.equal([]);
    expect(continued.signalled).to.include(held);
    await expectAllRunning(tree);
    expect(existsSync(stale)).to.equal(false);
  });

  it('records left by trees that are gone are removed once they are many; a live tree\'s record is kept', async () => {
    await using a = await spawnTree({ depth: 1, fanout: 1 });
    await using b = await spawnTree({ depth: 1, fanout: 1 });
    await stopTree(a.root);
    await stopTree(b.root);
    const kept = recordFile(a.root, await rootStartTime(a.root));
    expect(existsSync(kept)).to.equal(true);
    const record = readFileSync(kept, 'utf8');
    // Trees stopped and then killed by other means: a live pid with another
    // start time, and pids no process can have (pid_max is at most 4194304).
    const stale: string[] = [];
    for (let i = 1; i <= 40; i++) stale.push(recordFile(a.root, (await rootStartTime(a.root)) - i));
    for (let i = 0; i < 40; i++) stale.push(recordFile(4_194_304 + i, 1000 + i));
    for (const f of stale) writeFileSync(f, record, { mode: 0o600 });
    // Any lookup prunes: here the continue of the other tree.
    await continueTree(b.root);
    for (const f of stale) expect(existsSync(f), f).to.equal(false);
    expect(existsSync(kept), "the stopped tree's record").to.equal(true);
    await continueTree(a.root);
  });

  it('a corrupt record is removed, said, and keeps nothing stopped', async () => {
    const { tree } = await appStoppedTree();
    await using _ = tree;
    await stopTree(tree.root);
    const file = recordFile(tree.root, await rootStartTime(tree.root));
    writeFileSync(file, '{"version": 1, "kept": [{"pid": "x"');
    const cont = await cli(['cont', String(tree.root)]);
    expect(cont.code, cont.stderr).to.equal(0);
    expect(cont.stderr).to.match(/treestate: warning: ignored and removed an unreadable record .*not JSON/);
    expect(cont.stdout).to.not.include('kept stopped');
    await expectAllRunning(tree);
    expect(existsSync(file)).to.equal(false);
  });

  it('the record of a dead tree: continue says ESRCH and removes it', async () => {
    const { tree } = await appStoppedTree();
    await stopTree(tree.root);
    const root = tree.root;
    const file = recordFile(root, await rootStartTime(root));
    await tree.dispose();
    expect(existsSync(file)).to.equal(true);
    const e = await rejection(continueTree(root));
    expect(e.code).to.equal('ESRCH');
    expect(existsSync(file)).to.equal(false);
  });

  it('kill forgets the tree', async () => {
    const { tree } = await appStoppedTree();
    await using _ = tree;
    await stopTree(tree.root);
    const file = recordFile(tree.root, await rootStartTime(tree.root));
    await killTree(tree.root);
    expect(existsSync(file)).to.equal(false);
  });

  describe('not as root', () => {
    const tempDir = tempDirs();
    const nobody = { uid: 65534, gid: 65534 };

    /** A tree of nobody's whose root has stopped its first child. */
    async function nobodysTree() {
      const sup = await spawnSupervised('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', '--', nativeExecutable('treestate-fixture'), '--depth', '1', '--fanout', '2', '--stop-child', '1']);
      let held = 0;
      await waitFor(async () => {
        const status = await getTreeState(sup.root);
        held = status.processes[1]?.pid ?? 0;
        return status.processes.length === 3 && status.processes[1]!.state === 'stopped';
      }, 5000, 'the first child stopped by its parent');
      return { sup, held };
    }

    it("keeps records in the user's own $XDG_RUNTIME_DIR/treestate", async () => {
      const { sup, held } = await nobodysTree();
      await using _ = sup;
      const parent = tempDir();
      chmodSync(parent, 0o711);
      const runtime = mkdtempSync(join(parent, 'xdg-'));
      chownSync(runtime, 65534, 65534);
      const env = { XDG_RUNTIME_DIR: runtime };
      const stop = await cli(['stop', String(sup.root)], { ...nobody, env });
      expect(stop.code, stop.stderr).to.equal(0);
      expect(readdirSync(join(runtime, 'treestate', 'stops'))).to.have.length(1);
      const cont = await cli(['cont', String(sup.root)], { ...nobody, env });
      expect(cont.stdout).to.include(`kept stopped (stopped by the application before treestate's stop): ${held}`);
      expect(threadStates(held)).to.deep.equal(['T']);
      expect(threadStates(sup.root)[0]).to.be.oneOf(['R', 'S']);
    });

    it('without a private runtime directory keeps none, and the stop says a continue will resume the application\'s stops', async () => {
      const { sup, held } = await nobodysTree();
      await using _ = sup;
      // Someone else's directory is not the user's own.
      const stop = await cli(['stop', String(sup.root)], { ...nobody, env: { XDG_RUNTIME_DIR: tempDir() } });
      expect(stop.code, stop.stderr).to.equal(0);
      expect(stop.stderr).to.match(new RegExp(`warning: process ${held} was stopped by the application already, but treestate has no private directory`));
      const cont = await cli(['cont', String(sup.root)], { ...nobody, env: { XDG_RUNTIME_DIR: '' } });
      expect(cont.stdout).to.not.include('kept stopped');
      expect(threadStates(held)[0]).to.be.oneOf(['R', 'S']);
    });
  });

  describe('through criu', () => {
    requireCriu();
    const tempDir = tempDirs();

    it('(b) dump --final-state stopped + cont', async () => {
      const { tree, held } = await appStoppedTree();
      await using _ = tree;
      const dumped = await dump(tree.root, { imagesDir: tempDir(), finalState: 'stopped' });
      expect(dumped.keptStopped).to.deep.equal([held]);
      await expect(tree.root).to.be.a.stoppedTree;
      expect((await continueTree(tree.root)).keptStopped).to.deep.equal([held]);
      await expectFaithful(tree, held);
    });

    it('(c) dump (dead) + restore running keeps stopped what the images say was stopped', async () => {
      const { tree, held } = await appStoppedTree();
      await using _ = tree;
      const imagesDir = tempDir();
      await dump(tree.root, { imagesDir });
      const restored = await restore({ imagesDir, runner: tree.supervisor });
      expect(restored).to.include({ state: 'running', continued: true });
      expect(restored.keptStopped).to.deep.equal([held]);
      await expectFaithful(tree, held);
    });

    it('(c) a tree treestate had stopped, dumped and restored running: its own stop is undone, the application\'s kept', async () => {
      const { tree, held } = await appStoppedTree();
      await using _ = tree;
      await stopTree(tree.root);
      const imagesDir = tempDir();
      await dump(tree.root, { imagesDir });
      const restored = await restore({ imagesDir, runner: tree.supervisor });
      expect(restored.keptStopped).to.deep.equal([held]);
      await expectFaithful(tree, held);
    });

    it('(d) restore --final-state stopped + cont', async () => {
      const { tree, held } = await appStoppedTree();
      await using _ = tree;
      const imagesDir = tempDir();
      await dump(tree.root, { imagesDir });
      const restored = await restore({ imagesDir, finalState: 'stopped', runner: tree.supervisor });
      expect(restored.state).to.equal('stopped');
      await expect(tree.root).to.be.a.stoppedTree;
      const cont = await cli(['cont', String(tree.root)]);
      expect(cont.stdout).to.include(`kept stopped (stopped by the application before treestate's stop): ${held}`);
      await expectFaithful(tree, held);
    });

    it('(e) dump --final-state running keeps the application\'s stop', async () => {
      const { tree, held } = await appStoppedTree();
      await using _ = tree;
      const dumped = await dump(tree.root, { imagesDir: tempDir(), finalState: 'running' });
      expect(dumped.state).to.equal('running');
      expect(dumped.keptStopped).to.deep.equal([held]);
      await expectFaithful(tree, held);
    });

    it('(e) dump --final-state running of a tree treestate stopped resumes treestate\'s stop only', async () => {
      const { tree, held } = await appStoppedTree();
      await using _ = tree;
      await stopTree(tree.root);
      const dumped = await dump(tree.root, { imagesDir: tempDir(), finalState: 'running' });
      expect(dumped.keptStopped).to.deep.equal([held]);
      await expectFaithful(tree, held);
    });

    it('(c) restore --pid-ns new running keeps the child stopped by its namespace pid', async () => {
      const { tree, held } = await appStoppedTree();
      await using _ = tree;
      const imagesDir = tempDir();
      await dump(tree.root, { imagesDir, finalState: 'running' });
      const restored = await restore({ imagesDir, pidNamespace: 'new' });
      try {
        expect(restored.keptStopped).to.have.length(1);
        const kept = restored.keptStopped![0]!;
        expect(innermostPid(kept), 'the kept process is the held child, by its pid in the namespace').to.equal(held);
        for (const pid of restored.processes) {
          for (const s of threadStates(pid)) expect(s, `a thread of ${pid}`).to.be.oneOf(pid === kept ? ['T'] : ['R', 'S', 'D']);
        }
      } finally {
        const init = restored.pidNamespace!.init;
        const parent = Number(readFileSync(`/proc/${init}/stat`, 'utf8').split(') ')[1]!.split(' ')[1]);
        await killTree(restored.root);
        await waitFor(() => !existsSync(`/proc/${init}`) && !existsSync(`/proc/${parent}`), 5000, 'the namespace init and its parent to be gone');
      }
    });

    it('an images directory without core images is EIMAGES before criu runs: nothing restored, nothing left stopped', async () => {
      const { tree } = await appStoppedTree();
      await using _ = tree;
      const imagesDir = tempDir();
      await dump(tree.root, { imagesDir });
      const stripped = tempDir();
      cpSync(imagesDir, stripped, { recursive: true });
      for (const name of readdirSync(stripped)) if (name.startsWith('core-')) rmSync(join(stripped, name));
      const e = await rejection(restore({ imagesDir: stripped, runner: tree.supervisor }));
      expect(e.code).to.equal('EIMAGES');
      expect(e.message).to.match(/core-\d+\.img/);
      expect(existsSync(`/proc/${tree.root}`)).to.equal(false);
    });
  });
});
