import { expect } from 'chai';
import { readdirSync, statSync, truncateSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import { dump, getTreeState, restore, verifyImages } from '../src/index.js';
import { onPath } from '../src/criu/locate.js';
import { spawnSupervised, spawnTree } from '../src/testing/index.js';
import { cli, rejection, requireCriu, tempDirs, waitFor } from './helpers.js';

function listing(dir: string): string[] {
  return readdirSync(dir)
    .filter((f) => f.endsWith('.img'))
    .map((f) => `${f} ${statSync(join(dir, f)).size} ${statSync(join(dir, f)).mtimeMs}`)
    .sort();
}

function unixAnswers(path: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect(path);
    let data = '';
    socket.on('data', (d) => (data += d));
    socket.on('error', reject);
    socket.on('close', () => resolve(data));
  });
}

describe('criu dump --verify: a test restore in throwaway namespaces', () => {
  requireCriu();
  const tempDir = tempDirs();

  it('verifies a dump that leaves the tree running, while the original runs on untouched', async () => {
    await using tree = await spawnTree({ depth: 1, fanout: 2, threads: 2, forkFromThreads: true, sockets: true });
    const dumped = await dump(tree.root, { imagesDir: tempDir(), finalState: 'running', verify: true });
    expect(dumped.verified).to.include({ processes: 3, threads: 6 });
    expect(dumped.verified!.elapsedMs).to.be.greaterThan(0);
    expect((await getTreeState(tree.root)).state).to.equal('running');
    await tree.waitProgress();
  });

  it('verifies a dump that kills the tree, and the images then restore for real', async () => {
    await using tree = await spawnTree({ depth: 1, fanout: 1, threads: 3 });
    const imagesDir = tempDir();
    const dumped = await dump(tree.root, { imagesDir, verify: true });
    expect(dumped.verified).to.include({ processes: 2, threads: 6 });
    const restored = await restore({ imagesDir, runner: tree.supervisor });
    expect(restored.state).to.equal('running');
    await tree.waitProgress();
  });

  it('damaged images fail verification with criu\'s reason, and are left as they were', async () => {
    await using tree = await spawnTree({ depth: 1, fanout: 1 });
    const imagesDir = tempDir();
    await dump(tree.root, { imagesDir, finalState: 'running' });
    // The child's core image cut short. (A short pages image is no good
    // test: CRIU 4.2.1 then spins in its page reader until it is killed.)
    truncateSync(join(imagesDir, `core-${tree.pids()[1]}.img`), 10);
    const before = listing(imagesDir);
    const e = await rejection(verifyImages(imagesDir));
    expect(e.code).to.equal('EVERIFY');
    expect(e.message).to.match(/do not restore .*criu restore exited with 1/s);
    expect(e.message).to.match(/Error \(criu\//);
    expect(listing(imagesDir)).to.deep.equal(before);
    expect((await getTreeState(tree.root)).state).to.equal('running');
  });

  it('refuses to test-restore a live tree holding a path-bound unix socket, which it would take away', async function () {
    const python = onPath('python3');
    if (!python) {
      if (process.env.CI) throw new Error('CI needs python3');
      this.skip();
    }
    const path = join(tempDir(), 'server.sock');
    const code = `import socket\ns=socket.socket(socket.AF_UNIX)\ns.bind(${JSON.stringify(path)})\ns.listen(5)\nwhile True:\n  c,_=s.accept(); c.send(b'hi'); c.close()\n`;
    await using server = await spawnSupervised(python!, ['-c', code]);
    await waitFor(async () => (await unixAnswers(path).catch(() => '')) === 'hi', 10_000, 'the unix server');
    const e = await rejection(dump(server.root, { imagesDir: tempDir(), finalState: 'running', verify: true }));
    expect(e.code).to.equal('EVERIFY');
    expect(e.message).to.include(`holds unix sockets bound to ${path}`);
    expect(await unixAnswers(path)).to.equal('hi');
  });

  it('the CLI reports the verification', async () => {
    await using tree = await spawnTree({ depth: 0 });
    const run = await cli(['dump', String(tree.root), '-D', join(tempDir(), 'd'), '--final-state', 'running', '--verify', '--json']);
    expect(run.code, run.stderr).to.equal(0);
    expect(JSON.parse(run.stdout).verified).to.include({ processes: 1, threads: 1 });
  });
});
