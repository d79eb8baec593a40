import { expect } from 'chai';
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createSocket } from 'node:dgram';
import { connect, createServer } from 'node:net';

/** A TCP port free on 127.0.0.1 now (for a server the test starts next). */
function freeLoopbackPort(): Promise<number> {
  return new Promise((resolve) => {
    const probe = createServer().listen(0, '127.0.0.1', () => {
      const { port } = probe.address() as { port: number };
      probe.close(() => resolve(port));
    });
  });
}
import { continueTree, dump, killTree, restore, type DumpFinalState, type RestoreFinalState } from '../src/index.js';
import { onPath } from '../src/criu/locate.js';
import { spawnSupervised, spawnTree, type TreeFixture } from '../src/testing/index.js';
import { cli, requireCriu, tempDirs, waitFor } from './helpers.js';

/** The first line a TCP (or abstract unix) server sends, or an error. */
function firstLine(target: { port: number } | { path: string }, timeoutMs = 2000): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = 'port' in target ? connect(target.port, '127.0.0.1') : connect(target.path);
    let data = '';
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error('no answer'));
    }, timeoutMs);
    socket.on('data', (chunk) => (data += chunk));
    socket.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    socket.on('close', () => {
      clearTimeout(timer);
      resolve(data.trim());
    });
  });
}

function udpEcho(port: number, text: string, timeoutMs = 2000): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = createSocket('udp4');
    const timer = setTimeout(() => {
      socket.close();
      reject(new Error('no UDP echo'));
    }, timeoutMs);
    socket.on('message', (msg) => {
      clearTimeout(timer);
      socket.close();
      resolve(String(msg));
    });
    socket.send(text, port, '127.0.0.1');
  });
}

/** "fixture PID BEAT PAIR" from the fixture's TCP listener, parsed. */
async function served(tree: TreeFixture): Promise<{ pid: number; beat: number; pair: number }> {
  const [, pid, beat, pair] = (await firstLine({ port: tree.endpoints().tcp })).split(' ').map(Number);
  return { pid: pid!, beat: beat!, pair: pair! };
}

/** The tree answers on every socket, and its established connection carries bytes (PAIR advances). */
async function answersEverywhere(tree: TreeFixture): Promise<void> {
  const first = await served(tree);
  expect(first.pid).to.equal(tree.root);
  expect(await firstLine({ path: `\0${tree.endpoints().unix}` })).to.match(new RegExp(`^fixture ${tree.root} `));
  expect(await udpEcho(tree.endpoints().udp, 'ping')).to.equal('ping');
  await waitFor(async () => (await served(tree)).pair > first.pair, 3000, 'round trips over the established connection');
}

const plans: Array<{ dump: DumpFinalState; restore: RestoreFinalState }> = [
  { dump: 'dead', restore: 'running' },
  { dump: 'dead', restore: 'stopped' },
  { dump: 'running', restore: 'running' },
  { dump: 'stopped', restore: 'stopped' },
];

