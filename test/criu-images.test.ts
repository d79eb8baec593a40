import { expect } from 'chai';
import { copyFileSync, readFileSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { dump, getTreeState } from '../src/index.js';
import { readCheckpoint, readImage } from '../src/criu/images/read.js';
import { spawnTree } from '../src/testing/index.js';
import { rejection, requireCriu, tempDirs, waitFor, statFields } from './helpers.js';

describe('criu images', () => {
  requireCriu();
  const tempDir = tempDirs();

  it('decodes the processes, threads and task states of a real dump: a stopped child is stopped, a zombie a zombie', async () => {
    await using tree = await spawnTree({ depth: 1, fanout: 2, threads: 2, zombie: true });
    const [root, stoppedChild, runningChild] = tree.pids() as [number, number, number];
    process.kill(stoppedChild, 'SIGSTOP');
    await waitFor(() => statFields(stoppedChild)[0] === 'T', 5000, 'the child in T');
    const before = await getTreeState(root);
    const imagesDir = tempDir();
    await dump(root, { imagesDir, finalState: 'stopped' });

    const checkpoint = await readCheckpoint(imagesDir);
    expect(checkpoint.imgVersion).to.be.a('number').and.greaterThan(0);
    const byPid = new Map(checkpoint.processes.map((p) => [p.pid, p]));
    expect([...byPid.keys()]).to.have.members(before.processes.map((p) => p.pid));
    expect(checkpoint.processes[0]).to.include({ pid: root, ppid: 0, pgid: root, sid: root });
    for (const p of before.processes) {
      expect(byPid.get(p.pid)!.ppid, `ppid of ${p.pid}`).to.equal(p.pid === root ? 0 : p.ppid);
      expect(byPid.get(p.pid)!.threads, `threads of ${p.pid}`).to.have.members(p.threads.map((t) => t.tid));
    }
    expect(byPid.get(stoppedChild)!.state).to.equal('stopped');
    expect(byPid.get(runningChild)!.state).to.equal('alive');
    expect(byPid.get(root)!).to.include({ state: 'alive', comm: 'treestate-fixtu' });
    const zombie = before.processes.find((p) => p.threads.every((t) => t.state === 'Z'))!;
    expect(byPid.get(zombie.pid)!.state).to.equal('zombie');
  });

  it('refuses a truncated, foreign or garbled image with EIMAGES naming the file, never a crash', async () => {
    await using tree = await spawnTree({ depth: 1, fanout: 1 });
    const imagesDir = tempDir();
    await dump(tree.root, { imagesDir, finalState: 'running' });
    const pstree = join(imagesDir, 'pstree.img');
    const good = readFileSync(pstree);
    const bad = join(tempDir(), 'pstree.img');

    copyFileSync(pstree, bad);
    truncateSync(bad, good.length - 3);
    let e = await rejection(readImage(bad, 'pstree'));
    expect(e.code).to.equal('EIMAGES');
    expect(e.message).to.match(new RegExp(`^${bad} is not a readable CRIU pstree image: truncated: the record at offset \\d+ needs \\d+ bytes, \\d+ are left$`));

    truncateSync(bad, 6);
    e = await rejection(readImage(bad, 'pstree'));
    expect(e.message).to.include('truncated: 6 bytes, too short for its magic');

    e = await rejection(readImage(join(imagesDir, 'inventory.img'), 'pstree'));
    expect(e.message).to.match(/magic 0x58313116 at offset 0, expected 0x54564319/);

    // Valid framing around a record that is not a pstree_entry.
    const garbled = Buffer.concat([good.subarray(0, 8), Buffer.from([3, 0, 0, 0, 0xff, 0xff, 0xff])]);
    writeFileSync(bad, garbled);
    e = await rejection(readImage(bad, 'pstree'));
    expect(e.message).to.match(/the record at offset 8 does not decode as pstree_entry: /);

    // A record that decodes but lacks a field CRIU requires.
    writeFileSync(bad, Buffer.concat([good.subarray(0, 8), Buffer.from([2, 0, 0, 0, 0x08, 0x05])]));
    e = await rejection(readImage(bad, 'pstree'));
    expect(e.message).to.match(/does not decode as pstree_entry: .*missing required 'ppid'/);

    e = await rejection(readCheckpoint(tempDir()));
    expect(e.code).to.equal('EIMAGES');
    expect(e.message).to.match(/^cannot read the CRIU image .*inventory\.img: ENOENT/);
  });
});
