import { expect } from 'chai';
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { dump, getTreeState, preflight, type Blocker } from '../src/index.js';
import { onPath } from '../src/criu/locate.js';
import { nativeExecutable } from '../src/native.js';
import { spawnSupervised, spawnTree } from '../src/testing/index.js';
import { cli, rejection, requireCriu, tempDirs, waitFor } from './helpers.js';

function blocker(blockers: Blocker[], kind: Blocker['kind']): Blocker {
  const found = blockers.find((b) => b.kind === kind);
  expect(found, `a ${kind} blocker among ${blockers.map((b) => b.kind).join(', ')}`).to.not.equal(undefined);
  return found!;
}

function tracerOf(pid: number): number {
  return Number(/^TracerPid:\s*(\d+)/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1]);
}

/** The pid of the `sleep` in the tree of `root`, once it is there. */
async function sleepUnder(root: number): Promise<number> {
  let pid = 0;
  await waitFor(async () => {
    pid = (await getTreeState(root)).processes.find((p) => p.comm === 'sleep')?.pid ?? 0;
    return pid > 0;
  }, 5000, `a sleep under ${root}`);
  return pid;
}

/** A `sleep` started by this process directly, with the given stdio and session. */
async function plainChild(stdio: 'pipe' | 'ignore', detached: boolean): Promise<ChildProcess & { [Symbol.asyncDispose](): Promise<void> }> {
  const child = spawn('sleep', ['1000'], { stdio: ['ignore', stdio, 'ignore'], detached });
  await new Promise((resolve) => child.once('spawn', resolve));
  return Object.assign(child, {
    async [Symbol.asyncDispose]() {
      const exited = new Promise((resolve) => (child.exitCode !== null || child.signalCode !== null ? resolve(null) : child.once('exit', resolve)));
      child.kill('SIGKILL');
      await exited;
    },
  });
}

