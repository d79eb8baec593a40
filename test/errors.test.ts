import { expect } from 'chai';
import { spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { readdirSync } from 'node:fs';
import { TreeStateError, continueTree, dump, getTreeState, killTree, preDump, restore, snapshot, stopTree, waitForState } from '../src/index.js';
import { native } from '../src/native.js';
import { assertTreeState, spawnTree } from '../src/testing/index.js';
import { cli, cliPath, rejection, tempDirs } from './helpers.js';

/** A pid that no process has: the highest free one below pid_max. */
async function freePid(): Promise<number> {
  const max = Number(readFileSync('/proc/sys/kernel/pid_max', 'utf8'));
  for (let pid = max - 1; pid > 1; pid--) if (!existsSync(`/proc/${pid}`)) return pid;
  throw new Error('no free pid');
}

describe('bad input and refusals', () => {
  const tempDir = tempDirs();
  for (const bad of [0, -1, 1.5, Number.NaN, 2 ** 40, '12abc', '', null, undefined]) {
    it(`rejects ${JSON.stringify(bad) ?? String(bad)} as a pid with EINVAL_PID`, async () => {
      const e = await rejection(stopTree(bad as number));
      expect(e.code).to.equal('EINVAL_PID');
    });
  }

  describe('numbers in options: NaN, negative, non-finite or out of range is EINVAL, before anything runs', () => {
    const bad = [Number.NaN, -5, Number.POSITIVE_INFINITY, Number.NEGATIVE_INFINITY, 2 ** 31, '100'];

    it('timeoutMs, maxPasses and intervalMs of the transitions and waitForState', async () => {
      await using tree = await spawnTree({ depth: 1, fanout: 1 });
      for (const value of bad) {
        const cases: Array<[string, Promise<unknown>]> = [
          ['timeoutMs', stopTree(tree.root, { timeoutMs: value as number })],
          ['maxPasses', stopTree(tree.root, { maxPasses: value as number })],
          ['timeoutMs', continueTree(tree.root, { timeoutMs: value as number })],
          ['timeoutMs', killTree(tree.root, { timeoutMs: value as number })],
          ['maxPasses', killTree(tree.root, { maxPasses: value as number })],
          ['timeoutMs', waitForState(tree.root, 'stopped', { timeoutMs: value as number })],
          ['intervalMs', waitForState(tree.root, 'stopped', { intervalMs: value as number })],
        ];
        for (const [name, work] of cases) {
          const e = await rejection(work);
          expect(e.code, `${name}: ${String(value)}`).to.equal('EINVAL');
          expect(e.message).to.match(new RegExp(`^${name} must be a (whole )?number from \\d+ to \\d+, not `));
        }
      }
      expect((await rejection(stopTree(tree.root, { maxPasses: 1.5 }))).code).to.equal('EINVAL');
      await expect(tree.root).to.be.a.runningTree; // nothing was signalled
      await tree.waitProgress();
    });

    it('timeoutMs and verifyTimeoutMs of the CRIU verbs, before criu runs', async () => {
      await using tree = await spawnTree({ depth: 0 });
      const imagesDir = tempDir();
      for (const value of bad) {
        for (const name of ['timeoutMs', 'verifyTimeoutMs']) {
          expect((await rejection(dump(tree.root, { imagesDir, [name]: value }))).code).to.equal('EINVAL');
          expect((await rejection(preDump(tree.root, { imagesDir, [name]: value }))).code).to.equal('EINVAL');
          expect((await rejection(restore({ imagesDir, [name]: value }))).code).to.equal('EINVAL');
        }
      }
      expect(readdirSync(imagesDir)).to.deep.equal([]);
      await expect(tree.root).to.be.a.runningTree;
    });

    it('the testing helpers: spawnTree, waitProgress, assertNoProgress, assertTreeState', async () => {
      for (const name of ['depth', 'fanout', 'threads', 'intervalMs', 'readyTimeoutMs', 'memoryMb']) {
        expect((await rejection(spawnTree({ [name]: Number.NaN }))).code, name).to.equal('EINVAL');
      }
      expect((await rejection(spawnTree({ threads: 0 }))).code).to.equal('EINVAL');
      await using tree = await spawnTree({ depth: 0 });
      expect((await rejection(tree.waitProgress({ timeoutMs: Number.NaN }))).code).to.equal('EINVAL');
      expect((await rejection(tree.assertNoProgress({ forMs: -1 }))).code).to.equal('EINVAL');
      expect((await rejection(assertTreeState(tree.root, 'running', { timeoutMs: Number.POSITIVE_INFINITY }))).code).to.equal('EINVAL');
    });

    it('CLI: --timeout abc, -5, NaN, 1.5 are usage errors (exit 2)', async () => {
      for (const value of ['abc', '-5', 'NaN', '']) {
        for (const args of [['stop', '2', '--timeout', value], ['wait', '2', '--state', 'dead', `--timeout=${value}`], ['dump', '2', '-D', '/nonexistent', '--timeout', value]]) {
          const run = await cli(args);
          expect(run.code, `${args.join(' ')}`).to.equal(2);
          expect(run.stderr).to.match(/^treestate: --timeout (takes a whole number of milliseconds|needs a value)/);
        }
      }
    });
  });

  it('refuses pid 1', async () => {
    for (const op of [stopTree, continueTree, killTree, getTreeState, snapshot]) {
      const e = await rejection(op(1));
      expect(e.code).to.equal('EREFUSED');
      expect(e.message).to.include('pid 1');
    }
  });

  it('refuses a kernel thread (kthreadd, pid 2)', async () => {
    const e = await rejection(stopTree(2));
    expect(e.code).to.equal('EREFUSED');
    expect(e.message).to.include('kernel thread');
    expect((await rejection(getTreeState(2))).code).to.equal('EREFUSED');
  });

  it('says ESRCH for a process that does not exist, and waiting for dead is already done', async () => {
    const pid = await freePid();
    const e = await rejection(stopTree(pid));
    expect(e.code).to.equal('ESRCH');
    expect(e.message).to.equal(`no such process: ${pid}`);
    expect(e.pid).to.equal(pid);
    expect((await waitForState(pid, 'dead')).state).to.equal('dead');
  });

  it('refuses a tree that contains the calling process or its ancestors', async () => {
    for (const pid of [process.pid, process.ppid]) {
      for (const op of [stopTree, continueTree, killTree]) {
        const e = await rejection(op(pid));
        expect(e.code).to.equal('EREFUSED');
      }
    }
  });

  it('the CLI refuses to stop its own parent shell, and exits 1', async () => {
    // sh is the CLI's parent: stopping it would stop the CLI halfway. If the
    // refusal failed, sh and the CLI would hang stopped; this test made both.
    const child = spawn('sh', ['-c', `"${process.execPath}" "${cliPath}" stop $$; echo "exit=$?"`], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (out += d));
    const code = await new Promise((resolve) => child.on('exit', resolve));
    expect(code).to.equal(0);
    expect(out).to.match(/treestate: refusing pid \d+: it is an ancestor of treestate/);
    expect(out).to.include('exit=1');
  });

  it('shapes native errors like Node system errors: code, errno, syscall, pid', async () => {
    const pid = await freePid();
    try {
      await native().walk({ root: pid });
      expect.fail('walk of a missing pid resolved');
    } catch (e) {
      expect(e).to.include({ code: 'ESRCH', errno: -3, syscall: 'open', pid });
      expect((e as Error).message).to.include(`cannot read process ${pid}`);
    }
  });

  it('turns a malformed native call into a TypeError, not a crash', () => {
    expect(() => native().walk({} as never)).to.throw(TypeError, /walk needs \{ root: number \}/);
    expect(() => native().walk(undefined as never)).to.throw(TypeError, /walk needs/);
  });

  it('CLI: bad pids and usage errors exit 2, refusals and missing processes exit 1, never with a stack trace', async () => {
    const pid = await freePid();
    const cases: Array<[string[], number, RegExp]> = [
      [['stop', 'abc'], 2, /not a process id: "abc"/],
      [['stop', '-5'], 2, /not a process id/],
      [['stop'], 2, /stop needs a PID/],
      [['stop', '1', '2'], 2, /takes one PID/],
      [['stop', '99999999999'], 2, /not a process id/],
      [['stop', '0'], 2, /not a process id: 0/],
      [['frobnicate'], 2, /unknown command "frobnicate"/],
      [['stop', '5', '--bogus'], 2, /unknown option "--bogus"/],
      [['stop', '5', '--timeout', 'soon'], 2, /--timeout takes a whole number/],
      [['wait', '5'], 2, /wait needs --state/],
      [['wait', '5', '--state', 'asleep'], 2, /--state must be one of/],
      [['stop', '1'], 1, /refusing pid 1/],
      [['kill', '2'], 1, /kernel thread/],
      [['status', String(pid)], 1, new RegExp(`no such process: ${pid}`)],
    ];
    for (const [args, code, message] of cases) {
      const run = await cli(args);
      expect(run.code, args.join(' ')).to.equal(code);
      expect(run.stderr, args.join(' ')).to.match(/^treestate: /).and.match(message);
      expect(run.stderr, args.join(' ')).not.to.match(/\n\s+at /);
    }
  });

  it('a stop that hits EPERM names the pids and leaves the tree as it was', async () => {
    await using tree = await spawnTree({ depth: 1, fanout: 2 });
    const run = await cli(['stop', String(tree.root)], { uid: 65534, gid: 65534 });
    expect(run.code).to.equal(1);
    const pids = tree.pids().join(', ');
    expect(run.stderr.trim()).to.equal(`treestate: cannot stop pids ${pids} (EPERM: operation not permitted); nothing had been stopped`);
    await expect(tree.root).to.be.a.runningTree;
    await tree.waitProgress();
  });
});

describe('error codes', () => {
  it('the README\'s table names exactly the codes of the ErrorCode union, and every code thrown is one of them (tsc)', () => {
    const source = readFileSync(new URL('../src/errors.ts', import.meta.url), 'utf8');
    const union = new Set([...source.matchAll(/^\s*\| '([A-Z_]+)'/gm)].map((m) => m[1]));
    const readme = readFileSync(new URL('../README.md', import.meta.url), 'utf8');
    const table = readme.slice(readme.indexOf('| code | meaning |'));
    const documented = new Set([...table.slice(0, table.indexOf('\n\n')).matchAll(/`(E[A-Z_]+)`/g)].map((m) => m[1]));
    expect([...union].sort()).to.deep.equal([...documented].sort());
    expect(union.size).to.be.greaterThan(20);
  });
});
