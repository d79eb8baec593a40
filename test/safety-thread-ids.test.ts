// Safety: a thread id is not a pid. /proc/TID opens for any thread (readdir
// hides it, lookup does not) and a signal sent through it reaches the whole
// process, so a tid given as the root used to stop or kill the process it
// belongs to, even treestate's own parent or treestate itself. Each test
// below names a non-leader thread of a real multi-threaded process.
import { expect } from 'chai';
import { spawn } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { getTreeState, killTree, snapshot, stopTree } from '../src/index.js';
import { spawnTree } from '../src/testing/index.js';
import { cliPath, rejection, statFields } from './helpers.js';

/** The threads of `pid` other than its leader. */
function otherThreads(pid: number): number[] {
  return readdirSync(`/proc/${pid}/task`).map(Number).filter((tid) => tid !== pid);
}

describe('safety: thread ids', function () {
  this.timeout(30_000);

  it('refuses the tid of a fixture thread with EINVAL_PID naming its process, and leaves the process running', async () => {
    await using tree = await spawnTree({ depth: 1, fanout: 1, threads: 3 });
    const [tid] = otherThreads(tree.root);
    for (const op of [stopTree, killTree, getTreeState, snapshot]) {
      const e = await rejection(op(tid!));
      expect(e.code, `${op.name}: ${e.message}`).to.equal('EINVAL_PID');
      expect(e.message).to.equal(`${tid} is a thread of process ${tree.root}, not a process; name the process`);
    }
    await tree.waitProgress();
    await expect(tree.root).to.be.a.runningTree;
  });

  it('stopTree of a thread of the calling process is refused, and the caller is not stopped', async () => {
    // libuv's pool threads: one of them runs the native walk itself.
    const [tid] = otherThreads(process.pid);
    expect(tid, 'a non-leader thread of this process').to.be.a('number');
    // Before the fix this stop stopped this very process; the watchdog (a
    // child of ours) continues it so that the test can fail instead of hang.
    const watchdog = spawn('sh', ['-c', `for i in $(seq 50); do sleep 0.2; kill -CONT ${process.pid}; done`], { stdio: 'ignore' });
    try {
      const e = await rejection(stopTree(tid!, { timeoutMs: 2000 }));
      expect(e.code, e.message).to.equal('EREFUSED');
      expect(e.message).to.equal(`refusing pid ${tid}: it is a thread of process ${process.pid}, treestate itself`);
      expect(statFields(process.pid)[0]).to.not.equal('T');
    } finally {
      watchdog.kill('SIGKILL');
      await new Promise((resolve) => (watchdog.exitCode !== null || watchdog.signalCode !== null ? resolve(null) : watchdog.once('exit', resolve)));
    }
  });

  it("the CLI run by a multi-threaded parent refuses `kill <a thread of that parent>`, and the parent lives", async () => {
    // The parent (a Node process: it has libuv threads) runs the CLI on one
    // of its own threads and reports what the CLI said. Before the fix the
    // CLI stopped and then killed it.
    const script = `
      const { spawnSync } = require('node:child_process');
      const tid = require('node:fs').readdirSync('/proc/self/task').map(Number).find((t) => t !== process.pid);
      const r = spawnSync(process.execPath, [${JSON.stringify(cliPath)}, 'kill', String(tid)], { encoding: 'utf8', env: { ...process.env, NO_COLOR: '1' } });
      process.stdout.write(JSON.stringify({ tid, code: r.status, stderr: r.stderr }));`;
    const parent = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    parent.stdout.on('data', (d) => (out += d));
    const [code, signal] = await new Promise<[number | null, string | null]>((resolve) => parent.on('exit', (c, s) => resolve([c, s])));
    expect(signal, 'the parent was killed').to.equal(null);
    expect(code).to.equal(0);
    const report = JSON.parse(out) as { tid: number; code: number; stderr: string };
    expect(report.code, report.stderr).to.equal(1);
    expect(report.stderr).to.equal(`treestate: refusing pid ${report.tid}: it is a thread of process ${parent.pid}, an ancestor of treestate\n`);
  });

  it('refuses a thread of pid 1 like pid 1', async () => {
    // pid 1 is multi-threaded on this VM (and on systemd hosts); where it has
    // a single thread there is no such tid to refuse.
    for (const tid of otherThreads(1).slice(0, 3)) {
      const status = await rejection(getTreeState(tid));
      expect(status.code, status.message).to.equal('EREFUSED');
      expect(status.message).to.equal(`refusing pid ${tid}: it is a thread of pid 1, whose tree is the whole system`);
      // Only once a look is refused: a stop that got through would stop init.
      expect((await rejection(stopTree(tid))).code).to.equal('EREFUSED');
    }
  });
});
