import { expect } from 'chai';
import { execFile } from 'node:child_process';
import { chownSync, copyFileSync, mkdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { packageRoot } from '../src/native.js';
import { tempDirs } from './helpers.js';

function setup(script: string): Promise<{ code: number; stderr: string }> {
  return new Promise((resolve) => {
    execFile('bash', [script, '--quiet'], { timeout: 60_000 }, (error, _stdout, stderr) => resolve({ code: error ? Number(error.code) : 0, stderr: String(stderr) }));
  });
}

/** A checkout of just the script, in `dir`. */
function checkout(dir: string): string {
  mkdirSync(join(dir, 'scripts'), { recursive: true });
  const script = join(dir, 'scripts', 'setup-criu.sh');
  copyFileSync(join(packageRoot(), 'scripts', 'setup-criu.sh'), script);
  return script;
}

describe('setup-criu.sh as root', () => {
  const tempDir = tempDirs();

  it('refuses to build into a checkout another user owns, and writes nothing there', async () => {
    const repo = join(tempDir(), 'repo');
    const script = checkout(repo);
    chownSync(repo, 65534, 65534);
    const run = await setup(script);
    expect(run.code).to.equal(1);
    expect(run.stderr).to.match(/will not build criu into \S+\/repo\/\.criu as root: \S+\/repo is owned by uid 65534, not root/);
    expect(() => readFileSync(join(repo, '.criu', 'setup.log'))).to.throw(/ENOENT/);
  });

  it('refuses a .criu that is a symlink, and never writes through it', async () => {
    const base = tempDir();
    const repo = join(base, 'repo');
    const script = checkout(repo);
    const elsewhere = join(base, 'elsewhere');
    mkdirSync(elsewhere);
    writeFileSync(join(elsewhere, 'setup.log'), 'precious');
    symlinkSync(elsewhere, join(repo, '.criu'));
    const run = await setup(script);
    expect(run.code).to.equal(1);
    expect(run.stderr).to.match(/\.criu is a symlink/);
    expect(readFileSync(join(elsewhere, 'setup.log'), 'utf8')).to.equal('precious');
  });

  it('pins the criu package version it accepts, and downloads as _apt, not root', function () {
    const text = readFileSync(join(packageRoot(), 'scripts', 'setup-criu.sh'), 'utf8');
    expect(text).to.match(/^readonly PINNED_VERSION='4\.2\.1-\*'$/m);
    // The build's own log (a fresh clone builds it: .ci/run, npm test) shows
    // apt's warning when it fell back to downloading as root.
    let log = '';
    try {
      log = readFileSync(join(packageRoot(), '.criu', 'setup.log'), 'utf8');
    } catch {
      // a system criu: nothing was downloaded
    }
    if (log.includes('apt-get')) expect(log).to.not.include('unsandboxed as root');
  });
});
