// criu over its RPC socket (criu swrk): the transport, every notification as a
// hook with the right pid while criu waits, a failing hook, and dump statistics.
import { chmodSync, closeSync, mkdirSync, openSync, read, readFileSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { expect } from 'chai';
import { dump, getTreeState, killTree, restore, snapshot } from '../src/index.js';
import { onPath } from '../src/criu/locate.js';
import { childProcessRunner, type CommandRunner } from '../src/criu/runner.js';
import { native } from '../src/native.js';
import { spawnSupervised, spawnTree } from '../src/testing/index.js';
import { cli, rejection, requireCriu, tempDirs, waitFor } from './helpers.js';

type Status = Awaited<ReturnType<typeof getTreeState>>;

function threadStates(status: Status): string {
  return status.processes.flatMap((p) => p.threads.map((t) => t.state)).join('');
}

/** A runner that starts criu as usual and remembers its pid and arguments. */
function recordingRunner(): CommandRunner & { started: Array<{ pid: number; args: string[] }> } {
  const started: Array<{ pid: number; args: string[] }> = [];
  return {
    started,
    async run(file, args, options) {
      const running = await childProcessRunner.run(file, args, options);
      started.push({ pid: running.pid, args });
      return running;
    },
  };
}

describe('criu RPC transport', () => {
  it('carries whole messages and descriptors over a SEQPACKET socket pair', async () => {
    const addon = native();
    const [a, b] = addon.seqpacketPair();
    const big = Buffer.alloc(100_000, 7); // far more than CRIU's on-stack buffer (PB_PKOBJ_LOCAL_SIZE): sized by a peek
    const file = openSync('/proc/self/stat', 'r');
    try {
      await addon.sendMessage(a, Buffer.from('one'));
      await addon.sendMessage(a, big, [file]);
      const first = await addon.receiveMessage(b);
      expect(first!.data.toString()).to.equal('one');
      expect(first!.fds).to.deep.equal([]);
      const second = await addon.receiveMessage(b);
      expect(second!.data.equals(big)).to.equal(true);
      expect(second!.fds).to.have.length(1);
      // The received descriptor is a working copy of ours.
      expect(readFileSync(second!.fds[0]!, 'utf8')).to.match(/^\d+ \(/);
      closeSync(second!.fds[0]!);
      closeSync(a);
      expect(await addon.receiveMessage(b)).to.equal(null);
    } finally {
      closeSync(file);
      closeSync(b);
    }
  });
});

describe('criu RPC hooks and results', function () {
  this.timeout(60_000);
  requireCriu();
  const tempDir = tempDirs();

  it('calls the dump hooks in criu\'s order with the root pid; during postDump the tree is seized and criu swrk runs', async () => {
    await using tree = await spawnTree({ depth: 1, fanout: 2, threads: 2 });
    const runner = recordingRunner();
    const calls: string[] = [];
    let duringPostDump: { tree: Status; criu: Status; args: string[] } | undefined;
    const result = await dump(tree.root, {
      imagesDir: tempDir(),
      finalState: 'running',
      runner,
      hooks: {
        preDump: ({ pid }) => void calls.push(`preDump ${pid}`),
        queryExtFiles: ({ pid }) => void calls.push(`queryExtFiles ${pid}`),
        postDump: async ({ pid }) => {
          calls.push(`postDump ${pid}`);
          const criu = runner.started[0]!;
          duringPostDump = { tree: await getTreeState(tree.root), criu: await getTreeState(criu.pid), args: criu.args };
        },
      },
    });
    expect(calls).to.deep.equal([`preDump ${tree.root}`, `queryExtFiles ${tree.root}`, `postDump ${tree.root}`]);
    // Every thread of the tree in ptrace-stop, held by criu; criu itself alive.
    expect(threadStates(duringPostDump!.tree)).to.equal('t'.repeat(6));
    expect(duringPostDump!.tree.processes.map((p) => p.pid).sort()).to.deep.equal([...tree.pids()].sort());
    expect(duringPostDump!.criu.state).to.equal('running');
    expect(duringPostDump!.args).to.deep.equal(['swrk', '3']);
    expect(result.state).to.equal('running');
    await tree.waitProgress();
  });

  it('a throwing postDump leaves the tree running and rejects with EHOOK naming the hook and its error', async () => {
    await using tree = await spawnTree({ depth: 1, fanout: 2 });
    const imagesDir = tempDir();
    const e = await rejection(
      dump(tree.root, {
        imagesDir,
        finalState: 'dead',
        hooks: {
          postDump: () => {
            throw new Error('the copy to the other host failed');
          },
        },
      }),
    );
    expect(e.code).to.equal('EHOOK');
    expect(e.message).to.match(new RegExp(`^the postDump hook \\(criu's post-dump\\) failed: the copy to the other host failed; the tree of ${tree.root} is running; log: `));
    expect(e.details).to.include({ hook: 'postDump', notification: 'post-dump', criuSucceeded: false });
    expect((e.cause as Error).message).to.equal('the copy to the other host failed');
    await expect(tree.root).to.be.a.runningTree;
    await tree.waitProgress();
  });

  it('a rejecting preDump stops criu before it seizes anything', async () => {
    await using tree = await spawnTree({ depth: 0 });
    let seized = false;
    const e = await rejection(
      dump(tree.root, {
        imagesDir: tempDir(),
        hooks: {
          preDump: async () => Promise.reject(new Error('not now')),
          postDump: () => void (seized = true),
        },
      }),
    );
    expect(e.code).to.equal('EHOOK');
    expect(e.message).to.match(/^the preDump hook \(criu's pre-dump\) failed: not now; the tree of \d+ is running/);
    expect(seized).to.equal(false);
    await tree.waitProgress();
  });

  it('a hook that never settles runs into the timeout: criu is killed and the tree goes on', async () => {
    await using tree = await spawnTree({ depth: 1, fanout: 1 });
    const started = performance.now();
    const e = await rejection(dump(tree.root, { imagesDir: tempDir(), timeoutMs: 1000, hooks: { preDump: () => new Promise<void>(() => {}) } }));
    expect(e.code).to.equal('ETIMEDOUT');
    expect(e.message).to.match(new RegExp(`^criu dump did not finish within 1000 ms and was killed.*; the tree of ${tree.root} is running`));
    expect(performance.now() - started).to.be.below(10_000);
    await tree.waitProgress();
  });

  it('calls the restore hooks in order; preResume sees the restored tree, with the dumped pids, before it runs', async () => {
    await using tree = await spawnTree({ depth: 1, fanout: 2, threads: 2 });
    const imagesDir = tempDir();
    await dump(tree.root, { imagesDir });
    const calls: string[] = [];
    let beforeRun: Status | undefined;
    let heartbeatsInPreResume: number[][] = [];
    const restored = await restore({
      imagesDir,
      runner: tree.supervisor,
      hooks: {
        preRestore: ({ pid }) => void calls.push(`preRestore ${pid}`),
        postRestore: ({ pid }) => void calls.push(`postRestore ${pid}`),
        preResume: async ({ pid }) => {
          calls.push(`preResume ${pid}`);
          beforeRun = await getTreeState(pid!);
          const first = tree.heartbeats().map((h) => h.counter);
          await new Promise((r) => setTimeout(r, 100));
          heartbeatsInPreResume = [first, tree.heartbeats().map((h) => h.counter)];
        },
        postResume: ({ pid }) => void calls.push(`postResume ${pid}`),
      },
    });
    expect(calls).to.deep.equal(['preRestore undefined', `postRestore ${tree.root}`, `preResume ${tree.root}`, `postResume ${tree.root}`]);
    expect(restored.root).to.equal(tree.root);
    // With hooks the tree is restored stopped and continued by treestate, even though nothing was stopped at dump time.
    expect(restored.continued).to.equal(true);
    expect(restored.request).to.include({ leave_stopped: true });
    expect(beforeRun!.processes.map((p) => p.pid).sort()).to.deep.equal([...tree.pids()].sort());
    // Held by criu, not running: no heartbeat moved while preResume waited.
    expect(threadStates(beforeRun!)).to.match(/^t+$/);
    expect(heartbeatsInPreResume[1]).to.deep.equal(heartbeatsInPreResume[0]);
    await tree.waitProgress();
  });

  it('a throwing preResume cannot stop criu: the restore rejects with EHOOK and says where the tree is', async () => {
    await using tree = await spawnTree({ depth: 0 });
    const imagesDir = tempDir();
    await dump(tree.root, { imagesDir });
    const e = await rejection(
      restore({
        imagesDir,
        runner: tree.supervisor,
        hooks: {
          preResume: () => {
            throw new Error('too late to say no');
          },
        },
      }),
    );
    expect(e.code).to.equal('EHOOK');
    expect(e.details).to.include({ hook: 'preResume', criuSucceeded: true, root: tree.root });
    expect(e.message).to.match(new RegExp(`criu restore went on: the tree of ${tree.root} is stopped`));
    await killTree(tree.root);
  });

  it('returns dump statistics, plausible against the tree', async () => {
    await using tree = await spawnTree({ depth: 1, fanout: 1, memoryMb: 8 });
    const result = await dump(tree.root, { imagesDir: tempDir(), finalState: 'running' });
    const s = result.stats!;
    expect(s, 'stats').to.not.equal(undefined);
    // The root dirtied 8 MB: at least 2048 pages written.
    expect(s.pagesWritten).to.be.at.least(2048);
    expect(s.pagesScanned).to.be.at.least(s.pagesWritten);
    expect(s.bytesWritten).to.equal(s.pagesWritten * 4096);
    expect(s.frozenMs).to.be.greaterThan(0).and.at.most(result.elapsedMs);
    expect(s.freezingMs).to.be.at.most(s.frozenMs);
    expect(s.memdumpMs + s.memwriteMs).to.be.greaterThan(0);
    await tree.waitProgress();
  });

  it('CLI: --json carries the stats, and the human line sums them up', async () => {
    await using tree = await spawnTree({ depth: 0 });
    const json = await cli(['dump', String(tree.root), '-D', join(tempDir(), 'a'), '--final-state', 'running', '--json']);
    expect(json.code, json.stderr).to.equal(0);
    expect(JSON.parse(json.stdout).stats.pagesWritten).to.be.greaterThan(0);
    const human = await cli(['dump', String(tree.root), '-D', join(tempDir(), 'b'), '--final-state', 'running']);
    expect(human.code, human.stderr).to.equal(0);
    expect(human.stdout).to.match(/frozen [\d.]+ ms, [\d.]+ [kM]B written/);
  });

  it('CLI: --hook NAME=PROGRAM runs the program with the notification and pid in its environment; a failing one is EHOOK', async () => {
    await using tree = await spawnTree({ depth: 0 });
    const dir = tempDir();
    const record = join(dir, 'record');
    const hook = join(dir, 'hook');
    writeFileSync(hook, `#!/bin/sh\necho "$CRTOOLS_SCRIPT_ACTION $CRTOOLS_INIT_PID" >> ${record}\nexit $(cat ${dir}/exit 2>/dev/null || echo 0)\n`);
    chmodSync(hook, 0o755);
    const ok = await cli(['dump', String(tree.root), '-D', join(dir, 'a'), '--final-state', 'running', '--hook', `preDump=${hook}`, '--hook', `post-dump=${hook}`]);
    expect(ok.code, ok.stderr).to.equal(0);
    expect(readFileSync(record, 'utf8')).to.equal(`pre-dump ${tree.root}\npost-dump ${tree.root}\n`);
    writeFileSync(join(dir, 'exit'), '3');
    const failed = await cli(['dump', String(tree.root), '-D', join(dir, 'b'), '--hook', `postDump=${hook}`]);
    expect(failed.code).to.equal(1);
    expect(failed.stderr).to.match(new RegExp(`^treestate: the postDump hook \\(criu's post-dump\\) failed: ${hook} exited with 3; the tree of ${tree.root} is running`));
    await tree.waitProgress();
    for (const name of ['afterLunch', 'toString']) {
      const usage = await cli(['dump', String(tree.root), '-D', join(dir, 'c'), '--hook', `${name}=/bin/true`]);
      expect(usage.code, name).to.equal(2);
      expect(usage.stderr).to.include('NAME one of preDump, postDump');
    }
  });

  it('orphanPtsMaster receives a usable pty master for a --shell-job tree whose terminal is gone', async function () {
    const python = onPath('python3');
    if (!python) {
      if (process.env.CI) throw new Error('CI needs python3');
      this.skip();
    }
    // `cat` in a session of its own on a pty whose master only python holds;
    // python closes the master once cat is dumped (killed), freeing the pty.
    const code = [
      'import os, fcntl, termios, time',
      'm, s = os.openpty()',
      'pid = os.fork()',
      'if pid == 0:',
      '    os.setsid(); fcntl.ioctl(s, termios.TIOCSCTTY, 0)',
      '    for fd in (0, 1, 2): os.dup2(s, fd)',
      '    os.close(m); os.close(s); os.execvp("cat", ["cat"])',
      'os.close(s); os.waitpid(pid, 0); os.close(m); time.sleep(1000)',
    ].join('\n');
    await using holder = await spawnSupervised(python!, ['-c', code]);
    let cat = 0;
    await waitFor(async () => Boolean((cat = (await snapshot(holder.root)).processes.find((p) => p.comm === 'cat')?.pid ?? 0)), 10_000, 'cat on its pty');
    const imagesDir = tempDir();
    await dump(cat, { imagesDir, shellJob: true });
    await waitFor(async () => !(await snapshot(holder.root)).processes.some((p) => p.pid === cat), 5000, 'the dumped cat reaped');
    let master = -1;
    try {
      const restored = await restore({
        imagesDir,
        shellJob: true,
        runner: holder,
        hooks: {
          orphanPtsMaster: ({ fd }) => void (master = fd),
        },
      });
      expect(restored.root).to.equal(cat);
      expect(master).to.be.greaterThan(2);
      // The restored cat reads its new terminal and writes back: the line
      // discipline's echo, then cat's copy.
      writeSync(master, 'ping\n');
      let seen = '';
      const buffer = Buffer.alloc(256);
      while ((seen.match(/ping/g) ?? []).length < 2) {
        const n = await new Promise<number>((resolve, reject) => read(master, buffer, 0, buffer.length, null, (e, k) => (e ? reject(e) : resolve(k))));
        seen += buffer.subarray(0, n).toString();
      }
      expect(seen).to.equal('ping\r\nping\r\n');
      await killTree(restored.root);
    } finally {
      if (master >= 0) closeSync(master);
    }
  });

  it('`treestate check` asks criu check and dirty-memory tracking over RPC when no verdict is kept', async () => {
    const stateDir = join(tempDir(), 'state');
    mkdirSync(stateDir, { mode: 0o700 });
    const run = await cli(['check', '--json'], { env: { TREESTATE_STATE_DIR: stateDir } });
    expect(run.code, run.stderr).to.equal(0);
    const value = JSON.parse(run.stdout);
    expect(value).to.include({ cached: false, check: 'Looks good.' });
    expect(value.dirtyTracking).to.be.a('boolean');
    // … and the next one uses the verdicts kept for this binary and kernel.
    const again = JSON.parse((await cli(['check', '--json'], { env: { TREESTATE_STATE_DIR: stateDir } })).stdout);
    expect(again).to.include({ cached: true, check: 'Looks good.', dirtyTracking: value.dirtyTracking });
  });
});
