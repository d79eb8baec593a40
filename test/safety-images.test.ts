// Images as root: private, in the caller's own directories, never written
// through a symlink another user planted, and restored only when every file
// is the caller's (CRIU images are code criu runs as root). Another user is
// the real `nobody`, planting with its own hands (runuser).
import { expect } from 'chai';
import { execFileSync } from 'node:child_process';
import { chmodSync, chownSync, existsSync, lstatSync, mkdirSync, readFileSync, readdirSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { dump, restore, TreeStateError } from '../src/index.js';
import { childProcessRunner } from '../src/criu/runner.js';
import { spawnSupervised, spawnTree } from '../src/testing/index.js';
import { cli, rejection, requireCriu, tempDirs } from './helpers.js';

const NOBODY = 65534;

function mode(path: string): string {
  return (lstatSync(path).mode & 0o7777).toString(8);
}

/** Runs a command as `nobody`: the other user acting on its own. */
function asNobody(cmd: string, args: string[]): void {
  execFileSync('runuser', ['-u', 'nobody', '--', cmd, ...args]);
}

describe('safety: images as root', () => {
  requireCriu();
  const tempDir = tempDirs();

  /** A root-owned 0600 file with a secret in a private directory: what a planted symlink aims at. */
  function victim(): { path: string; check: () => void } {
    const path = join(tempDir(), 'secret');
    writeFileSync(path, 'root only\n', { mode: 0o600 });
    const before = statSync(path);
    return {
      path,
      check: () => {
        const after = statSync(path);
        expect(readFileSync(path, 'utf8')).to.equal('root only\n');
        expect([after.uid, after.mode & 0o777, after.mtimeMs]).to.deep.equal([0, 0o600, before.mtimeMs]);
      },
    };
  }

  /** A directory of `nobody` below /tmp (a test directory is private to root: nobody could not reach into it). */
  function nobodysDir(): string {
    const dir = tempDir();
    chownSync(dir, NOBODY, NOBODY);
    chmodSync(dir, 0o755);
    return dir;
  }

  it('a dump and a restore as root leave the images directory 0700 (every level created) and every file in it 0600', async () => {
    await using tree = await spawnTree({ depth: 1, fanout: 2 });
    const top = tempDir();
    const imagesDir = join(top, 'a', 'b');
    await dump(tree.root, { imagesDir });
    await restore({ imagesDir, runner: tree.supervisor });
    expect([mode(join(top, 'a')), mode(imagesDir)]).to.deep.equal(['700', '700']);
    const files = readdirSync(imagesDir);
    expect(files).to.include.members(['inventory.img', 'dump.log', 'restore.log']);
    expect(files.filter((f) => f.startsWith('pages-'))).to.not.be.empty;
    expect(files.map((f) => `${f} ${mode(join(imagesDir, f))}`)).to.deep.equal(files.map((f) => `${f} 600`));
    await tree.waitProgress();
  });

  it('refuses an existing images directory open to group or others, and uses it with a warning when allowed', async () => {
    await using tree = await spawnTree({ depth: 0 });
    const imagesDir = tempDir();
    chmodSync(imagesDir, 0o755);
    const e = await rejection(dump(tree.root, { imagesDir, finalState: 'running' }));
    expect(e.code).to.equal('EIMAGES');
    expect(e.message).to.include(`the images directory ${imagesDir} is open to group or others (mode 0755)`).and.include(`chmod 700 ${imagesDir}`).and.include('--allow-shared-dir');
    expect(readdirSync(imagesDir)).to.deep.equal([]);
    const refused = await cli(['dump', String(tree.root), '-D', imagesDir, '--final-state', 'running']);
    expect(refused.code).to.equal(1);
    expect(readdirSync(imagesDir)).to.deep.equal([]);

    const result = await dump(tree.root, { imagesDir, finalState: 'running', allowSharedDir: true });
    expect(result.warnings).to.have.length(1);
    expect(result.warnings[0]).to.match(/is open to group or others \(mode 0755\).*used as asked/);
    expect(readdirSync(imagesDir).map((f) => mode(join(imagesDir, f)))).to.satisfy((modes: string[]) => modes.every((m) => m === '600'));

    const other = tempDir();
    chmodSync(other, 0o750);
    const run = await cli(['dump', String(tree.root), '-D', other, '--final-state', 'running', '--allow-shared-dir']);
    expect(run.code).to.equal(0);
    expect(run.stderr).to.match(/^treestate: warning: the images directory .* is open to group or others \(mode 0750\)/);
    expect(existsSync(join(other, 'inventory.img'))).to.equal(true);
    await expect(tree.root).to.be.a.runningTree;
  });

  it("refuses a directory of another user, and follows none of the symlinks planted in it (probe, dump.log, dump.log.out)", async () => {
    await using tree = await spawnTree({ depth: 0 });
    const target = victim();
    const dir = nobodysDir();
    for (const name of [`.treestate-write-test-${process.pid}`, 'dump.log', 'dump.log.out']) asNobody('ln', ['-s', target.path, join(dir, name)]);
    for (const args of [{ imagesDir: dir }, { imagesDir: join(dir, 'sub') }, { imagesDir: tempDir(), logFile: join(dir, 'dump.log') }]) {
      const e = await rejection(dump(tree.root, { ...args, finalState: 'running' }));
      expect(e.code).to.equal('EIMAGES');
      expect(e.message).to.include(`${dir} belongs to uid ${NOBODY}, not to root`).and.include(`chown root ${dir}`);
    }
    const run = await cli(['dump', String(tree.root), '-D', dir]);
    expect(run.code).to.equal(1);
    expect(run.stderr).to.match(/^treestate: refusing the images directory .* belongs to uid 65534/);
    expect(existsSync(join(dir, 'sub'))).to.equal(false);
    target.check();
    await expect(tree.root).to.be.a.runningTree;
  });

  it('refuses an images directory that is a symlink, writable by others, or below one that is', async () => {
    await using tree = await spawnTree({ depth: 0 });
    const real = tempDir();
    const link = join(tempDir(), 'link');
    symlinkSync(real, link);
    const open = tempDir();
    chmodSync(open, 0o777);
    const cases: Array<[string, RegExp]> = [
      [link, /is a symbolic link/],
      [open, /is writable by its group and others \(mode 0777; fix: chmod go-w/],
      [join(open, 'below'), /\/treestate-test-\w+ is writable by its group and others/],
    ];
    for (const [imagesDir, why] of cases) {
      const e = await rejection(dump(tree.root, { imagesDir, finalState: 'running' }));
      expect(e.code, imagesDir).to.equal('EIMAGES');
      expect(e.message).to.match(why);
    }
    expect(readdirSync(real)).to.deep.equal([]);
    expect(readdirSync(open)).to.deep.equal([]);
  });

  it('refuses a log file that is a symlink in the caller\'s own directory, or whose .out is', async () => {
    await using tree = await spawnTree({ depth: 0 });
    const target = victim();
    for (const name of ['dump.log', 'dump.log.out']) {
      const imagesDir = tempDir();
      symlinkSync(target.path, join(imagesDir, name));
      const e = await rejection(dump(tree.root, { imagesDir, finalState: 'running' }));
      expect(e.code).to.equal('EIMAGES');
      expect(e.message).to.include(`${join(imagesDir, name)} exists and is not a regular file`);
      expect(readdirSync(imagesDir)).to.deep.equal([name]);
    }
    target.check();
  });

  it('the runners never write criu\'s output through a symlink', async () => {
    const target = victim();
    const dir = tempDir();
    const out = join(dir, 'x.log.out');
    symlinkSync(target.path, out);
    const e = await childProcessRunner.run('true', [], { out }).then(
      async (running) => void (await running.exited),
      (err: NodeJS.ErrnoException) => err,
    );
    expect(e?.code).to.equal('ELOOP');
    await using sup = await spawnSupervised('sleep', ['1000']);
    const failed = await sup.run('true', [], { out }).then(
      async (running) => void (await running.exited),
      (err: TreeStateError) => err,
    );
    expect(failed?.errno).to.equal(-40); // ELOOP
    target.check();
  });

  it('restores only images the caller owns and no one else may write: a file of nobody, or one open to writes, is refused and nothing runs', async () => {
    await using tree = await spawnTree({ depth: 1, fanout: 1 });
    const imagesDir = tempDir();
    await dump(tree.root, { imagesDir });
    const pages = readdirSync(imagesDir).find((f) => f.startsWith('pages-'))!;
    const path = join(imagesDir, pages);
    const refuse = async (why: RegExp) => {
      const e = await rejection(restore({ imagesDir, runner: tree.supervisor }));
      expect(e.code).to.equal('EIMAGES');
      expect(e.message).to.match(why).and.include('CRIU images are code that criu runs with its privileges: restore only images you wrote');
      expect(existsSync(join(imagesDir, 'restore.log')), 'criu ran').to.equal(false);
    };
    chownSync(path, NOBODY, NOBODY);
    await refuse(new RegExp(`${path} belongs to uid ${NOBODY}, not to root`));
    chownSync(path, 0, 0);
    chmodSync(path, 0o666);
    await refuse(new RegExp(`${path} is writable by its group and others \\(mode 0666`));
    chmodSync(path, 0o600);
    const sub = join(imagesDir, 'sub');
    mkdirSync(sub);
    await refuse(new RegExp(`${sub} is not a regular file`));
    execFileSync('rmdir', [sub]);
    // An iterative dump's parent link is followed, and its files checked too.
    const parent = tempDir();
    writeFileSync(join(parent, 'pagemap-1.img'), '');
    chownSync(join(parent, 'pagemap-1.img'), NOBODY, NOBODY);
    symlinkSync(parent, join(imagesDir, 'parent'));
    await refuse(new RegExp(`${join(parent, 'pagemap-1.img')} belongs to uid ${NOBODY}`));
    execFileSync('rm', [join(imagesDir, 'parent')]);
    await expect(tree.root).to.be.a.deadTree;
    // The images themselves were good all along.
    const restored = await restore({ imagesDir, runner: tree.supervisor });
    expect(restored.state).to.equal('running');
  });

  it('refuses to restore from a directory of another user, even with images of root in it, and writes through none of its links', async () => {
    await using tree = await spawnTree({ depth: 0 });
    const target = victim();
    const imagesDir = tempDir();
    await dump(tree.root, { imagesDir });
    chownSync(imagesDir, NOBODY, NOBODY);
    for (const name of ['restore.log', 'restore.log.out']) asNobody('ln', ['-s', target.path, join(imagesDir, name)]);
    const run = await cli(['restore', '-D', imagesDir]);
    expect(run.code).to.equal(1);
    expect(run.stderr).to.include(`refusing the images directory ${imagesDir}: ${imagesDir} belongs to uid ${NOBODY}, not to root`);
    const e = await rejection(restore({ imagesDir, runner: tree.supervisor }));
    expect(e.code).to.equal('EIMAGES');
    target.check();
    await expect(tree.root).to.be.a.deadTree;
  });
});
