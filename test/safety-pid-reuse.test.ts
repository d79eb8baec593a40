// Safety 2: PID reuse. A process known from an earlier pass exits, and its pid
// is taken by an unrelated process. Nothing treestate does afterwards with the
// old identity may reach the new process. The reuse is forced, as root,
// through /proc/sys/kernel/ns_last_pid: the next fork gets ns_last_pid + 1.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, writeFileSync } from 'node:fs';
import { expect } from 'chai';
import { TreeStateError, killTree, snapshot, stopTree } from '../src/index.js';
import { native } from '../src/native.js';
import { observePasses, spawnSupervised, spawnTree, type Supervisor } from '../src/testing/index.js';
import { statFields } from './helpers.js';

function pause(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** The state letter of a process from /proc/PID/stat ('?' if it is gone). */
function stateOf(pid: number): string {
  try {
    return statFields(pid)[0]!;
  } catch {
    return '?';
  }
}

async function waitUntil(what: string, ok: () => boolean, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!ok()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}`);
    await pause(2);
  }
}

/** An unrelated process of our own (sleep), killed and reaped by `end`. */
class Unrelated {
  private readonly exited: Promise<void>;
  constructor(readonly child: ChildProcess) {
    this.exited = new Promise((resolve) => (child.exitCode !== null || child.signalCode !== null ? resolve() : child.once('exit', () => resolve())));
  }
  get pid(): number {
    return this.child.pid!;
  }
  async end(): Promise<void> {
    this.child.kill('SIGKILL');
    await this.exited;
  }
}

function spawnSleep(): Unrelated {
  return new Unrelated(spawn('sleep', ['600'], { stdio: 'ignore' }));
}

/**
 * Starts an unrelated process on exactly `pid` (which must be free): write
 * pid-1 to ns_last_pid, fork. Another fork on the system may get there first:
 * then retry, the pid is still free.
 */
async function takePid(pid: number): Promise<Unrelated> {
  await waitUntil(`pid ${pid} is free`, () => !existsSync(`/proc/${pid}`));
  for (let attempt = 0; attempt < 100; attempt++) {
    writeFileSync('/proc/sys/kernel/ns_last_pid', String(pid - 1));
    const candidate = spawnSleep();
    if (candidate.pid === pid) return candidate;
    await candidate.end();
  }
  throw new Error(`could not place a process on pid ${pid}`);
}

/** Like takePid, but the new process is a child of the reaper: inside the tree the reaper roots. */
async function runOnPid(supervisor: Supervisor, pid: number): Promise<number> {
  await waitUntil(`pid ${pid} is free`, () => !existsSync(`/proc/${pid}`));
  for (let attempt = 0; attempt < 100; attempt++) {
    writeFileSync('/proc/sys/kernel/ns_last_pid', String(pid - 1));
    const candidate = await supervisor.run('sleep', ['600'], { out: '/dev/null' });
    if (candidate.pid === pid) return pid;
    process.kill(candidate.pid, 'SIGKILL');
    await candidate.exited;
  }
  throw new Error(`could not place a process on pid ${pid}`);
}

describe('safety: pid reuse', function () {
  this.timeout(60_000);
  const cleanup: Unrelated[] = [];
  afterEach(async () => {
    await Promise.all(cleanup.splice(0).map((u) => u.end()));
  });

  it('signalList leaves alone an unrelated process that took the pid, and reports the target as gone', async () => {
    const { SIGSTOP } = native().signals;
    const protect = native().selfAndAncestors();
    const original = spawnSleep();
    cleanup.push(original);
    const identity = { pid: original.pid, startTime: (await snapshot(original.pid)).processes[0]!.startTime };
    // Start times count clock ticks (10 ms): let the successor start in a later one.
    await pause(30);
    await original.end();
    const successor = await takePid(identity.pid);
    cleanup.push(successor);
    expect(successor.pid).to.equal(identity.pid);
    expect((await snapshot(successor.pid)).processes[0]!.startTime).to.not.equal(identity.startTime);

    const result = await native().signalList([identity], SIGSTOP, true, protect);
    expect(result.signalled).to.deep.equal([]);
    expect(result.gone).to.deep.equal([identity.pid]);
    expect(result.failures).to.deep.equal([]);
    await pause(50);
    expect(stateOf(successor.pid), 'the unrelated process must not be stopped').to.not.equal('T');

    // Control: with the successor's own identity the same call does stop it,
    // so the check above could have seen a stop.
    const own = { pid: successor.pid, startTime: (await snapshot(successor.pid)).processes[0]!.startTime };
    const control = await native().signalList([own], SIGSTOP, true, protect);
    expect(control.signalled).to.deep.equal([successor.pid]);
    await waitUntil('the control stop lands', () => stateOf(successor.pid) === 'T');
  });

  it("a stop's rollback does not continue unrelated, stopped processes that took the pids of processes it had stopped", async () => {
    await using tree = await spawnTree({ depth: 1, fanout: 2, intervalMs: 20 });
    const original = tree.pids();
    let calls = 0;
    const successors: Unrelated[] = [];
    // Between the first pass that stops (the whole tree; after the stop's
    // look, which signals nothing) and the second, the
    // whole tree dies (its reaper reaps it; the root's pid is free only once
    // its session is empty) and unrelated processes, which we stop ourselves,
    // take every one of its pids. The second pass finds the root gone
    // (ESRCH), so stopTree rolls back: SIGCONT to what it stopped, by identity.
    const stop = observePasses({
      beforePass: async () => {
        if (++calls !== 3) return;
        await pause(30); // a later clock tick than the tree's start times
        for (const pid of original) process.kill(pid, 'SIGKILL');
        for (const pid of original) {
          const successor = await takePid(pid);
          successors.push(successor);
          cleanup.push(successor);
          process.kill(successor.pid, 'SIGSTOP');
          await waitUntil(`the unrelated process ${pid} is stopped`, () => stateOf(successor.pid) === 'T');
        }
      },
    });
    let error: unknown;
    try {
      await stopTree(tree.root, { timeoutMs: 10_000 });
    } catch (e) {
      error = e;
    } finally {
      stop();
    }
    expect(calls, 'passes').to.be.at.least(3);
    expect(successors.map((s) => s.pid)).to.deep.equal(original);
    expect(error).to.be.instanceOf(TreeStateError);
    expect((error as TreeStateError).code).to.equal('ESRCH');
    expect((error as TreeStateError).details?.resumed, 'processes the rollback resumed').to.deep.equal([]);
    await pause(50);
    for (const s of successors) expect(stateOf(s.pid), `the unrelated process on pid ${s.pid} must stay stopped`).to.equal('T');
  });

  it('a pass through a walk cache reads a new process on a cached pid as itself, not as the one before', async () => {
    await using supervisor = await spawnSupervised('sleep', ['600']);
    const before = await supervisor.run('sleep', ['600'], { out: '/dev/null' });
    const cache = native().createWalkCache();
    try {
      const first = await native().walk({ root: supervisor.pid, cache });
      const old = first.processes.find((p) => p.pid === before.pid)!;
      expect(old, 'the first pass keeps the process').to.exist;
      await pause(30); // a later clock tick
      process.kill(before.pid, 'SIGKILL');
      await before.exited;
      await runOnPid(supervisor, before.pid);

      const second = await native().walk({ root: supervisor.pid, cache });
      const now = second.processes.find((p) => p.pid === before.pid);
      expect(now, 'the new process on the old pid is in the tree').to.exist;
      const fresh = (await snapshot(before.pid)).processes[0]!;
      expect(now!.startTime).to.not.equal(old.startTime);
      expect(now!.startTime).to.equal(fresh.startTime);
      expect(now!.threads.map((t) => t.state)).to.not.include('Z');
    } finally {
      native().releaseWalkCache(cache);
    }
  });

  it("a kill's later passes from the root leave alone an unrelated process that took the root's pid", async () => {
    await using tree = await spawnTree({ depth: 1, fanout: 2, intervalMs: 20 });
    const original = tree.pids();
    let decoy: Unrelated | undefined;
    // After the first kill pass (every process sent SIGKILL), the tree is
    // reaped by its reaper and an unrelated process takes the root's pid
    // before the next pass, which walks from the root again.
    const stop = observePasses({
      afterPass: async (_result, request) => {
        if (decoy || (request.kind !== 'kill' && request.kind !== 'kill-stopped')) return;
        await pause(30); // a later clock tick than the tree's start times
        await waitUntil('the killed tree is reaped', () => original.every((pid) => !existsSync(`/proc/${pid}`)));
        decoy = await takePid(tree.root);
        cleanup.push(decoy);
      },
    });
    let result;
    try {
      result = await killTree(tree.root, { timeoutMs: 10_000 });
    } finally {
      stop();
    }
    expect(decoy?.pid, 'the unrelated process took the root pid').to.equal(tree.root);
    expect(result.state).to.equal('dead');
    await pause(50);
    expect(stateOf(decoy!.pid), 'the unrelated process on the root pid must not be killed').to.be.oneOf(['S', 'R']);
  });
});
