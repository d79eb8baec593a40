// The directories criu writes images and logs into and restores from. Images
// hold the tree's memory (its secrets) and are code criu runs at restore, so
// as root they must stay private and in the caller's hands: every directory
// used is the caller's own and writable by no one else, on a path no one else
// can change (see trust.ts), and a restore reads only files the caller owns.
import { accessSync, closeSync, constants, fstatSync, lstatSync, mkdirSync, openSync, readdirSync, readlinkSync, type Stats } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import { TreeStateError } from '../errors.js';
import { makeDirs } from './dirs.js';
import { componentProblem, UntrustedPath, walkTrusted, type TrustRule } from './trust.js';

function euid(): number {
  return process.geteuid?.() ?? 0;
}

/** Directories on the way down to one we use: root's or the caller's, sticky ones (/tmp) open to others included. */
function onTheWay(): TrustRule {
  return { owners: [0, euid()], stickyDirs: true, followLast: false };
}

const IMAGES_ARE_CODE = 'CRIU images are code that criu runs with its privileges: restore only images you wrote';

function refusal(what: string, dir: string, e: unknown): TreeStateError {
  if (e instanceof UntrustedPath) return new TreeStateError('EIMAGES', `refusing ${what} ${dir}: ${e.message}`, { details: { path: e.path }, cause: e });
  return new TreeStateError('EIMAGES', `cannot check ${what} ${dir}: ${(e as Error).message}`, { cause: e });
}

/** A directory the caller owns and no one else may write to, open with O_NOFOLLOW so that what is read is what was checked. */
interface OwnDirectory {
  real: string;
  stats: Stats;
  /** `real`, reached through the open fd rather than through the path again. */
  at: string;
}

function withOwnDirectory<T>(dir: string, what: string, use: (d: OwnDirectory) => T): T {
  let walked;
  try {
    walked = walkTrusted(dir, onTheWay());
  } catch (e) {
    throw refusal(what, dir, e);
  }
  if (!walked.stats) throw new TreeStateError('EIMAGES', `${what} ${dir} does not exist`);
  if (!walked.stats.isDirectory()) throw new TreeStateError('EIMAGES', `${what} ${dir} is not a directory`);
  let fd: number;
  try {
    fd = openSync(walked.real, constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW);
  } catch (e) {
    throw new TreeStateError('EIMAGES', `cannot open ${what} ${dir}: ${(e as Error).message}`, { cause: e });
  }
  try {
    const stats = fstatSync(fd);
    if (stats.dev !== walked.stats.dev || stats.ino !== walked.stats.ino) {
      throw new TreeStateError('EIMAGES', `${what} ${dir} was replaced while it was checked`);
    }
    const problem = componentProblem(walked.real, stats, [euid()], false);
    if (problem) throw refusal(what, dir, problem);
    return use({ real: walked.real, stats, at: `/proc/self/fd/${fd}` });
  } finally {
    closeSync(fd);
  }
}

function imagesIn(at: string): string[] {
  return readdirSync(at).filter((f) => f.endsWith('.img'));
}

export interface DumpDir {
  /** The directory's real path, for criu. */
  dir: string;
  warnings: string[];
}

/**
 * A directory for new images: created 0700 (every missing level) if missing;
 * refused if unwritable, already holding images, or open to group or others
 * (unless `allowShared`, which turns that into a warning).
 */
export function prepareDumpDir(dir: string, allowShared: boolean): DumpDir {
  try {
    const walked = walkTrusted(dir, onTheWay());
    if (!walked.stats) makeDirs(walked.real, 0o700);
  } catch (e) {
    if (e instanceof UntrustedPath) throw refusal('the images directory', dir, e);
    throw new TreeStateError('EIMAGES', `cannot create the images directory ${dir}: ${(e as Error).message}`, { cause: e });
  }
  return withOwnDirectory(dir, 'the images directory', ({ real, stats, at }) => {
    const warnings: string[] = [];
    if (stats.mode & 0o077) {
      const mode = (stats.mode & 0o777).toString(8).padStart(4, '0');
      const why = `the images directory ${dir} is open to group or others (mode ${mode}), and the images will hold the memory of the tree, its secrets included`;
      if (!allowShared) throw new TreeStateError('EIMAGES', `${why}: make it private (chmod 700 ${dir}), or allow it explicitly (allowSharedDir, --allow-shared-dir)`);
      warnings.push(`${why}; used as asked (allowSharedDir)`);
    }
    // access(2) answers EROFS on a read-only file system, even to root.
    try {
      accessSync(real, constants.W_OK);
    } catch (e) {
      throw new TreeStateError('EIMAGES', `the images directory ${dir} is not writable: ${(e as Error).message}`, { cause: e });
    }
    const images = imagesIn(at);
    if (images.length > 0) {
      throw new TreeStateError('EIMAGES', `the images directory ${dir} already holds ${images.length} images (${images.slice(0, 3).join(', ')}…); treestate never overwrites or deletes images: use an empty directory`);
    }
    return { dir: real, warnings };
  });
}

/**
 * Images to read (a restore, or the previous images of an iterative dump):
 * every file must be a regular file the caller owns and no one else may
 * write to, and so must the images of the `parent` link criu leaves in the
 * directory of an iterative dump. Returns the directory's real path.
 */
export function checkImagesDir(dir: string, what: string, seen = new Set<string>()): string {
  return withOwnDirectory(dir, what, ({ real, at }) => {
    const top = seen.size === 0;
    if (seen.has(real)) return real;
    seen.add(real);
    const names = readdirSync(at);
    if (top && !names.includes('inventory.img')) throw new TreeStateError('EIMAGES', `${what} ${dir} holds no CRIU images (no inventory.img)`);
    for (const name of names) {
      const path = join(real, name);
      const st = lstatSync(join(at, name));
      if (st.isSymbolicLink() && name === 'parent') {
        checkImagesDir(resolve(real, readlinkSync(join(at, name))), `the parent images of ${real}`, seen);
        continue;
      }
      const problem = st.isFile() ? componentProblem(path, st, [euid()], false) : new UntrustedPath(path, `${path} is not a regular file`);
      if (problem) throw new TreeStateError('EIMAGES', `refusing ${what} ${dir}: ${problem.message}. ${IMAGES_ARE_CODE}`, { details: { path }, cause: problem });
    }
    return real;
  });
}

/**
 * criu's log and the `.out` file beside it: in a directory the caller owns,
 * and, if they exist, regular files of the caller (criu truncates its log,
 * and would follow a symlink planted there). Returns the log's real path.
 */
export function checkLogFile(logFile: string): string {
  const dir = withOwnDirectory(dirname(resolve(logFile)), "the log file's directory", ({ real }) => real);
  const log = join(dir, basename(logFile));
  for (const path of [log, `${log}.out`]) {
    let st: Stats;
    try {
      st = lstatSync(path);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') continue;
      throw e;
    }
    const problem = st.isFile() ? componentProblem(path, st, [euid()], false) : new UntrustedPath(path, `${path} exists and is not a regular file`);
    if (problem) throw new TreeStateError('EIMAGES', `refusing the log file ${logFile}: ${problem.message}`, { details: { path }, cause: problem });
  }
  return log;
}
