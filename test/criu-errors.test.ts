import { expect } from 'chai';
import { chmodSync, existsSync, mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { TreeStateError, dump, getTreeState, hasDirtyTracking, locateCriu, preDump, restore } from '../src/index.js';
import { childProcessRunner, type CommandRunner } from '../src/criu/runner.js';
import { spawnSupervised, spawnTree } from '../src/testing/index.js';
import { minCriuVersion } from '../src/criu/locate.js';
import { cli, requireCriu, rootOnlyDirs, tempDirs, rejection } from './helpers.js';

/** A stand-in criu: a script that answers --version as told, fails as an RPC worker (`swrk`, where `criu check` is asked) with checkExit, and records any other call. */
function fakeCriu(dir: string, version: string, checkExit: number): string {
  const path = join(dir, 'criu');
  writeFileSync(
    path,
    `#!/bin/sh\ncase "$1" in\n  --version) echo "Version: ${version}" ;;\n  swrk) echo "Error (criu/cr-check.c:1): something is missing" >&2; exit ${checkExit} ;;\n  *) echo "$@" >> "${dir}/called"; exit 1 ;;\nesac\n`,
  );
  chmodSync(path, 0o755);
  return path;
}

describe('criu errors', () => {
  requireCriu();
  const tempDir = tempDirs();
  const rootOnlyDir = rootOnlyDirs(); // where root may run a (fake) criu

  it('a missing criu is ENOCRIU with a way to get one', async () => {
    await using tree = await spawnTree({ depth: 0 });
    const e = await rejection(dump(tree.root, { imagesDir: tempDir(), criu: '/nonexistent/criu' }));
    expect(e.code).to.equal('ENOCRIU');
    expect(e.message).to.match(/criu at \/nonexistent\/criu does not run .*npm run setup:criu/);
  });

  it('a criu older than the kernel needs is refused before it runs anything', async () => {
    await using tree = await spawnTree({ depth: 0 });
    const dir = rootOnlyDir();
    const e = await rejection(dump(tree.root, { imagesDir: tempDir(), criu: fakeCriu(dir, '3.17.1', 0) }));
    expect(e.code).to.equal('ENOCRIU');
    expect(e.message).to.match(/is version 3\.17\.1; this kernel \(\S+\) needs 4\.[12] or newer/);
    // CRIU 4.1 cannot dump sockets on kernels >= 6.16 although `criu check` passes.
    const e41 = await rejection(dump(tree.root, { imagesDir: tempDir(), criu: fakeCriu(dir, '4.1.1', 0) }));
    // Refused for its version where the kernel needs 4.2; elsewhere the stand-in passes that but cannot answer `criu check` over RPC.
    expect(e41.message).to.match(minCriuVersion()[1] === 2 ? /is version 4\.1\.1/ : /fails `criu check`/);
    expect(e41.code).to.equal('ENOCRIU');
    expect(existsSync(join(dir, 'called'))).to.equal(false);
  });

  it('a criu that fails `criu check` is refused, quoting why', async () => {
    await using tree = await spawnTree({ depth: 0 });
    const dir = rootOnlyDir();
    const e = await rejection(dump(tree.root, { imagesDir: tempDir(), criu: fakeCriu(dir, '4.2.1', 1) }));
    expect(e.code).to.equal('ENOCRIU');
    expect(e.message).to.include('fails `criu check`: Error (criu/cr-check.c:1): something is missing');
  });

  it('TREESTATE_CRIU is honoured before the project-local criu', async () => {
    const dir = rootOnlyDir();
    const fake = fakeCriu(dir, '3.0', 0);
    const run = await cli(['check'], { env: { TREESTATE_CRIU: fake } });
    expect(run.code).to.equal(1);
    expect(run.stderr).to.include(`criu at ${fake} is version 3.0`);
  });

  it('`treestate check` prints the criu path, version and check verdict', async () => {
    const info = await locateCriu();
    const run = await cli(['check', '--json']);
    expect(run.code).to.equal(0);
    const value = JSON.parse(run.stdout);
    expect(value).to.include({ path: info.path, version: info.version });
    expect(value.check).to.match(/Looks good/);
    expect(value.dirtyTracking).to.be.a('boolean');
  });

  it('a failing dump is ECRIU with the log path and its error lines, and the tree keeps running', async () => {
    // Not a session leader, in the reaper's session: criu refuses it without --shell-job.
    await using sup = await spawnSupervised('sleep', ['1000'], { setsid: 'reaper' });
    const imagesDir = tempDir();
    const e = await rejection(dump(sup.root, { imagesDir }));
    expect(e.code).to.equal('ECRIU');
    // criu's own first error is the message (not the RLIMIT_NOFILE one it survives), never an errno 0.
    expect(e.message).to.match(/^criu dump failed: Error \(criu\/pstree\.c:\d+\): The root process \d+ is not a session leader.*; the tree of \d+ is running; log: /);
    expect(e.message).to.not.match(/errno 0|RLIMIT_NOFILE/);
    expect(e.message).to.include(join(imagesDir, 'dump.log'));
    expect(e.message).to.match(/shell-job|session/i);
    expect(e.details).to.have.property('logFile', join(imagesDir, 'dump.log'));
    expect((await getTreeState(sup.root)).state).to.equal('running');
  });

  it('a dump that runs past its timeout has criu killed and reports the tree\'s state', async () => {
    await using tree = await spawnTree({ depth: 1, fanout: 2, memoryMb: 256 });
    const e = await rejection(dump(tree.root, { imagesDir: tempDir(), timeoutMs: 1 }));
    expect(e.code).to.equal('ETIMEDOUT');
    // criu forks short-lived helpers while it probes the kernel at start: the
    // kill may catch one, and then says so.
    // criu is first interrupted with SIGALRM (see criu-timeout.test.ts).
    expect(e.message).to.match(
      new RegExp(
        `^criu dump did not finish within 1 ms and (was killed( together with the \\d+ process(es)? it had started \\([^)]*\\))?|was interrupted \\(SIGALRM, criu's own timeout signal\\) and gave up); the tree of ${tree.root} is (running|stopped|mixed)`,
      ),
    );
  });

  it('a criu that exits 0 as its timeout fires has finished: no timeout, the tree is verified', async () => {
    await using tree = await spawnTree({ depth: 1, fanout: 1 });
    // The timer and criu's exit cross: criu (here `true`, which leaves the
    // tree as it is) has exited 0, but its exit is reported only after the
    // timeout fired, and the kill finds nothing left to kill.
    const late: CommandRunner = {
      async run(_file, _args, options) {
        const running = await childProcessRunner.run('true', [], options);
        return { pid: running.pid, exited: running.exited.then((exit) => new Promise((r) => setTimeout(() => r(exit), 100))) };
      },
    };
    // The command line (extraArgs): over RPC the verdict is criu's answer, which stops the timer.
    const result = await dump(tree.root, { imagesDir: tempDir(), finalState: 'running', timeoutMs: 20, runner: late, extraArgs: ['--file-locks'] });
    expect(result.state).to.equal('running');
    await expect(tree.root).to.be.a.runningTree;
  });

  it('refuses an images directory that already holds images, before criu runs', async () => {
    await using tree = await spawnTree({ depth: 0 });
    const imagesDir = tempDir();
    writeFileSync(join(imagesDir, 'inventory.img'), '');
    const e = await rejection(dump(tree.root, { imagesDir }));
    expect(e.code).to.equal('EIMAGES');
    expect(e.message).to.include('already holds 1 images');
    expect(readdirSync(imagesDir)).to.deep.equal(['inventory.img']);
  });

  it('refuses an unwritable images directory, before criu runs', async () => {
    await using tree = await spawnTree({ depth: 0 });
    const imagesDir = tempDir();
    // Root writes anywhere a mode allows: only a read-only mount stops it.
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'ro,size=1m,mode=0700', 'treestate-ro', imagesDir]);
    try {
      const e = await rejection(dump(tree.root, { imagesDir }));
      expect(e.code).to.equal('EIMAGES');
      expect(e.message).to.match(/is not writable: .*read-only file system/i);
    } finally {
      execFileSync('umount', [imagesDir]);
    }
    await expect(tree.root).to.be.a.runningTree;
  });

  it('creates a missing images directory', async () => {
    await using tree = await spawnTree({ depth: 0 });
    const imagesDir = join(tempDir(), 'a', 'b');
    await dump(tree.root, { imagesDir, finalState: 'running' });
    expect(existsSync(join(imagesDir, 'inventory.img'))).to.equal(true);
  });

  it('refuses to restore from a missing directory or one without images', async () => {
    const empty = tempDir();
    expect((await rejection(restore({ imagesDir: join(empty, 'nope') }))).message).to.match(/does not exist$/);
    const e = await rejection(restore({ imagesDir: empty }));
    expect(e.code).to.equal('EIMAGES');
    expect(e.message).to.include('holds no CRIU images (no inventory.img)');
    expect(readdirSync(empty)).to.deep.equal([]);
  });

  it('says ESRCH for a process that does not exist, before criu runs', async () => {
    const imagesDir = tempDir();
    await using sup = await spawnSupervised('true');
    await sup.exited(sup.root);
    const e = await rejection(dump(sup.root, { imagesDir }));
    expect(e.code).to.equal('ESRCH');
    expect(readdirSync(imagesDir)).to.deep.equal([]);
  });

  it('refuses pre-dump before criu runs where the kernel does not track dirty memory', async function () {
    const tracking = await hasDirtyTracking(await locateCriu());
    if (tracking) this.skip(); // the success path below runs instead
    await using tree = await spawnTree({ depth: 0 });
    const imagesDir = tempDir();
    const e = await rejection(preDump(tree.root, { imagesDir }));
    expect(e.code).to.equal('ENODIRTYTRACK');
    expect(e.message).to.include('Dirty tracking is OFF');
    expect(readdirSync(imagesDir)).to.deep.equal([]);
    const run = await cli(['predump', String(tree.root), '-D', imagesDir]);
    expect(run.code).to.equal(1);
    expect(run.stderr).to.match(/^treestate: pre-dump needs the kernel to track dirty memory/);
  });

  it('pre-dump then dump --prev, then restore (needs dirty-memory tracking)', async function () {
    if (!(await hasDirtyTracking(await locateCriu()))) {
      console.warn('    (skipped: this kernel has no dirty-memory tracking, `criu check --feature mem_dirty_track` says "Dirty tracking is OFF")');
      this.skip();
    }
    await using tree = await spawnTree({ depth: 1, fanout: 2, threads: 2 });
    const pre = tempDir();
    const final = join(tempDir(), 'final');
    mkdirSync(final, { mode: 0o700 });
    const p = await preDump(tree.root, { imagesDir: pre });
    expect(p.state).to.equal('running');
    await tree.waitProgress();
    const d = await dump(tree.root, { imagesDir: final, prevImagesDir: pre });
    expect(d.argv).to.include('--prev-images-dir');
    const r = await restore({ imagesDir: final, runner: tree.supervisor });
    expect(r.state).to.equal('running');
    await tree.waitProgress();
  });
});
