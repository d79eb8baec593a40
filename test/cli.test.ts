import { expect } from 'chai';
import { getTreeState } from '../src/index.js';
import { main } from '../src/cli/main.js';
import { readFileSync } from 'node:fs';
import { spawnSupervised, spawnTree } from '../src/testing/index.js';
import { cli, inCI, waitFor } from './helpers.js';

describe('CLI', () => {
  it('status --json prints root, state and processes with pid, ppid and threads', async () => {
    await using tree = await spawnTree({ depth: 1, fanout: 2, threads: 2 });
    const run = await cli(['status', String(tree.root), '--json']);
    expect(run.code).to.equal(0);
    const status = JSON.parse(run.stdout);
    expect(status).to.include({ root: tree.root, state: 'running' });
    expect(status.processes.map((p: { pid: number }) => p.pid)).to.have.members(tree.pids());
    for (const p of status.processes) {
      expect(p).to.have.keys('pid', 'ppid', 'startTime', 'comm', 'state', 'threads', 'children');
      expect(p.threads).to.have.length(2);
      for (const t of p.threads) expect(t).to.have.keys('tid', 'state');
    }
  });

  it('stop, status, cont, wait and kill move and report the tree', async () => {
    await using tree = await spawnTree({ depth: 1, fanout: 2, threads: 2, forkFromThreads: true });
    const pid = String(tree.root);
    const stop = await cli(['stop', pid]);
    expect(stop.code).to.equal(0);
    expect(stop.stdout).to.match(new RegExp(`^stopped the tree of ${pid}: 3 processes \\(\\d+ passes, [\\d.]+ ms\\)`));
    await tree.assertNoProgress();
    expect((await cli(['status', pid])).stdout).to.equal(`${pid}: stopped (3 processes, 6 threads)\n`);
    expect((await cli(['wait', pid, '--state', 'stopped', '--timeout', '1000'])).code).to.equal(0);
    const timedOut = await cli(['wait', pid, '--state', 'running', '--timeout', '50']);
    expect(timedOut.code).to.equal(1);
    expect(timedOut.stderr).to.match(/^treestate: the tree of \d+ is stopped, not running, after 50 ms/);
    const cont = await cli(['cont', pid, '--json']);
    expect(cont.code).to.equal(0);
    expect(JSON.parse(cont.stdout)).to.include({ root: tree.root, state: 'running' });
    await tree.waitProgress();
    expect((await cli(['kill', pid])).code).to.equal(0);
    expect((await cli(['wait', pid, '--state', 'dead'])).code).to.equal(0);
  });

  it('tree draws the processes with their states', async () => {
    await using tree = await spawnTree({ depth: 2, fanout: 2 });
    const run = await cli(['tree', String(tree.root)]);
    expect(run.code).to.equal(0);
    const lines = run.stdout.trim().split('\n');
    expect(lines).to.have.length(7);
    expect(lines[0]).to.equal(`${tree.root} treestate-fixtu [running]`);
    expect(lines.slice(1).every((l) => /^[│├└ ─]+\d+ treestate-fixtu \[running\]$/.test(l))).to.equal(true);
  });

  it('escapes control characters of a process name (comm) in every human-readable line; --json keeps it exact', async () => {
    // A real process that names itself (15 bytes at most) with a colour escape, a newline and a fake tree line.
    const name = '\x1b[31m\n└─ 1z';
    await using sup = await spawnSupervised('sh', ['-c', `printf '\\033[31m\\n\\342\\224\\224\\342\\224\\200 1z' > /proc/self/comm; sleep 1000 & wait`]);
    await waitFor(() => readFileSync(`/proc/${sup.root}/comm`, 'utf8') === `${name}\n`, 5000, 'the name set');
    await waitFor(async () => (await getTreeState(sup.root)).processes.length === 2, 5000, 'the child started');
    for (const scan of [[], ['--scan']]) {
      const run = await cli(['tree', String(sup.root), ...scan]);
      expect(run.code).to.equal(0);
      const lines = run.stdout.trim().split('\n');
      expect(lines).to.have.length(2);
      expect(lines[0]).to.equal(`${sup.root} \\x1b[31m\\n└─ 1z [running]`);
      expect(lines[1]).to.match(/^└─ \d+ sleep \[running\]$/);
      expect(run.stdout).not.to.include('\x1b');
    }
    const json = JSON.parse((await cli(['tree', String(sup.root), '--json'])).stdout);
    expect(json.processes[0].comm).to.equal(name);
  });

  it('colours states on a terminal and not with NO_COLOR or a pipe', async () => {
    await using tree = await spawnTree({ depth: 0 });
    const out: string[] = [];
    expect(await main(['status', String(tree.root)], { out: (t) => out.push(t), err: () => {}, tty: true })).to.equal(0);
    expect(out[0]).to.include('\x1b[32mrunning\x1b[0m');
    expect((await cli(['tree', String(tree.root)])).stdout).not.to.include('\x1b[');
  });

  it('--help lists every command and exits 0; no command is a usage error', async () => {
    const help = await cli(['--help']);
    expect(help.code).to.equal(0);
    for (const c of ['status', 'tree', 'stop', 'cont', 'kill', 'wait', 'dump', 'restore', 'predump', 'check', 'demo']) expect(help.stdout).to.include(`  ${c}`);
    expect((await cli([])).code).to.equal(2);
    expect((await cli(['stop', '--help'])).stdout).to.match(/^usage: treestate stop PID/);
  });

  it('--json of stop prints exactly what the library returned', async () => {
    await using tree = await spawnTree({ depth: 1, fanout: 1 });
    const out: string[] = [];
    await main(['stop', String(tree.root), '--json'], { out: (t) => out.push(t), err: () => {}, tty: false });
    const printed = JSON.parse(out[0]!);
    expect(printed).to.have.keys('root', 'state', 'processes', 'signalled', 'exited', 'passes', 'elapsedMs', 'walk', 'rootStartTime');
    expect(printed.rootStartTime).to.equal((await getTreeState(tree.root)).processes[0]!.startTime);
  });

  it('demo provisions criu when none works and it runs as root, and says what to run otherwise', async function () {
    this.timeout(180_000);
    const asRoot = await cli(['demo'], { env: { TREESTATE_CRIU: '/nonexistent/criu' }, timeoutMs: 170_000 });
    expect(asRoot.code, asRoot.stderr).to.equal(0);
    expect(asRoot.stdout).to.match(/providing one: \S+setup-criu\.sh fetches CRIU [\d.]+ and its libraries from Debian's packages/);
    expect(asRoot.stdout).to.match(/== continued: the heartbeat goes on from where it was dumped/);
    const asUser = await cli(['demo'], { uid: 65534, gid: 65534, env: { TREESTATE_CRIU: '/nonexistent/criu' } });
    expect(asUser.code, asUser.stderr).to.equal(0);
    expect(asUser.stdout).to.match(/To provide one, run as root: bash \S+setup-criu\.sh/);
    expect(asUser.stdout).to.include('== killed in');
  });

  it('demo walks a tree through every state and the checkpoint story', async function () {
    this.timeout(120_000);
    const run = await cli(['demo']);
    expect(run.code, run.stderr).to.equal(0);
    for (const heading of ['== running', '== stopped in', '== continued in', '== killed in']) expect(run.stdout).to.include(heading);
    // In CI a working criu is provided, so the checkpoint part must run there.
    if (inCI || !run.stdout.includes('(no checkpoint part')) {
      expect(run.stdout).to.match(/== continued: the heartbeat goes on from where it was dumped: (\d+) → (\d+)/);
    }
  });
});