describe('preflight: what would stop a dump, before it runs', () => {
  requireCriu();
  const tempDir = tempDirs();

  it('finds nothing in a tree of its own session, with files for stdio, and the CLI exits 0', async () => {
    await using tree = await spawnTree({ depth: 1, fanout: 2, threads: 2 });
    const r = await preflight(tree.root);
    expect(r.ok).to.equal(true);
    expect(r.blockers.filter((b) => b.blocks === 'dump')).to.deep.equal([]);
    expect(blocker(r.blockers, 'pids-taken').pids).to.have.members(tree.pids());
    const run = await cli(['preflight', String(tree.root)]);
    expect(run.code, run.stderr).to.equal(0);
    expect(run.stdout).to.include('nothing blocks a dump');
  });

  it('names a unix socket whose peer is outside the tree, with the peer\'s pid; the --ext-unix-sk it suggests then dumps', async () => {
    // Node's stdio "pipe" is a socketpair: this test process holds the other end.
    await using child = await plainChild('pipe', true);
    const r = await preflight(child.pid!);
    expect(r.ok).to.equal(false);
    const b = blocker(r.blockers, 'external-unix-socket');
    expect(b.pids).to.deep.equal([child.pid]);
    expect(b.outside).to.include(process.pid);
    expect(b.fix).to.include('--ext-unix-sk=');
    const run = await cli(['preflight', String(child.pid), '--json']);
    expect(run.code).to.equal(1);
    expect(JSON.parse(run.stdout).blockers.map((x: Blocker) => x.kind)).to.include('external-unix-socket');
    expect((await rejection(dump(child.pid!, { imagesDir: tempDir(), finalState: 'running' }))).message).to.include('External socket is used');
    await dump(child.pid!, { imagesDir: tempDir(), finalState: 'running', extraArgs: b.extraArgs });
  });

  it('names a session led from outside the tree; --shell-job then dumps', async () => {
    // The reaper leads the session: outside the tree, whatever session runs the tests.
    await using sup = await spawnSupervised('sleep', ['1000'], { setsid: 'reaper' });
    const r = await preflight(sup.root);
    const b = blocker(r.blockers, 'session');
    expect(b.pids).to.deep.equal([sup.root]);
    expect(b.outside).to.deep.equal([sup.pid]);
    expect(b.fix).to.include('--shell-job');
    expect((await rejection(dump(sup.root, { imagesDir: tempDir(), finalState: 'running' }))).message).to.include('is not a session leader');
    await dump(sup.root, { imagesDir: tempDir(), finalState: 'running', shellJob: true });
  });

  it('names a session led from outside the tree\'s pid namespace, which --shell-job cannot help, and the failed dump says what to do', async () => {
    // unshare leads a session of its own and forks sleep into a new pid
    // namespace: the sleep's session (NSsid "N 0") is led from outside it, as
    // for a tree started by `docker exec` or `unshare -p` without setsid.
    await using sup = await spawnSupervised('unshare', ['--pid', '--fork', '--mount-proc', 'sleep', '1000']);
    const pid = await sleepUnder(sup.root);
    const r = await preflight(pid);
    const b = blocker(r.blockers, 'session');
    expect(b.pids).to.deep.equal([pid]);
    expect(b.message).to.include('session 0 as its pid namespace sees it');
    expect(b.fix).to.not.include('--shell-job');
    expect(r.blockers.filter((x) => x.kind === 'session')).to.have.length(1);
    const e = await rejection(dump(pid, { imagesDir: tempDir(), finalState: 'running', shellJob: true }));
    expect(e.code).to.equal('ECRIU');
    expect(e.message).to.match(/outside of its pid namespace \(.*--shell-job cannot help; start the tree in a session of its own: setsid, or treestate run --detach\)/);
    expect((await getTreeState(pid)).state).to.equal('running');
  });

  it('names a controlling terminal (a pty); --shell-job then dumps', async function () {
    const script = onPath('script');
    if (!script) {
      if (process.env.CI) throw new Error('CI needs util-linux script');
      this.skip();
    }
    await using term = await spawnSupervised(script!, ['-qc', 'exec sleep 1000', '/dev/null']);
    const pid = await sleepUnder(term.root);
    const r = await preflight(pid);
    expect(blocker(r.blockers, 'terminal').pids).to.deep.equal([pid]);
    expect((await rejection(dump(pid, { imagesDir: tempDir(), finalState: 'running' }))).code).to.equal('ECRIU');
    await dump(pid, { imagesDir: tempDir(), finalState: 'running', shellJob: true });
  });

  it('names established TCP connections; --tcp-established then dumps', async () => {
    await using tree = await spawnTree({ depth: 0, sockets: true, tcpPair: true });
    const r = await preflight(tree.root);
    const b = blocker(r.blockers, 'tcp-established');
    expect(b.pids).to.deep.equal([tree.root]);
    expect(b.message).to.match(/127\.0\.0\.1:\d+ → 127\.0\.0\.1:\d+/);
    expect((await rejection(dump(tree.root, { imagesDir: tempDir(), finalState: 'running' }))).message).to.include('--tcp-established');
    await dump(tree.root, { imagesDir: tempDir(), finalState: 'running', tcpEstablished: true });
  });

  it('names a traced process and its tracer', async () => {
    await using tree = await spawnTree({ depth: 1, fanout: 1 });
    const child = tree.pids()[1]!;
    await using tracer = await spawnSupervised(nativeExecutable('treestate-fixture'), ['--swallow-stops', String(child)]);
    await waitFor(() => tracerOf(child) === tracer.root, 2000, 'the tracer attached');
    const r = await preflight(tree.root);
    const b = blocker(r.blockers, 'traced');
    expect(b.pids).to.deep.equal([child]);
    expect(b.outside).to.deep.equal([tracer.root]);
    await tracer.dispose();
    await waitFor(() => tracerOf(child) === 0, 2000, 'the tracer gone');
    expect((await preflight(tree.root)).ok).to.equal(true);
    await dump(tree.root, { imagesDir: join(tempDir(), 'i'), finalState: 'running' });
  });
});
