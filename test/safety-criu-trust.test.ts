// The criu root runs is trusted only if root alone can change it: the file
// and every directory on its path, symlinks followed. Each refused "criu" is a
// script that leaves a marker if it ever runs, so "refused" means "never ran".
import { expect } from 'chai';
import { chmodSync, chownSync, copyFileSync, existsSync, lchownSync, mkdirSync, realpathSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { dump, locateCriu } from '../src/index.js';
import { spawnTree } from '../src/testing/index.js';
import { cli, rejection, requireCriu, rootOnlyDirs, tempDirs } from './helpers.js';

const NOBODY = 65534;

describe('safety: the criu that runs as root', () => {
  requireCriu();
  const tempDir = tempDirs();
  const rootOnlyDir = rootOnlyDirs();

  /** A "criu" that touches `marker` when run (and otherwise passes for 4.2.1). */
  function markingCriu(dir: string, marker: string): string {
    const path = join(dir, 'criu');
    writeFileSync(path, `#!/bin/sh\ntouch ${marker}\necho "Version: 4.2.1"\n`, { mode: 0o755 });
    return path;
  }

  /** A directory of `nobody`, below one only root can change (so it is the first thing wrong on the path). */
  function nobodysDir(): string {
    const dir = join(rootOnlyDir(), 'nobodys');
    mkdirSync(dir, { mode: 0o755 });
    chownSync(dir, NOBODY, NOBODY);
    return dir;
  }

  it('refuses a criu in a directory of another user (the real criu copied there, or a script), and never runs it', async () => {
    const real = realpathSync((await locateCriu()).path);
    const dir = nobodysDir();
    const copy = join(dir, 'criu');
    copyFileSync(real, copy);
    chmodSync(copy, 0o755);
    const check = await cli(['check'], { env: { TREESTATE_CRIU: copy } });
    expect(check.code).to.equal(1);
    expect(check.stderr).to.include(`treestate: refusing to run criu at ${copy} as root: ${dir} belongs to uid ${NOBODY}, not to root (fix: chown root ${dir}`);

    const marker = join(tempDir(), 'ran');
    const script = markingCriu(nobodysDir(), marker);
    expect((await cli(['check'], { env: { TREESTATE_CRIU: script } })).code).to.equal(1);
    await using tree = await spawnTree({ depth: 0 });
    const e = await rejection(dump(tree.root, { imagesDir: tempDir(), criu: script }));
    expect(e.code).to.equal('EUNTRUSTED');
    expect(existsSync(marker), 'the untrusted criu ran').to.equal(false);
    await expect(tree.root).to.be.a.runningTree;
  });

  it('refuses a criu writable by others, owned by another user, behind a link of another user in a sticky directory like /tmp, or reached through a link of another user', async () => {
    const marker = join(tempDir(), 'ran');
    const trusted = markingCriu(rootOnlyDir(), marker);

    const writable = markingCriu(rootOnlyDir(), marker);
    chmodSync(writable, 0o757);
    const owned = markingCriu(rootOnlyDir(), marker);
    chownSync(owned, NOBODY, NOBODY);
    const sticky = join(rootOnlyDir(), 'sticky');
    mkdirSync(sticky);
    chmodSync(sticky, 0o1777);
    const inSticky = markingCriu(sticky, marker);
    // In a sticky directory others cannot replace root's entries, but they
    // can add their own: a link of nobody's there is refused.
    const stickyLink = join(sticky, 'criu-link');
    symlinkSync(trusted, stickyLink);
    lchownSync(stickyLink, NOBODY, NOBODY);
    // A root-owned link to a criu of nobody's: the target's path is checked.
    const toNobodys = join(rootOnlyDir(), 'criu');
    symlinkSync(markingCriu(nobodysDir(), marker), toNobodys);
    // A link of nobody's to a trusted criu: nobody can point it elsewhere.
    const nobodysLink = join(nobodysDir(), 'criu');
    symlinkSync(trusted, nobodysLink);

    const cases: Array<[string, RegExp]> = [
      [writable, /criu is writable by others \(mode 0757; fix: chmod go-w /],
      [owned, new RegExp(`criu belongs to uid ${NOBODY}, not to root`)],
      [stickyLink, new RegExp(`criu-link is a symbolic link of uid ${NOBODY} in a directory others can write to`)],
      [toNobodys, new RegExp(`nobodys belongs to uid ${NOBODY}`)],
      [nobodysLink, new RegExp(`nobodys belongs to uid ${NOBODY}`)],
    ];
    for (const [criu, why] of cases) {
      const e = await rejection(locateCriu(criu));
      expect(e.code, criu).to.equal('EUNTRUSTED');
      expect(e.message).to.match(why);
    }
    expect(existsSync(marker), 'an untrusted criu ran').to.equal(false);
    // The same script where only root can change it does run (and then fails
    // `criu check`, spoken over RPC, which a script cannot answer); so does
    // root's own file in a sticky directory (a clone below /tmp, say).
    expect((await rejection(locateCriu(trusted))).code).to.equal('ENOCRIU');
    expect(existsSync(marker)).to.equal(true);
    rmSync(marker);
    expect((await rejection(locateCriu(inSticky))).code).to.equal('ENOCRIU');
    expect(existsSync(marker)).to.equal(true);
  });

  it('runs the real criu through a link of root, every directory on both paths being root-only', async () => {
    const link = join(rootOnlyDir(), 'criu');
    symlinkSync(realpathSync((await locateCriu()).path), link);
    const run = await cli(['check', '--json'], { env: { TREESTATE_CRIU: link } });
    expect(run.code, run.stderr).to.equal(0);
    expect(JSON.parse(run.stdout)).to.include({ path: link, source: 'env' });
  });
});
