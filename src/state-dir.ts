// treestate's private state directory: what one treestate process leaves for
// the next (criu verdicts, records of what a stop stopped). Only a directory
// no one else can change is used: what is read from it steers what treestate
// trusts and signals, so a file another user could plant there must not count.
import { closeSync, constants, lstatSync, mkdirSync, openSync, readFileSync, readdirSync, renameSync, unlinkSync, writeSync } from 'node:fs';
import { join } from 'node:path';

const ROOT_DIR = '/run/treestate';

/** `dir` made 0700 if missing; true when it is a real directory of ours that no one else can enter. */
function privateDir(dir: string): boolean {
  try {
    mkdirSync(dir, { mode: 0o700 });
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EEXIST') return false;
  }
  try {
    const st = lstatSync(dir);
    return st.isDirectory() && st.uid === process.geteuid?.() && (st.mode & 0o077) === 0;
  } catch {
    return false;
  }
}

/**
 * The state directory (with `sub` below it), made if missing; undefined when
 * there is none this process may use. Root's is /run/treestate (or
 * TREESTATE_STATE_DIR). Another user's, where `forUsers` allows it, is
 * $XDG_RUNTIME_DIR/treestate, and only if $XDG_RUNTIME_DIR is that user's own
 * 0700 directory (as systemd-logind makes it).
 */
export function stateDir(sub?: string, { forUsers = false } = {}): string | undefined {
  let base: string;
  if (process.geteuid?.() === 0) {
    base = process.env.TREESTATE_STATE_DIR ?? ROOT_DIR;
  } else {
    const runtime = process.env.XDG_RUNTIME_DIR;
    if (!forUsers || !runtime || !runtime.startsWith('/')) return undefined;
    try {
      const st = lstatSync(runtime);
      if (!st.isDirectory() || st.uid !== process.geteuid?.() || (st.mode & 0o077) !== 0) return undefined;
    } catch {
      return undefined;
    }
    base = join(runtime, 'treestate');
  }
  if (!privateDir(base)) return undefined;
  if (sub === undefined) return base;
  const dir = join(base, sub);
  return privateDir(dir) ? dir : undefined;
}

/** The text of `dir/name`, never through a symlink; undefined when it cannot be read. */
export function readStateFile(dir: string, name: string): string | undefined {
  try {
    const fd = openSync(join(dir, name), constants.O_RDONLY | constants.O_NOFOLLOW);
    try {
      return readFileSync(fd, 'utf8');
    } finally {
      closeSync(fd);
    }
  } catch {
    return undefined;
  }
}

/** Writes `dir/name` whole under a fresh name, then renames it into place: a reader sees the old file or the new one. */
export function writeStateFile(dir: string, name: string, text: string): boolean {
  // Unique, not secret: the directory is the caller's own, and O_EXCL
  // refuses a name that exists (node:crypto alone took ~2.5 ms to load).
  const tmp = join(dir, `.${name}.${process.pid}.${Date.now().toString(36)}.${Math.random().toString(36).slice(2, 10)}`);
  try {
    const fd = openSync(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600);
    try {
      writeSync(fd, text);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, join(dir, name));
    return true;
  } catch {
    try {
      unlinkSync(tmp);
    } catch {
      // never created
    }
    return false;
  }
}

export function removeStateFile(dir: string, name: string): void {
  try {
    unlinkSync(join(dir, name));
  } catch {
    // gone already
  }
}

/** This boot's id: what was kept in a previous boot (its pids, its start times) does not describe this one. */
export function bootId(): string {
  try {
    return readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
  } catch {
    return '';
  }
}

/** The names in `dir` (none when it cannot be listed). */
export function stateFiles(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}
