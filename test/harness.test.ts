import * as chai from 'chai';
import { chownSync, existsSync, lstatSync, mkdirSync, readFileSync, readlinkSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { TreeStateError, continueTree, getTreeState, killTree, snapshot, stopTree } from '../src/index.js';
import { native, nativeExecutable } from '../src/native.js';
import { spawn } from 'node:child_process';
import { assertTreeState, checkAssertionsAwaited, checkNoLeaks, recordBaseline, spawnStopped, spawnSupervised, spawnTree } from '../src/testing/index.js';
import { hasExited, tempDirs, waitFor } from './helpers.js';

const { expect } = chai;

async function message(work: Promise<unknown>): Promise<string> {
  try {
    await work;
  } catch (e) {
    return (e as Error).message;
  }
  throw new Error('expected a rejection');
}

describe('treestate/testing', () => {
  const tempDir = tempDirs();

  it('does not blame a loader\'s esbuild --service for a leak, but any other process', async () => {
    const dir = tempDir();
    const esbuild = join(dir, 'esbuild');
    // Waits on its stdin, with no child of its own, as esbuild's service does.
    writeFileSync(esbuild, '#!/bin/sh\nread line\n', { mode: 0o755 });
    await recordBaseline();
    const service = spawn(esbuild, ['--service=0.25.0', '--ping'], { stdio: ['pipe', 'ignore', 'ignore'] });
    const other = spawn(esbuild, ['--bundle'], { stdio: ['pipe', 'ignore', 'ignore'] });
    try {
      await waitFor(() => [service, other].every((c) => readFileSync(`/proc/${c.pid}/comm`, 'utf8').trim() === 'esbuild'), 5000, 'both to run');
      const e = await checkNoLeaks().then(() => undefined, (err: unknown) => err as TreeStateError);
      expect(e?.pids).to.deep.equal([other.pid]);
    } finally {
      for (const c of [service, other]) c.kill('SIGKILL');
      await Promise.all([service, other].map((c) => new Promise((r) => (c.exitCode !== null || c.signalCode !== null ? r(null) : c.once('exit', r)))));
      await recordBaseline();
    }
  });

  it('tells every waiter of a program\'s exit, and forgets a spawn that failed', async () => {
    await using sup = await spawnSupervised('sleep', ['1000']);
    const out = join(tempDir(), 'out');
    const running = await sup.run('sh', ['-c', 'sleep 0.2'], { out });
    const first = sup.exited(running.pid);
    const second = sup.exited(running.pid);
    const within = <T>(p: Promise<T>) => Promise.race([p, new Promise<'waiting'>((r) => setTimeout(() => r('waiting'), 5000))]);
    expect(await within(first)).to.deep.equal({ code: 0, signal: null });
    expect(await within(second)).to.deep.equal({ code: 0, signal: null });
    const e = await sup.run('/nonexistent/program', [], { out }).then(
      () => undefined,
      (err: unknown) => err,
    );
    expect(e).to.have.property('code', 'ESPAWN');
    expect((sup as unknown as { spawns: Map<string, unknown> }).spawns.size, 'pending spawns').to.equal(0);
  });

  describe('spawnTree', () => {
    it('has one heartbeat per process, and heartbeats prove running and stopped', async () => {
      await using tree = await spawnTree({ depth: 1, fanout: 3, threads: 2 });
      expect(tree.size).to.equal(4);
      expect(tree.pids()).to.have.members((await snapshot(tree.root)).processes.map((p) => p.pid));
      expect(tree.heartbeats().map((h) => h.depth)).to.deep.equal([0, 1, 1, 1]);
      await tree.waitProgress();
      expect(await message(tree.assertNoProgress({ forMs: 50 }))).to.match(/heartbeat advanced within 50 ms for \d+/);
      await stopTree(tree.root);
      await tree.assertNoProgress();
      const stuck = await message(tree.waitProgress({ timeoutMs: 50 }));
      // Each named with where its threads are: both stopped.
      const stopped = (pid: number) => `${pid} \\(${pid} T( in \\w+)?, \\d+ T( in \\w+)?\\)`;
      expect(stuck).to.match(new RegExp(`^heartbeat did not advance within 50 ms for ${tree.pids().map(stopped).join(', ')}$`));
      await continueTree(tree.root);
      await tree.waitProgress();
    });
  });

  describe('heartbeat files', () => {
    it('live 0600 in a private 0700 directory of their own, removed on dispose: a symlink planted at the old predictable name does not matter', async () => {
      const base = tempDir();
      const victim = join(tempDir(), 'secret');
      writeFileSync(victim, 'root only\n', { mode: 0o600 });
      // What the old names were (treestate-PID-N.heartbeat, N counting trees): all of them, planted.
      for (let n = 1; n <= 2000; n++) symlinkSync(victim, join(base, `treestate-${process.pid}-${n}.heartbeat`));
      const saved = process.env.TREESTATE_HEARTBEAT_DIR;
      process.env.TREESTATE_HEARTBEAT_DIR = base;
      try {
        const tree = await spawnTree({ depth: 1, fanout: 1 });
        const dir = dirname(tree.heartbeatFile);
        try {
          expect(dirname(dir)).to.equal(base);
          expect([statSync(dir).mode & 0o7777, lstatSync(tree.heartbeatFile).mode & 0o7777]).to.deep.equal([0o700, 0o600]);
          await tree.waitProgress();
        } finally {
          await tree.dispose();
        }
        expect(existsSync(dir)).to.equal(false);
      } finally {
        if (saved === undefined) delete process.env.TREESTATE_HEARTBEAT_DIR;
        else process.env.TREESTATE_HEARTBEAT_DIR = saved;
      }
      expect(readFileSync(victim, 'utf8')).to.equal('root only\n');
    });

    it('the fixture creates its heartbeat file and never opens one found at the name', async () => {
      const victim = join(tempDir(), 'secret');
      writeFileSync(victim, 'root only\n', { mode: 0o600 });
      const link = join(tempDir(), 'heartbeats');
      symlinkSync(victim, link);
      await using sup = await spawnSupervised(nativeExecutable('treestate-fixture'), ['--depth', '0', '--shm', link]);
      // It exits at once (a fixture that opened the file would run on).
      const exit = await Promise.race([sup.exited(sup.root), new Promise((r) => setTimeout(() => r('still running'), 5000))]);
      expect(exit).to.deep.equal({ code: 1, signal: null });
      expect(readFileSync(victim, 'utf8')).to.equal('root only\n');
    });

    it('removes the heartbeat directories of dead runs that are ours, of our pid namespace, and no other', async () => {
      const base = tempDir();
      await using gone = await spawnSupervised('true');
      await gone.exited(gone.root);
      const ns = /\[(\d+)\]/.exec(readlinkSync('/proc/self/ns/pid'))![1];
      const dead = join(base, `treestate-heartbeats-${ns}-${gone.root}-AbC123`);
      const deadNobodys = join(base, `treestate-heartbeats-${ns}-${gone.root}-XyZ789`);
      const live = join(base, `treestate-heartbeats-${ns}-${process.ppid}-QwE456`);
      // A run in another pid namespace: its pid says nothing here.
      const otherNamespace = join(base, `treestate-heartbeats-1${ns}-${gone.root}-PoI098`);
      for (const dir of [dead, deadNobodys, live, otherNamespace]) mkdirSync(dir, { mode: 0o700 });
      writeFileSync(join(dead, 'heartbeats'), '');
      chownSync(deadNobodys, 65534, 65534);
      const saved = process.env.TREESTATE_HEARTBEAT_DIR;
      process.env.TREESTATE_HEARTBEAT_DIR = base;
      try {
        await using tree = await spawnTree({ depth: 0 });
        expect([existsSync(dead), existsSync(deadNobodys), existsSync(live), existsSync(otherNamespace)]).to.deep.equal([false, true, true, true]);
        expect(dirname(dirname(tree.heartbeatFile))).to.equal(base);
      } finally {
        if (saved === undefined) delete process.env.TREESTATE_HEARTBEAT_DIR;
        else process.env.TREESTATE_HEARTBEAT_DIR = saved;
      }
    });
  });

  describe('spawnSupervised', () => {
    it('adopts orphans and reaps killed processes at once: no zombie of pid 1, no zombie at all', async () => {
      await using tree = await spawnTree({ depth: 2, fanout: 2 });
      const before = await snapshot(tree.root);
      const middle = before.processes.find((p) => p.ppid === tree.root)!;
      // Kill the root alone: its children are orphans now, and must land in the reaper.
      const root = before.processes[0]!;
      await native().signalList([{ pid: root.pid, startTime: root.startTime }], native().signals.SIGKILL, false, []);
      await waitFor(() => !existsSync(`/proc/${tree.root}`), 2000, 'the root reaped');
      await waitFor(async () => (await getTreeState(middle.pid)).processes[0]!.ppid === tree.supervisor.pid, 2000, 'the orphan adopted');
      await killTree(middle.pid);
      const pids = before.processes.filter((p) => p.ppid === middle.pid).map((p) => p.pid).concat(middle.pid);
      await waitFor(() => pids.every((pid) => !existsSync(`/proc/${pid}`)), 2000, 'every killed process reaped');
    });

    it('runs another program under the same reaper and reports its exit', async () => {
      await using sup = await spawnSupervised('sleep', ['1000']);
      const out = join(tempDir(), 'out');
      const run = await sup.run('sh', ['-c', 'echo hello; exit 3'], { out });
      expect(await run.exited).to.deep.equal({ code: 3, signal: null });
      expect(readFileSync(out, 'utf8')).to.equal('hello\n');
    });

    it('says why a program cannot start', async () => {
      expect(await message(spawnSupervised('/nonexistent/program'))).to.equal('cannot start /nonexistent/program: No such file or directory');
    });
  });

  describe('spawnStopped', () => {
    it('starts a program stopped right after its execve, untraced, and continueTree starts it', async () => {
      const marker = join(tempDir(), 'started');
      await using sup = await spawnStopped('sh', ['-c', `echo yes > ${marker}; exec sleep 1000`]);
      const status = await getTreeState(sup.root);
      expect(status.state).to.equal('stopped');
      expect(status.processes[0]!.comm).to.equal('sh');
      expect(status.processes[0]!.threads[0]).to.deep.equal({ tid: sup.root, state: 'T' });
      await new Promise((r) => setTimeout(r, 50));
      expect(existsSync(marker)).to.equal(false);
      await continueTree(sup.root);
      await waitFor(() => existsSync(marker), 2000, 'the program running');
    });
  });

  describe('assertions', () => {
    it('expect(pid).to.be.a.stoppedTree / runningTree / deadTree, naming what is off', async () => {
      await using tree = await spawnTree({ depth: 1, fanout: 1, threads: 2 });
      await expect(tree.root).to.be.a.runningTree;
      await expect(tree.root).not.to.be.a.stoppedTree;
      const [root, child] = tree.pids();
      const failure = await message(assertTreeState(tree.root, 'stopped', { timeoutMs: 50 }));
      expect(failure).to.match(new RegExp(`^expected the tree of ${root} to be stopped, but it is running: pid ${root} \\([RS]\\), pid ${root} thread \\d+ \\([RS]\\), pid ${child} \\([RS]\\)`));
      expect(await message(Promise.resolve(expect(tree.root).to.be.a.deadTree))).to.match(/to be dead, but it is running/);
      await stopTree(tree.root);
      await expect(tree.root).to.be.a.stoppedTree;
      await killTree(tree.root);
      await expect(tree.root).to.be.a.deadTree;
    });
  });

  describe('leak check', () => {
    it('fails a test that leaves a tree behind, naming it, and cleans it up', async () => {
      const tree = await spawnTree({ depth: 1, fanout: 1 });
      const failure = await checkNoLeaks().then(() => undefined, (e: TreeStateError) => e);
      expect(failure).to.be.instanceOf(TreeStateError);
      expect(failure!.code).to.equal('ELEAK');
      expect(failure!.message).to.equal(`the test left 1 supervised tree running: treestate-fixture (root ${tree.root})`);
      expect(existsSync(`/proc/${tree.root}`)).to.equal(false);
      await tree.dispose(); // the heartbeat file, which the leak check does not know
    });

    it('kills and reaps the processes it reports, a whole subtree', async () => {
      await recordBaseline();
      // A child the test spawned and forgot, with a child of its own.
      const shell = spawn('sh', ['-c', 'sleep 1000 & exec sleep 1001'], { stdio: 'ignore' });
      let grandchild = 0;
      await waitFor(async () => {
        const tree = await snapshot(shell.pid!);
        grandchild = tree.processes.find((p) => p.pid !== shell.pid)?.pid ?? 0;
        return grandchild > 0 && tree.processes[0]!.comm === 'sleep';
      });
      const failure = await checkNoLeaks().then(() => undefined, (e: TreeStateError) => e);
      expect(failure?.code).to.equal('ELEAK');
      expect(failure!.pids).to.have.members([shell.pid, grandchild]);
      expect(failure!.message).to.match(/left processes behind: .* \(killed and reaped\)$/);
      // Gone: the child reaped by Node, the grandchild dead (its parent died first or after: init's to reap).
      expect(existsSync(`/proc/${shell.pid}`)).to.equal(false);
      expect(hasExited(grandchild)).to.equal(true);
      expect((await snapshot(process.pid)).processes.map((p) => p.pid)).to.not.include.members([shell.pid, grandchild]);
    });
  });

  describe('un-awaited assertions', () => {
    it('fails a test that did not await a chai tree assertion, naming it', async () => {
      await using tree = await spawnTree({ depth: 0 });
      // Running, so this would have passed silently whatever it said.
      void expect(tree.root).to.be.a.stoppedTree;
      void expect(tree.root).not.to.be.a.runningTree;
      const failure = await checkAssertionsAwaited().then(() => undefined, (e: TreeStateError) => e);
      expect(failure?.code).to.equal('ENOTAWAITED');
      expect(failure!.message).to.match(new RegExp(`^the test did not await 2 tree assertions, which therefore proved nothing: expect\\(${tree.root}\\)\\.to\\.be\\.a\\.stoppedTree\n`));
      expect(failure!.message).to.include(`expect(${tree.root}).not.to.be.a.runningTree`);
      expect(failure!.message).to.include('harness.test.ts');
      // Reported once: the next check starts afresh.
      await checkAssertionsAwaited();
    });

    it('lets awaited ones through, whether they pass or fail', async () => {
      await using tree = await spawnTree({ depth: 0 });
      await expect(tree.root).to.be.a.runningTree;
      await expect(tree.root).not.to.be.a.stoppedTree;
      await expect(tree.root).to.be.a.stoppedTree.catch(() => 'caught');
      await checkAssertionsAwaited();
    });
  });
});
