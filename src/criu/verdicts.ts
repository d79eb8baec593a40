// Verdicts about a criu binary on this kernel (`criu check`, the socket
// dump), kept across processes so that a dump does not pay for `criu check`
// every time. Keyed by the binary's identity (path, inode, size, mtime) and
// the running kernel (release, build and boot), so a new criu, a new kernel or
// a reboot asks again. Only root keeps them, in a root-only directory: a
// verdict read from a place another user can write would let that user make
// treestate trust a criu it never checked.
import { closeSync, constants, lstatSync, mkdirSync, openSync, readFileSync, realpathSync, renameSync, statSync, writeSync } from 'node:fs';
import { createHash, randomBytes } from 'node:crypto';
import { release, version } from 'node:os';
import { join } from 'node:path';

const DIR = '/run/treestate';

/** The directory verdicts live in, made if missing; undefined when this process must not keep them. */
function verdictDir(): string | undefined {
  if (process.geteuid?.() !== 0) return undefined;
  const dir = process.env.TREESTATE_STATE_DIR ?? DIR;
  try {
    mkdirSync(dir, { mode: 0o700 });
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EEXIST') return undefined;
  }
  try {
    const st = lstatSync(dir);
    return st.isDirectory() && st.uid === 0 && (st.mode & 0o077) === 0 ? dir : undefined;
  } catch {
    return undefined;
  }
}

function bootId(): string {
  try {
    return readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
  } catch {
    return '';
  }
}

function keyOf(criu: string, what: string): string | undefined {
  try {
    const real = realpathSync(criu);
    const st = statSync(real);
    const id = [what, real, st.dev, st.ino, st.size, st.mtimeMs, st.ctimeMs, release(), version(), bootId()].join('\0');
    return createHash('sha256').update(id).digest('hex').slice(0, 32);
  } catch {
    return undefined;
  }
}

/** A verdict kept earlier for this criu binary on this kernel and boot. */
export function readVerdict<T>(criu: string, what: string): T | undefined {
  const dir = verdictDir();
  const key = keyOf(criu, what);
  if (!dir || !key) return undefined;
  try {
    const fd = openSync(join(dir, `${key}.json`), constants.O_RDONLY | constants.O_NOFOLLOW);
    try {
      return JSON.parse(readFileSync(fd, 'utf8')) as T;
    } finally {
      closeSync(fd);
    }
  } catch {
    return undefined;
  }
}

/** Keeps a verdict; written whole under a fresh name, then renamed into place. */
export function writeVerdict(criu: string, what: string, value: unknown): void {
  const dir = verdictDir();
  const key = keyOf(criu, what);
  if (!dir || !key) return;
  const tmp = join(dir, `.${key}.${randomBytes(6).toString('hex')}`);
  try {
    const fd = openSync(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600);
    try {
      writeSync(fd, JSON.stringify(value));
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, join(dir, `${key}.json`));
  } catch {
    // A cache: losing a verdict costs one more check.
  }
}
