import { expect } from 'chai';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { killTree, run } from '../src/index.js';
import { cli, cliPath, hasExited, rejection, tempDirs, waitFor } from './helpers.js';
import { leaveNoCgroups, procsOf, runCgroupsDir } from './cgroup-support.js';

describe('cgroup: treestate run', () => {
  leaveNoCgroups();
  const tempDir = tempDirs();

  it('runs the program in a new cgroup of its own, which is removed when it exits', async () => {
    const r = await cli(['run', '--', 'cat', '/proc/self/cgroup']);
    expect(r.code, r.stderr).to.equal(0);
    const line = r.stdout.split('\n').find((l) => l.startsWith('0::'))!;
    expect(line).to.match(/^0::.*\/treestate\/run-\d+-\d+-\w+$/);
    const cgroup = join(runCgroupsDir(), line.split('/').pop()!);
    expect(existsSync(cgroup)).to.equal(false);
  });

  it('relays the exit code of a foreground program', async () => {
    expect((await cli(['run', '--', 'sh', '-c', 'exit 7'])).code).to.equal(7);
    expect((await cli(['run', '--', 'true'])).code).to.equal(0);
  });

  it('relays death by a signal as 128 + the signal', async () => {
    expect((await cli(['run', '--', 'sh', '-c', 'kill -KILL $$'])).code).to.equal(137);
    const tree = await run('sh', ['-c', 'kill -TERM $$'], { stdio: 'ignore' });
    expect(await tree.exited).to.deep.equal({ code: null, signal: 15, status: 143 });
  });

  for (const signal of ['SIGTERM', 'SIGINT'] as const) {
    it(`forwards ${signal} sent to treestate to the program`, async () => {
      const up = join(tempDir(), 'up');
      // The trap's exit code proves the program got the signal (treestate itself dying would not give 42).
      const child = spawn(process.execPath, [cliPath, 'run', '--', 'sh', '-c', `trap 'exit 42' ${signal.slice(3)}; touch ${up}; while :; do sleep 0.02; done`], { stdio: 'ignore' });
      const exit = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
      await waitFor(() => existsSync(up), 10_000, 'the program to start');
      child.kill(signal);
      expect(await exit).to.equal(42);
    });
  }

  it('kills what the root leaves behind when it exits, double-forked processes included', async () => {
    const pidFile = join(tempDir(), 'orphan');
    const tree = await run('sh', ['-c', `sh -c 'sleep 1000 & echo $! > ${pidFile}'; exit 3`], { stdio: 'ignore' });
    expect((await tree.exited).status).to.equal(3);
    const orphan = Number(readFileSync(pidFile, 'utf8'));
    expect(orphan).to.be.greaterThan(0);
    expect(hasExited(orphan), `orphan ${orphan}`).to.equal(true);
    expect(existsSync(tree.cgroup)).to.equal(false);
  });

  it('--detach prints the root and its cgroup, and the cgroup goes with the tree', async () => {
    const r = await cli(['run', '--detach', '--json', '--name', `detach-${process.pid}`, '--', 'sleep', '1000']);
    expect(r.code, r.stderr).to.equal(0);
    const { root, cgroup } = JSON.parse(r.stdout) as { root: number; cgroup: string };
    expect(cgroup).to.equal(join(runCgroupsDir(), `detach-${process.pid}`));
    expect(procsOf(cgroup)).to.deep.equal([root]);
    // The root's parent is the subreaper that keeps the tree, not the CLI that has exited.
    const parent = Number(readFileSync(`/proc/${root}/stat`, 'utf8').split(') ')[1]!.split(' ')[1]);
    expect(readFileSync(`/proc/${parent}/comm`, 'utf8').trim()).to.equal('treestate-run');
    await killTree(root);
    await waitFor(() => !existsSync(cgroup), 5000, 'the cgroup to be removed');
    const text = await cli(['run', '--detach', '--', 'sleep', '1000']);
    const [pid, path] = text.stdout.trim().split(' ');
    expect(path).to.match(/\/treestate\/run-/);
    await killTree(Number(pid));
    await waitFor(() => !existsSync(path!), 5000, 'the cgroup to be removed');
  });

  it('refuses a name in use, a bad name and a missing program, leaving no cgroup', async () => {
    const name = `taken-${process.pid}`;
    const first = await run('sleep', ['1000'], { name, stdio: 'ignore' });
    try {
      const e = await rejection(run('true', [], { name }));
      expect(e.code).to.equal('ECGROUP');
      expect(e.message).to.include('already exists');
    } finally {
      await killTree(first.root);
      await first.exited;
    }
    expect((await rejection(run('true', [], { name: '../escape' }))).code).to.equal('EINVAL');
    const missing = await rejection(run('/nonexistent/program', [], { stdio: 'ignore' }));
    expect(missing.code).to.equal('ESPAWN');
    expect(missing.message).to.include('ENOENT');
    const r = await cli(['run', '--', '/nonexistent/program']);
    expect(r.code).to.equal(1);
    expect(r.stderr).to.match(/^treestate: cannot start \/nonexistent\/program \(ENOENT\)/);
  });

  it('says so clearly where the hierarchy is not writable, or there is none', async () => {
    const r = await cli(['run', '--', 'true'], { uid: 65534, gid: 65534 });
    expect(r.code).to.equal(1);
    expect(r.stderr).to.match(/^treestate: cannot create .*not writable/);
    // A mount namespace of its own without the cgroup2 mount.
    const mount = runCgroupsDir().replace(/\/treestate$/, '');
    const none = spawnSync('unshare', ['-m', 'sh', '-c', `umount -l ${mount} && exec "$0" "$@"`, process.execPath, cliPath, 'run', '--', 'true'], { encoding: 'utf8' });
    expect(none.status, none.stderr).to.equal(1);
    expect(none.stderr).to.match(/^treestate: no cgroup v2 hierarchy is mounted/);
  });
});
