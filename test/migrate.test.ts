import { expect } from 'chai';
import { execFile, execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync, readlinkSync, rmSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { getTreeState, killTree, migrate, snapshot, type MigrateOptions, type MigrateResult } from '../src/index.js';
import { packageRoot } from '../src/native.js';
import { spawnTree } from '../src/testing/index.js';
import { cliPath, rejection, requireCriu, waitFor } from './helpers.js';

interface Hosts {
  dir: string;
  B_NS: string;
  A_ADDR: string;
  B_ADDR: string;
  KEY: string;
}

const sshOptions = ['StrictHostKeyChecking=no', 'UserKnownHostsFile=/dev/null', 'LogLevel=ERROR'];
const remoteTreestate = `${process.execPath} ${cliPath}`;
const script = join(packageRoot(), 'scripts', 'testhosts.sh');

function hostsUp(): Hosts {
  const dir = join(mkdtempSync(join(tmpdir(), 'treestate-hosts-')), 'hosts');
  const out = execFileSync('bash', [script, 'up', dir], { encoding: 'utf8' });
  const vars = Object.fromEntries(out.trim().split('\n').map((l) => l.split('=') as [string, string]));
  return { dir, ...vars } as Hosts;
}

function hostsDown(h: Hosts): void {
  execFileSync('bash', [script, 'down', h.dir]);
  rmSync(join(h.dir, '..'), { recursive: true, force: true });
}

/** The init (sshd) of host A's or B's pid namespace, as this host sees it. */
function hostInit(h: Hosts, which: 'a' | 'b'): number {
  const holder = Number(readFileSync(join(h.dir, which, 'holder.pid'), 'utf8'));
  return Number(readFileSync(`/proc/${holder}/task/${holder}/children`, 'utf8').trim().split(' ')[0]);
}

/** The pids of a process, from this host's pid namespace inward (NSpid). */
function nsPids(pid: number): number[] {
  return /^NSpid:\s*(.*)$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1]!.trim().split(/\s+/).map(Number);
}

/** This host's pid of the process whose pid on host `which` (whose own pid namespace is one level in) is `pid`. */
async function onHost(h: Hosts, which: 'a' | 'b', pid: number): Promise<number> {
  const all = await snapshot(hostInit(h, which));
  const found = all.processes.find((p) => p.pid !== all.root && nsPids(p.pid)[1] === pid);
  if (!found) throw new Error(`no process ${pid} on host ${which}`);
  return found.pid;
}

/** Fixture processes left on host `which`. */
async function fixturesOn(h: Hosts, which: 'a' | 'b'): Promise<number[]> {
  return (await snapshot(hostInit(h, which))).processes.filter((p) => p.comm.startsWith('treestate-fixtu')).map((p) => p.pid);
}

/** The processes of this project's criu (any namespace) whose command line `which` picks. */
function ourCriu(which: (argv: string[], pid: number) => boolean): number[] {
  return readdirSync('/proc')
    .filter((d) => /^\d+$/.test(d))
    .filter((p) => {
      try {
        const argv = readFileSync(`/proc/${p}/cmdline`, 'utf8').split('\0');
        return argv[0]!.startsWith(packageRoot()) && which(argv, Number(p));
      } catch {
        return false; // gone
      }
    })
    .map(Number);
}

/** criu dumps serving pages (--lazy-pages) that this project's criu runs here. */
function lazyServers(): number[] {
  return ourCriu((argv) => argv.includes('dump') && argv.includes('--lazy-pages'));
}

/** migrate's options to reach host B from here. */
function toB(h: Hosts): Pick<MigrateOptions, 'to' | 'identity' | 'sshOptions' | 'remoteTreestate'> {
  return { to: `ssh://root@${h.B_ADDR}`, identity: h.KEY, sshOptions, remoteTreestate };
}

/** Kills a tree restored on host B (`pid` as this host sees it) and waits until B holds no fixture. */
async function killOnB(h: Hosts, pid: number): Promise<void> {
  await killTree(pid);
  await waitFor(async () => (await fixturesOn(h, 'b')).length === 0, 10_000, 'the tree on B to be gone');
}

function leftImages(): string[] {
  return readdirSync(tmpdir()).filter((f) => f.startsWith('treestate-receive-') || f.startsWith('treestate-migrate-'));
}

