import { expect } from 'chai';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { continueTree, dump, killTree, restore } from '../src/index.js';
import { spawnSupervised } from '../src/testing/index.js';
import { requireCriu, tempDirs, waitFor } from './helpers.js';

/**
 * A program holding a file whose path it unlinked while a second hard link
 * keeps it (nlink 1): what criu's --link-remap links back as link_remap.ID.
 */
function holder(dir: string): string {
  return [
    'import os, time',
    `f = open('${dir}/data', 'w')`,
    "f.write('x' * 100)",
    'f.flush()',
    `os.link('${dir}/data', '${dir}/keep')`,
    `os.unlink('${dir}/data')`,
    `open('${dir}/ready', 'w').close()`,
    'time.sleep(1000)',
  ].join('\n');
}

describe('criu leftovers', () => {
  requireCriu();
  const tempDir = tempDirs();

  it('removes the link_remap files a --leave-stopped dump leaves, so the next dump of the tree succeeds', async () => {
    const work = tempDir();
    await using sup = await spawnSupervised('python3', ['-c', holder(work)]);
    await waitFor(() => readdirSync(work).includes('ready'), 10_000, 'the holder ready');
    for (const round of [1, 2, 3]) {
      // Before the fix, round 2 failed: criu's "Can't link remap to …/data: File exists".
      const result = await dump(sup.root, { imagesDir: tempDir(), finalState: 'stopped', extraArgs: ['--link-remap'] });
      expect(result.state, `round ${round}`).to.equal('stopped');
      expect(readdirSync(work).sort(), `round ${round}`).to.deep.equal(['keep', 'ready']);
      expect(result.linkRemaps?.removed, `round ${round}`).to.have.lengthOf(1);
      expect(result.linkRemaps!.removed[0]).to.match(new RegExp(`^${work}/link_remap\\.\\d+$`));
      expect(result.linkRemaps!.left).to.deep.equal([]);
      await continueTree(sup.root);
    }
    // The program's own file is untouched.
    expect(readFileSync(join(work, 'keep'), 'utf8')).to.equal('x'.repeat(100));
    await expect(sup.root).to.be.a.runningTree;
  });

  it('with --final-state running criu removes them itself: nothing to report, and dumps in a row succeed', async () => {
    const work = tempDir();
    await using sup = await spawnSupervised('python3', ['-c', holder(work)]);
    await waitFor(() => readdirSync(work).includes('ready'), 10_000, 'the holder ready');
    for (const round of [1, 2]) {
      const result = await dump(sup.root, { imagesDir: tempDir(), finalState: 'running', extraArgs: ['--link-remap'] });
      expect(result, `round ${round}`).to.not.have.property('linkRemaps');
      expect(readdirSync(work).sort(), `round ${round}`).to.deep.equal(['keep', 'ready']);
    }
  });

  it('keepLinkRemaps keeps them, for a restore of those images after a kill', async () => {
    const work = tempDir();
    await using sup = await spawnSupervised('python3', ['-c', holder(work)]);
    await waitFor(() => readdirSync(work).includes('ready'), 10_000, 'the holder ready');
    const imagesDir = tempDir();
    const result = await dump(sup.root, { imagesDir, finalState: 'stopped', extraArgs: ['--link-remap'], keepLinkRemaps: true });
    expect(result).to.not.have.property('linkRemaps');
    expect(readdirSync(work).filter((f) => f.startsWith('link_remap.'))).to.have.lengthOf(1);
    await killTree(sup.root);
    const restored = await restore({ imagesDir, runner: sup, extraArgs: ['--link-remap'] });
    expect(restored).to.include({ root: sup.root, state: 'running' });
  });

  it('reports nothing for a dump that needed no link remap', async () => {
    await using sup = await spawnSupervised('sleep', ['1000']);
    const result = await dump(sup.root, { imagesDir: tempDir(), finalState: 'stopped', extraArgs: ['--link-remap'] });
    expect(result).to.not.have.property('linkRemaps');
    await continueTree(sup.root);
  });
});
