import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect } from 'chai';
import { getTreeState, stopTree } from '../src/index.js';
import { commandNames, loadCommands, main } from '../src/cli/main.js';
import { spawnSupervised, spawnTree } from '../src/testing/index.js';
import { cli, cliPath, inCI, requireCriu, tempDirs, waitFor } from './helpers.js';

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

  it('knows a terminal when it writes to one (a pty from script(1)), and colours there', async function () {
    await using tree = await spawnTree({ depth: 0 });
    const run = spawnSync('script', ['-qec', `${JSON.stringify(process.execPath)} ${JSON.stringify(cliPath)} tree ${tree.root}`, '/dev/null'], { encoding: 'utf8', env: { ...process.env, NO_COLOR: '' } });
    if (run.error && !inCI) this.skip(); // no script(1) here (util-linux)
    expect(run.status, run.stderr).to.equal(0);
    expect(run.stdout).to.match(/\x1b\[32m\[?running\]?\x1b\[0m/);
  });

  it('a reader that goes away early (EPIPE) ends the output quietly: exit 0, nothing on stderr', async () => {
    // 364 processes x 3 threads: --json is far more than a pipe holds, so the write meets a closed pipe.
    await using tree = await spawnTree({ depth: 5, fanout: 3, threads: 3 });
    const dir = mkdtempSync(join(tmpdir(), 'treestate-epipe-'));
    try {
      const run = spawnSync('bash', ['-c', `${JSON.stringify(process.execPath)} ${JSON.stringify(cliPath)} tree ${tree.root} --json 2>"$1" | head -c 10 >/dev/null; echo "\${PIPESTATUS[0]}"`, 'bash', join(dir, 'err')], { encoding: 'utf8' });
      expect(run.stdout.trim()).to.equal('0');
      expect(readFileSync(join(dir, 'err'), 'utf8')).to.equal('');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
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
    expect(printed).to.have.keys('root', 'state', 'processes', 'signalled', 'exited', 'passes', 'elapsedMs', 'walk', 'rootStartTime', 'alreadyStopped');
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

  it('--version prints the package version', async () => {
    const { version } = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8'));
    for (const flag of ['--version', '-V']) {
      const run = await cli([flag]);
      expect(run.code).to.equal(0);
      expect(run.stdout).to.equal(`${version}\n`);
    }
  });

  it('--help fits 80 columns and names every option the parser accepts, each command its own', async () => {
    const help = await cli(['--help']);
    expect(help.code).to.equal(0);
    const long = help.stdout.split('\n').filter((line) => [...line].length > 80);
    expect(long, 'lines over 80 columns').to.deep.equal([]);
    for (const [name, command] of Object.entries(await loadCommands())) {
      const own = (await cli([name, '--help'])).stdout;
      expect(own.split('\n').filter((line) => [...line].length > 80), `${name} --help`).to.deep.equal([]);
      for (const [flag, spec] of Object.entries(command.flags)) {
        expect(help.stdout, `${name} accepts ${flag}`).to.include(flag);
        if (spec.alias) expect(help.stdout, `${name} accepts ${spec.alias}`).to.include(`${spec.alias}, ${flag}`);
        expect(own, `${name}'s usage names ${flag}`).to.satisfy((text: string) => text.includes(flag) || (spec.alias !== undefined && text.includes(`${spec.alias} `)));
      }
      if (command.extra) expect(own).to.include(name === 'run' ? '-- CMD [ARGS…]' : '[-- CRIU-ARGS]');
    }
    for (const flag of ['-V, --version', '-h, --help', '-- CRIU-ARGS']) expect(help.stdout).to.include(flag);
    expect((await cli(['wait', '--help'])).stdout).to.include('--state running|stopped|dead|mixed');
    // Not 10000 for everything: criu commands have their own default.
    expect(help.stdout).to.match(/default 10000; for\s+dump, restore\s+and\s+predump\s+120000/);
  });

  it('with --json, errors are JSON on stdout too, and the exit codes stay', async () => {
    const reaped = spawnSync('true').pid!;
    const gone = await cli(['status', String(reaped), '--json']);
    expect(gone.code).to.equal(1);
    expect(gone.stderr).to.equal('');
    expect(JSON.parse(gone.stdout).error).to.include({ code: 'ESRCH', pid: reaped }).and.to.have.property('message').that.matches(/no such process/);
    const usage = await cli(['stop', 'abc', '--json']);
    expect(usage.code).to.equal(2);
    expect(JSON.parse(usage.stdout)).to.deep.equal({ error: { code: 'EUSAGE', message: 'not a process id: "abc"' } });
    const option = await cli(['stop', '1', '--json', '--bogus']);
    expect(option.code).to.equal(2);
    expect(JSON.parse(option.stdout).error.code).to.equal('EUSAGE');
    // Without --json: one line on stderr, nothing on stdout.
    const plain = await cli(['status', String(reaped)]);
    expect(plain).to.include({ code: 1, stdout: '' });
    expect(plain.stderr).to.match(/^treestate: no such process/);
  });

  it('says "1 process (1 pass", and a kill does not call what it killed "exited meanwhile"', async () => {
    await using tree = await spawnTree({ depth: 0 });
    await stopTree(tree.root);
    const again = await cli(['stop', String(tree.root)]);
    expect(again.stdout).to.match(new RegExp(`^stopped the tree of ${tree.root}: 1 process \\(1 pass, [\\d.]+ ms\\)\n$`));
    expect((await cli(['status', String(tree.root)])).stdout).to.equal(`${tree.root}: stopped (1 process, 1 thread)\n`);
    await using three = await spawnTree({ depth: 1, fanout: 2 });
    const kill = await cli(['kill', String(three.root)]);
    expect(kill.code).to.equal(0);
    expect(kill.stdout).to.match(new RegExp(`^killed the tree of ${three.root}: 3 processes \\(\\d+ pass(es)?, [\\d.]+ ms\\)\n$`));
  });

  it("loads a command's code only when it runs: a tree command needs neither protobufjs nor criu's, cgroup's or migrate's code", async () => {
    await using tree = await spawnTree({ depth: 1, fanout: 2 });
    const dir = mkdtempSync(join(tmpdir(), 'treestate-probe-'));
    try {
      // Every module file the process loaded, printed on stderr as it exits.
      const probe = join(dir, 'probe.cjs');
      writeFileSync(probe, "process.on('exit', () => require('fs').writeSync(2, '\\nLOADED ' + JSON.stringify(Object.keys(require.cache))));");
      const loaded = async (args: string[], env: NodeJS.ProcessEnv = {}) => {
        const run = await cli(args, { env: { NODE_OPTIONS: `--require ${probe}`, ...env } });
        expect(run.code, run.stderr).to.equal(0);
        return JSON.parse(run.stderr.split('\nLOADED ').at(-1)!) as string[];
      };
      for (const command of ['status', 'tree', 'stop', 'cont', 'kill']) {
        const files = await loaded([command, String(tree.root)]);
        expect(files.filter((f) => f.includes('/protobufjs/') || /\/dist\/(criu|cgroup|migrate|demo)-/.test(f)), command).to.deep.equal([]);
      }
      // The same probe sees criu's code when a command needs it (and --help shows every command);
      // protobufjs only once criu is spoken to.
      for (const args of [['dump', '--help'], ['--help']]) {
        const files = await loaded(args);
        expect(files.some((f) => /\/dist\/criu-/.test(f)), args.join(' ')).to.equal(true);
      }
      // A state directory without a kept verdict: check asks criu over RPC.
      const fresh = mkdtempSync(join(dir, 'state-'));
      expect((await loaded(['check'], { TREESTATE_STATE_DIR: fresh })).some((f) => f.includes('/protobufjs/')), 'check').to.equal(true);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('lists every command without loading it, as the modules define them', async () => {
    expect(commandNames()).to.deep.equal(Object.keys(await loadCommands()));
  });

  it('refuses arguments after -- where nothing takes them', async () => {
    const run = await cli(['status', '1', '--', '--ext-unix-sk']);
    expect(run.code).to.equal(2);
    expect(run.stderr).to.match(/^treestate: status takes nothing after --/);
  });

  describe('with criu', () => {
    requireCriu();
    const tempDir = tempDirs();

    it('hands the arguments after -- to criu', async () => {
      await using tree = await spawnTree({ depth: 1, fanout: 1 });
      const dumped = await cli(['dump', String(tree.root), '-D', tempDir(), '--json', '--', '--ext-unix-sk']);
      expect(dumped.code, dumped.stderr).to.equal(0);
      const result = JSON.parse(dumped.stdout);
      expect(result.argv.at(-1)).to.equal('--ext-unix-sk');
      expect(result.state).to.equal('dead');
      // criu itself reads them: one it does not know fails the dump, and --json says so as JSON.
      await using other = await spawnTree({ depth: 0 });
      const bad = await cli(['dump', String(other.root), '-D', tempDir(), '--json', '--', '--no-such-criu-option']);
      expect(bad.code).to.equal(1);
      const { error } = JSON.parse(bad.stdout);
      expect(error.code).to.equal('ECRIU');
      expect(error.details.argv.at(-1)).to.equal('--no-such-criu-option');
    });
  });
});