/** A word for the remote shell that ssh hands the command to. */
function shellWord(word: string): string {
  return `'${word.replace(/'/g, `'\\''`)}'`;
}

/** Runs treestate on host B, over ssh, as a user of that host would. */
function onB(h: Hosts, args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const ssh = ['-T', '-i', h.KEY, ...sshOptions.flatMap((o) => ['-o', o]), `root@${h.B_ADDR}`, [process.execPath, cliPath, ...args].map(shellWord).join(' ')];
  return new Promise((resolve) => execFile('ssh', ssh, { timeout: 120_000 }, (e, stdout, stderr) => resolve({ code: e ? Number(e.code ?? 1) : 0, stdout, stderr })));
}

function netnsOf(pid: number): string {
  return readlinkSync(`/proc/${pid}/ns/net`);
}

function netnsInode(name: string): string {
  return `net:[${statSync(`/run/netns/${name}`).ino}]`;
}

describe('migrate: a running tree to another host and back', function () {
  requireCriu();
  this.timeout(180_000);
  let hosts: Hosts;
  // A lazy dump's page server needs a 4 MB pipe (see diagnose.ts): where
  // root lacks CAP_SYS_RESOURCE, as in this VM, fs.pipe-max-size must allow
  // it. Raised for these tests, put back after them.
  const pipeMaxSize = '/proc/sys/fs/pipe-max-size';
  let pipeMaxBefore: string | undefined;

  before(function () {
    for (const tool of ['ssh', 'sshd', 'ip', 'unshare', 'nsenter']) {
      try {
        execFileSync('bash', ['-c', `command -v ${tool} || test -x /usr/sbin/${tool}`], { stdio: 'ignore' });
      } catch {
        if (process.env.CI) throw new Error(`CI needs ${tool} (.ci/run installs openssh-server and openssh-client)`);
        this.skip();
      }
    }
    hosts = hostsUp();
    pipeMaxBefore = readFileSync(pipeMaxSize, 'utf8').trim();
    if (Number(pipeMaxBefore) < 4 << 20) writeFileSync(pipeMaxSize, String(4 << 20));
  });

  after(() => {
    if (pipeMaxBefore !== undefined) writeFileSync(pipeMaxSize, pipeMaxBefore);
    if (hosts) hostsDown(hosts);
  });

  // Whatever a test left on the two hosts is killed (every process there but
  // their sshd is a test's), then the test fails for it.
  afterEach(async () => {
    const left = [...(await fixturesOn(hosts, 'a')), ...(await fixturesOn(hosts, 'b'))];
    for (const pid of left) process.kill(pid, 'SIGKILL');
    await waitFor(async () => (await fixturesOn(hosts, 'a')).length + (await fixturesOn(hosts, 'b')).length === 0, 5000, 'the hosts to be empty');
    expect(left, 'processes left on the hosts').to.deep.equal([]);
    expect(leftImages(), 'images left behind').to.deep.equal([]);
  });

  it('A → B → A: the heartbeats go on, the tree lives in B\'s network namespace, nothing is left behind', async () => {
    await using tree = await spawnTree({ depth: 1, fanout: 2, threads: 2, forkFromThreads: true });
    const to = `ssh://root@${hosts.B_ADDR}`;
    const there = await migrate(tree.root, { to, identity: hosts.KEY, sshOptions, remoteTreestate });
    expect(there).to.include({ to, source: tree.root, root: tree.root });
    expect(there.state).to.deep.equal({ source: 'dead', destination: 'running' });
    expect(there.pages).to.be.greaterThan(0);
    expect(Object.keys(there.phases)).to.include.members(['connect', 'dump', 'send', 'restore', 'kill source', 'commit']);
    await waitFor(() => !existsSync(`/proc/${tree.root}`), 5000, 'the source to be gone');
    const hostPid = await onHost(hosts, 'b', there.root);
    expect(netnsOf(hostPid)).to.equal(netnsInode(hosts.B_NS));
    expect((await getTreeState(hostPid)).state).to.equal('running');
    await tree.waitProgress();

    // And back, run on B as a user there would.
    const back = await onB(hosts, ['migrate', String(there.root), '--to', `ssh://root@${hosts.A_ADDR}`, '-i', hosts.KEY, ...sshOptions.flatMap((o) => ['-o', o]), '--remote-treestate', remoteTreestate, '--json']);
    expect(back.code, back.stderr).to.equal(0);
    const home = JSON.parse(back.stdout) as MigrateResult;
    expect(home.root).to.equal(tree.root);
    expect(await fixturesOn(hosts, 'b')).to.deep.equal([]);
    const homePid = await onHost(hosts, 'a', home.root);
    expect(netnsOf(homePid)).to.equal(netnsOf(process.pid));
    await tree.waitProgress();
    await killTree(homePid);
    await waitFor(async () => (await fixturesOn(hosts, 'a')).length === 0, 5000, 'the tree on A to be gone');
  });

  it('--lazy: the tree runs on B before its pages are all there, the source serves them and then dies, nothing is left on A', async () => {
    await using tree = await spawnTree({ depth: 1, fanout: 1, memoryMb: 64 });
    const phases: string[] = [];
    let servedDuringRestore = 0;
    let boundTo: string[] = [];
    const there = await migrate(tree.root, {
      ...toB(hosts),
      lazy: true,
      onProgress: ({ phase }) => {
        phases.push(phase);
        // The source's criu dump serves the pages on A's end of the link, and only there.
        if (phase === 'restore') {
          servedDuringRestore = lazyServers().length;
          boundTo = lazyServers().map((p) => readFileSync(`/proc/${p}/cmdline`, 'utf8').split('\0')).map((argv) => argv[argv.indexOf('--address') + 1]!);
        }
      },
    });
    expect(servedDuringRestore).to.equal(1);
    expect(boundTo, "the source's page server binds A's end of the link only").to.deep.equal([hosts.A_ADDR]);
    // Nor is criu left on B: lazy-pages ended with the last page.
    expect((await snapshot(hostInit(hosts, 'b'))).processes.filter((p) => p.comm === 'criu')).to.deep.equal([]);
    expect(phases).to.include.members(['dump', 'send', 'restore', 'pages', 'kill source', 'commit']);
    expect(there.lazy).to.equal(true);
    expect(there.state).to.deep.equal({ source: 'dead', destination: 'running' });
    // 64 MB of the fixture's memory, fetched by B's lazy-pages after the restore.
    expect(there.pagesBytes).to.be.greaterThan(64 * 1024 * 1024);
    await waitFor(() => !existsSync(`/proc/${tree.root}`), 5000, 'the source to be gone');
    expect(lazyServers(), 'a criu page server left on A').to.deep.equal([]);
    const hostPid = await onHost(hosts, 'b', there.root);
    expect(netnsOf(hostPid)).to.equal(netnsInode(hosts.B_NS));
    await tree.waitProgress();
    await killOnB(hosts, hostPid);
  });

  it('--lazy, the restore fails: the source, frozen while it served, runs on and B is clean', async () => {
    await using tree = await spawnTree({ depth: 1, fanout: 1, memoryMb: 16 });
    const e = await rejection(
      migrate(tree.root, {
        ...toB(hosts),
        lazy: true,
        onProgress: ({ phase }) => {
          if (phase !== 'send') return;
          const dir = join(tmpdir(), leftImages().find((d) => d.startsWith('treestate-migrate-'))!, 'images');
          truncateSync(join(dir, `core-${tree.pids()[1]}.img`), 10);
        },
      }),
    );
    expect(e.code).to.equal('EMIGRATE');
    expect(e.message).to.match(/^restore: /);
    expect(e.message).to.include('the source was resumed');
    expect(lazyServers(), 'a criu page server left on A').to.deep.equal([]);
    expect((await getTreeState(tree.root)).state).to.equal('running');
    await tree.waitProgress();
  });

  it('--lazy, lazy-pages dies on B while pages travel: the source runs on and B is clean', async () => {
    await using tree = await spawnTree({ depth: 1, fanout: 1, memoryMb: 256 });
    let killed = 0;
    const e = await rejection(
      migrate(tree.root, {
        ...toB(hosts),
        lazy: true,
        onProgress: ({ phase }) => {
          if (phase !== 'pages') return;
          for (const p of ourCriu((argv, pid) => argv[1] === 'lazy-pages' && netnsOf(pid) === netnsInode(hosts.B_NS))) {
            try {
              process.kill(p, 'SIGKILL');
              killed++;
            } catch {
              // gone
            }
          }
        },
      }),
    );
    expect(killed).to.equal(1);
    expect(e.code).to.equal('EMIGRATE');
    expect(e.message).to.match(/^pages: /);
    expect(e.message).to.include('the source was resumed');
    expect(lazyServers(), 'a criu page server left on A').to.deep.equal([]);
    expect((await getTreeState(tree.root)).state).to.equal('running');
    await tree.waitProgress();
  });

  it('on a terminal: the phase and elapsed time as it goes, the pages and MB/s once the dump has sent them', async () => {
    await using tree = await spawnTree({ depth: 1, fanout: 1, memoryMb: 32 });
    const command = [process.execPath, cliPath, 'migrate', String(tree.root), '--to', `ssh://root@${hosts.B_ADDR}`, '-i', hosts.KEY, ...sshOptions.flatMap((o) => ['-o', o]), '--remote-treestate', remoteTreestate];
    // script(1) gives the CLI a terminal; what it wrote there comes back on stdout.
    const out = await new Promise<string>((resolve, reject) =>
      execFile('script', ['-qec', command.map(shellWord).join(' '), '/dev/null'], { timeout: 120_000 }, (e, stdout) => (e ? reject(e) : resolve(stdout))),
    );
    const shown = out.split(/\r\x1b\[K|\r?\n/).filter(Boolean);
    expect(shown).to.include.members(['migrate: connect … 0.0 s']);
    expect(shown.some((l) => /^migrate: dump … \d+\.\d s$/.test(l)), out).to.equal(true);
    const rate = shown.find((l) => l.startsWith('migrate: send; '));
    expect(rate, out).to.match(/^migrate: send; \d+ pages \((\d+\.\d) MB\) at \d+\.\d MB\/s … \d+\.\d s$/);
    expect(Number(/\((\d+\.\d) MB\)/.exec(rate!)![1])).to.be.greaterThan(32);
    expect(out).to.match(/migrated the tree of \d+ to ssh:\/\/root@[\d.]+: it is running there as (\d+); the source is dead/);
    const there = Number(/it is running there as (\d+)/.exec(out)![1]);
    await killOnB(hosts, await onHost(hosts, 'b', there));
  });

  it('a tree of 1093 processes migrates in one command, every process arriving', async function () {
    this.timeout(240_000);
    await using tree = await spawnTree({ depth: 6, fanout: 3 });
    expect(tree.pids()).to.have.length(1093);
    // 1093 pids from this host's range may meet B's own (its sshd, the
    // receiving treestate): a new pid namespace there frees them all.
    const there = await migrate(tree.root, { ...toB(hosts), pidNamespace: 'new' });
    const hostPid = await onHost(hosts, 'b', there.root);
    const status = await getTreeState(hostPid);
    expect(status.state).to.equal('running');
    expect(status.processes).to.have.length(1093);
    await tree.waitProgress();
    await killOnB(hosts, hostPid);
  });

  it('--final-state stopped: the tree arrives stopped', async () => {
    await using tree = await spawnTree({ depth: 1, fanout: 1 });
    const there = await migrate(tree.root, { ...toB(hosts), finalState: 'stopped' });
    expect(there.state.destination).to.equal('stopped');
    const hostPid = await onHost(hosts, 'b', there.root);
    expect((await getTreeState(hostPid)).state).to.equal('stopped');
    await tree.assertNoProgress();
    await killOnB(hosts, hostPid);
  });

  it('pids taken on the destination: the restore fails, the source runs on, B is clean; --pid-ns new then succeeds', async () => {
    await using tree = await spawnTree({ depth: 0 });
    // A process on B that holds the tree's pid there (ns_last_pid: the next pid is that one).
    const holder = execFileSync(
      'ssh',
      ['-T', '-i', hosts.KEY, ...sshOptions.flatMap((o) => ['-o', o]), `root@${hosts.B_ADDR}`, `echo ${tree.root - 1} > /proc/sys/kernel/ns_last_pid; setsid sleep 1000 </dev/null >/dev/null 2>&1 & echo $!`],
      { encoding: 'utf8' },
    ).trim();
    expect(Number(holder)).to.equal(tree.root);
    const e = await rejection(migrate(tree.root, { ...toB(hosts) }));
    expect(e.code).to.equal('EMIGRATE');
    expect(e.message).to.match(/^restore: /);
    expect(e.message).to.include('the source was resumed');
    expect((await getTreeState(tree.root)).state).to.equal('running');
    await tree.waitProgress();
    expect(await fixturesOn(hosts, 'b')).to.deep.equal([]);
    const there = await migrate(tree.root, { ...toB(hosts), pidNamespace: 'new' });
    expect(there.pidNamespace).to.include({ pid: tree.root });
    await killTree(await onHost(hosts, 'b', there.root));
    process.kill(await onHost(hosts, 'b', Number(holder)), 'SIGKILL');
    await waitFor(async () => (await fixturesOn(hosts, 'b')).length === 0, 5000, 'the tree on B to be gone');
  });

  it('the page server dies during the dump: the source runs on and B is clean', async () => {
    await using tree = await spawnTree({ depth: 1, fanout: 1, memoryMb: 64 });
    let killed = 0;
    const e = await rejection(
      migrate(tree.root, {
        ...toB(hosts),
        onProgress: ({ phase }) => {
          if (phase !== 'dump') return;
          for (const p of readdirSync('/proc').filter((d) => /^\d+$/.test(d))) {
            try {
              const cmd = readFileSync(`/proc/${p}/cmdline`, 'utf8');
              if (cmd.startsWith(`${packageRoot()}`) && cmd.includes('page-server') && netnsOf(Number(p)) === netnsInode(hosts.B_NS)) {
                process.kill(Number(p), 'SIGKILL');
                killed++;
              }
            } catch {
              // gone
            }
          }
        },
      }),
    );
    expect(killed).to.equal(1);
    expect(e.code).to.equal('EMIGRATE');
    expect((await getTreeState(tree.root)).state).to.equal('running');
    await tree.waitProgress();
    expect(await fixturesOn(hosts, 'b')).to.deep.equal([]);
  });

  for (const lazy of [false, true]) {
    it(`ssh drops while the images travel${lazy ? ", with --lazy while the source's criu serves" : ''}: the source runs on and B is clean`, async () => {
      await using tree = await spawnTree({ depth: 1, fanout: 1, memoryMb: lazy ? 16 : 0 });
      const e = await rejection(
        migrate(tree.root, {
          ...toB(hosts),
          lazy,
          onProgress: ({ phase }) => {
            if (phase !== 'send') return;
            const ssh = readFileSync(`/proc/${process.pid}/task/${process.pid}/children`, 'utf8').trim().split(' ').map(Number).filter((p) => readFileSync(`/proc/${p}/comm`, 'utf8').trim() === 'ssh');
            expect(ssh).to.have.length(1);
            process.kill(ssh[0]!, 'SIGKILL');
          },
        }),
      );
      expect(e.code).to.equal('EMIGRATE');
      expect(e.message).to.include('the source was resumed');
      expect(lazyServers(), 'a criu page server left on A').to.deep.equal([]);
      expect((await getTreeState(tree.root)).state).to.equal('running');
      await tree.waitProgress();
      await waitFor(() => leftImages().length === 0, 5000, 'the destination to remove its images');
    });
  }

  it('a damaged image: the restore fails naming it, the source runs on and B is clean', async () => {
    await using tree = await spawnTree({ depth: 1, fanout: 1 });
    const e = await rejection(
      migrate(tree.root, {
        ...toB(hosts),
        onProgress: ({ phase }) => {
          if (phase !== 'send') return;
          const dir = join(tmpdir(), leftImages().find((d) => d.startsWith('treestate-migrate-'))!, 'images');
          truncateSync(join(dir, `core-${tree.pids()[1]}.img`), 10);
        },
      }),
    );
    expect(e.code).to.equal('EMIGRATE');
    // treestate reads the images before criu runs: the cut core image is named there.
    expect(e.message).to.match(new RegExp(`^restore: the destination failed \\(EIMAGES\\): .*core-${tree.pids()[1]}\\.img`, 's'));
    expect((await getTreeState(tree.root)).state).to.equal('running');
    await tree.waitProgress();
  });
});
