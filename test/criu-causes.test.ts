import { expect } from 'chai';
import { readFileSync } from 'node:fs';
import { dump } from '../src/index.js';
import { criuErrorLines } from '../src/criu/diagnose.js';
import { locateCriu } from '../src/criu/locate.js';
import { nativeExecutable } from '../src/native.js';
import { spawnSupervised, spawnTree } from '../src/testing/index.js';
import { cli, rejection, requireCriu, tempDirs, waitFor, statFields } from './helpers.js';

/** Whether this process has a capability in its effective set (bit numbers from linux/capability.h). */
function hasCapability(bit: number): boolean {
  const line = readFileSync('/proc/self/status', 'utf8').split('\n').find((l) => l.startsWith('CapEff:'))!;
  return ((BigInt(`0x${line.split(/\s+/)[1]}`) >> BigInt(bit)) & 1n) === 1n;
}
const CAP_SYS_RESOURCE = 24;

describe('criu errors that name the cause', () => {
  requireCriu();
  const tempDir = tempDirs();

  it('keeps criu\'s first error line and its last ones, each once, without the debug lines that merely say "error"', () => {
    const log = [
      '(00.001) Error (criu/util.c:1533): rlimit: Can\'t setup RLIMIT_NOFILE for self: Operation not permitted',
      '(00.002) Error (compel/src/lib/infect.c:263): Unseizable non-zombie 7 found, state S, err -1/10',
      '(00.003) Handling VMA with the following smaps entry: 7f00-7f01 r--p 00000000 fe:00 42 /usr/lib/x86_64-linux-gnu/libgpg-error.so.0.34.0',
      '(00.004) Error (compel/src/lib/infect.c:263): Unseizable non-zombie 7 found, state S, err -1/10',
      ...Array.from({ length: 8 }, (_, i) => `(00.01${i})      9: Error (criu/files.c:${i}): failure ${i}`),
      '(00.020) Error (criu/cr-dump.c:2111): Dumping FAILED.',
    ].join('\n');
    expect(criuErrorLines(log)).to.deep.equal([
      '(00.002) Error (compel/src/lib/infect.c:263): Unseizable non-zombie 7 found, state S, err -1/10',
      '(00.014)      9: Error (criu/files.c:4): failure 4',
      '(00.015)      9: Error (criu/files.c:5): failure 5',
      '(00.016)      9: Error (criu/files.c:6): failure 6',
      '(00.017)      9: Error (criu/files.c:7): failure 7',
      '(00.020) Error (criu/cr-dump.c:2111): Dumping FAILED.',
    ]);
    // criu tries a seize six times; a try on a busy host can catch the process running: the same cause, said once.
    const retries = ['S', 'R', 'S', 't'].map((state, i) => `(00.00${i}) Error (compel/src/lib/infect.c:262): Unseizable non-zombie 7 found, state ${state}, err -1/10`);
    expect(criuErrorLines([...retries, '(00.009) Error (criu/cr-dump.c:1975): Dumping FAILED.'].join('\n'))).to.deep.equal([
      retries[0],
      '(00.009) Error (criu/cr-dump.c:1975): Dumping FAILED.',
    ]);
  });

  it('not root: says criu needs root or CAP_CHECKPOINT_RESTORE, not "run setup:criu"', async () => {
    const criu = (await locateCriu()).path;
    await using sup = await spawnSupervised('sleep', ['1000']);
    for (const args of [['check'], ['dump', String(sup.root), '-D', '/tmp/treestate-never-made']]) {
      const run = await cli(args, { uid: 65534, gid: 65534, env: { TREESTATE_CRIU: criu } });
      expect(run.code, args[0]).to.equal(1);
      expect(run.stderr).to.match(/^treestate: criu needs root, or CAP_CHECKPOINT_RESTORE and CAP_SYS_PTRACE \(CAP_SYS_ADMIN before Linux 5\.9\), and this process \(uid 65534\) has neither \(criu check: "CRIU needs to have the CAP_SYS_ADMIN or the CAP_CHECKPOINT_RESTORE capability/);
      expect(run.stderr).to.not.include('setup:criu');
    }
  });

  it('a traced process: names it and its tracer, keeping criu\'s own line', async () => {
    await using tree = await spawnTree({ depth: 1, fanout: 1 });
    const child = tree.pids()[1]!;
    await using tracer = await spawnSupervised(nativeExecutable('treestate-fixture'), ['--swallow-stops', String(child)]);
    await waitFor(() => readFileSync(`/proc/${child}/status`, 'utf8').includes(`TracerPid:\t${tracer.root}`), 5000, 'the tracer attached');
    const e = await rejection(dump(tree.root, { imagesDir: tempDir(), finalState: 'running' }));
    expect(e.code).to.equal('ECRIU');
    expect(e.message).to.match(new RegExp(`^criu dump (exited with 1:|failed:) pid ${child} is traced by ${tracer.root} \\("treestate-fixtu"\\), and criu must ptrace every process it dumps`));
    expect(e.message.split('\n').filter((l) => l.includes(`Unseizable non-zombie ${child} found`))).to.have.lengthOf(1);
    expect(e.details).to.have.property('cause').that.includes('detach the tracer');
    expect(statFields(child)[0]).to.not.equal('t');
  });

  it('a process of another user when root lacks CAP_SYS_RESOURCE: says so, naming the process and its uid', async () => {
    await using tree = await spawnTree({ depth: 1, fanout: 1, uidDepth: 1, uid: 65534 });
    const child = tree.pids()[1]!;
    const work = dump(tree.root, { imagesDir: tempDir(), finalState: 'running' });
    if (hasCapability(CAP_SYS_RESOURCE)) {
      // Where root has it, criu reads the limits and the dump succeeds.
      expect((await work).state).to.equal('running');
      return;
    }
    const e = await rejection(work);
    expect(e.code).to.equal('ECRIU');
    expect(e.message).to.match(new RegExp(`^criu dump (exited with 1:|failed:) criu cannot read the resource limits of pid ${child} \\(uid 65534\\), a process of another user: that needs CAP_SYS_RESOURCE`));
    expect(e.message).to.include("Can't get rlimit 0: Operation not permitted");
    await expect(tree.root).to.be.a.runningTree;
  });
});