describe('criu dump and restore of a tree holding sockets', () => {
  requireCriu();
  const tempDir = tempDirs();

  /** criu's iptables network-lock rules on this host (they carry its mark, 0xc114), or [] without iptables. */
  const lockRules = (): string[] => {
    if (!onPath('iptables-save')) return [];
    return execFileSync('iptables-save', { encoding: 'utf8' }).split('\n').filter((l) => l.includes('0xc114'));
  };
  let rulesBefore: string[] = [];
  before(() => {
    rulesBefore = lockRules();
  });
  after(() => {
    // Every dump here that killed or stopped a tree with established
    // connections was restored, which unlocks them: nothing stays locked.
    expect(lockRules(), 'criu network-lock rules left on the host').to.deep.equal(rulesBefore);
  });

  it('`treestate check`, proving established connections dump, leaves no network lock on the host', async () => {
    const state = tempDir(); // no kept verdict: the socket dumps run
    const before = lockRules();
    const run = await cli(['check'], { env: { TREESTATE_STATE_DIR: state } });
    expect(run.code, run.stderr).to.equal(0);
    expect(run.stdout).to.match(/dump of an established TCP connection \(--tcp-established\): ok$/m);
    expect(lockRules()).to.deep.equal(before);
  });

  for (const plan of plans) {
    it(`TCP (listening and established), UDP and unix sockets: dump --final-state ${plan.dump}, restore --final-state ${plan.restore}`, async () => {
      await using tree = await spawnTree({ depth: 1, fanout: 1, sockets: true, tcpPair: true });
      await answersEverywhere(tree);
      const imagesDir = tempDir();
      const dumped = await dump(tree.root, { imagesDir, finalState: plan.dump, tcpEstablished: true });
      expect(dumped.state).to.equal(plan.dump);
      const atDump = tree.heartbeats()[0]!.counter;
      if (plan.dump === 'running') await answersEverywhere(tree); // the network lock is lifted
      // A stopped dump keeps the established connections locked (CRIU's
      // semantics: the images stay true to the peers until a restore unlocks them).
      if (plan.dump === 'stopped') {
        expect(dumped.networkLocked).to.equal(true);
        await tree.assertNoProgress();
      }
      if (plan.dump !== 'dead') await killTree(tree.root);
      const restored = await restore({ imagesDir, finalState: plan.restore, tcpEstablished: true, runner: tree.supervisor });
      expect(restored).to.include({ root: tree.root, state: plan.restore });
      if (plan.restore === 'stopped') {
        await tree.assertNoProgress();
        await continueTree(tree.root);
      }
      await answersEverywhere(tree);
      expect((await served(tree)).beat).to.be.greaterThan(atDump);
    });
  }

  for (const networkLock of ['iptables', 'nftables'] as const) {
    it(`locks established connections with ${networkLock} when asked`, async function () {
      if (networkLock === 'iptables' && !onPath('iptables-restore')) {
        if (process.env.CI) throw new Error('CI must install iptables (.ci/run)');
        this.skip();
      }
      await using tree = await spawnTree({ depth: 0, sockets: true, tcpPair: true });
      const imagesDir = tempDir();
      const dumped = await dump(tree.root, { imagesDir, tcpEstablished: true, networkLock });
      expect(dumped.request).to.include({ network_lock: networkLock });
      await restore({ imagesDir, tcpEstablished: true, networkLock, runner: tree.supervisor });
      await answersEverywhere(tree);
    });
  }

  it('without iptables, an established connection is locked with nftables, and a failed lock says what to install', async () => {
    await using tree = await spawnTree({ depth: 0, sockets: true, tcpPair: true });
    // A PATH without iptables-restore: the default picks nftables …
    const env = { PATH: '/nonexistent' };
    const saved = process.env.PATH;
    process.env.PATH = env.PATH;
    let request: Record<string, unknown> | undefined;
    try {
      request = (await dump(tree.root, { imagesDir: tempDir(), finalState: 'running', tcpEstablished: true })).request;
    } finally {
      process.env.PATH = saved;
    }
    expect(request).to.include({ network_lock: 'nftables' });
    // … and criu's iptables lock without iptables fails with the cause named.
    const run = await cli(['dump', String(tree.root), '-D', `${tempDir()}/d`, '--final-state', 'running', '--tcp-established', '--network-lock', 'iptables'], {
      env: { PATH: '/nonexistent' },
    });
    expect(run.code).to.equal(1);
    expect(run.stderr).to.match(/install the iptables package/);
    await answersEverywhere(tree); // the failed dump left it running
  });

  it('a real server (Python http.server) answers after dump and restore with every final state', async function () {
    const python = onPath('python3');
    if (!python) {
      if (process.env.CI) throw new Error('CI needs python3');
      this.skip();
    }
    const port = await freeLoopbackPort();
    await using server = await spawnSupervised(python!, ['-m', 'http.server', String(port), '--bind', '127.0.0.1', '--directory', '/']);
    // stderr piped: the tries before the server listens fail, and their stack traces are no news.
    const get = () =>
      execFileSync(process.execPath, ['-e', `fetch('http://127.0.0.1:${port}/').then(r => console.log(r.status))`], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }).trim();
    await waitFor(() => {
      try {
        return get() === '200';
      } catch {
        return false;
      }
    }, 10_000, 'the server to answer');
    for (const plan of plans) {
      const imagesDir = tempDir();
      await dump(server.root, { imagesDir, finalState: plan.dump });
      if (plan.dump === 'running') expect(get()).to.equal('200');
      if (plan.dump === 'stopped') await continueTree(server.root);
      if (plan.dump !== 'dead') await killTree(server.root);
      await restore({ imagesDir, finalState: plan.restore, runner: server });
      if (plan.restore === 'stopped') await continueTree(server.root);
      expect(get(), `after dump ${plan.dump}, restore ${plan.restore}`).to.equal('200');
    }
  });

  it('a real key-value server (redis-server) keeps its in-memory data and answers after dump and restore with every final state', async function () {
    const redis = onPath('redis-server') ?? (existsSync('/usr/bin/redis-server') ? '/usr/bin/redis-server' : undefined);
    if (!redis) {
      if (process.env.CI) throw new Error('CI needs redis-server (.ci/run installs it)');
      this.skip();
    }
    const port = await freeLoopbackPort();
    const dir = tempDir();
    // No persistence: what comes back can only have come from the images.
    await using server = await spawnSupervised(redis!, ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--daemonize', 'no', '--dir', dir]);
    const ask = (command: string) =>
      new Promise<string>((resolve, reject) => {
        const socket = connect(port, '127.0.0.1', () => socket.write(`${command}\r\nPING\r\n`));
        let data = '';
        socket.on('data', (d) => {
          data += d;
          if (data.endsWith('+PONG\r\n')) {
            socket.end();
            resolve(data.slice(0, -'+PONG\r\n'.length));
          }
        });
        socket.on('error', reject);
      });
    await waitFor(async () => (await ask('SET treestate kept').catch(() => '')) === '+OK\r\n', 10_000, 'redis to answer');
    for (const plan of plans) {
      const imagesDir = tempDir();
      await dump(server.root, { imagesDir, finalState: plan.dump });
      if (plan.dump === 'running') expect(await ask('GET treestate')).to.equal('$4\r\nkept\r\n');
      if (plan.dump === 'stopped') await continueTree(server.root);
      if (plan.dump !== 'dead') await killTree(server.root);
      await restore({ imagesDir, finalState: plan.restore, runner: server });
      if (plan.restore === 'stopped') await continueTree(server.root);
      expect(await ask('GET treestate'), `after dump ${plan.dump}, restore ${plan.restore}`).to.equal('$4\r\nkept\r\n');
    }
  });
});
