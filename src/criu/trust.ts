// Whether a path can be changed by someone the caller does not trust. As
// root, treestate runs criu, creates images and logs, and restores images
// (CRIU images are executable code): a file, or any directory on its way from
// /, that another user owns or may write to lets that user swap it for their
// own (a program root runs, a symlink root writes through, an image root
// restores). Each component is checked with lstat, and a symlink is followed
// only after the directory holding it passed, so the real path is checked too.
import { lstatSync, readlinkSync, type Stats } from 'node:fs';
import { dirname, join, resolve } from 'node:path';

export interface TrustRule {
  /** Who may own each component (the file itself and every directory above it). */
  owners: readonly number[];
  /**
   * Whether a directory writable by others is acceptable on the way when it
   * is sticky (as /tmp): there only an entry's owner can rename or remove it,
   * and the entries below are checked themselves.
   */
  stickyDirs: boolean;
  /** Whether the last component may be a symlink (followed like the others). */
  followLast: boolean;
}

export interface WalkedPath {
  /** The path with every symlink resolved; when the tail does not exist, it ends in the names not found. */
  real: string;
  /** lstat of the last component, undefined when it does not exist. */
  stats?: Stats;
}

/** A component someone else could change: `reason` names it, says why and how to fix it. */
export class UntrustedPath extends Error {
  constructor(
    readonly path: string,
    reason: string,
  ) {
    super(reason);
  }
}

const MAX_SYMLINKS = 40; // as the kernel's path walk

function ownerText(owners: readonly number[]): string {
  return [...new Set(owners)].map((u) => (u === 0 ? 'root' : `uid ${u}`)).join(' or ');
}

function modeText(st: Stats): string {
  return (st.mode & 0o7777).toString(8).padStart(4, '0');
}

/** Why one component breaks the rule (owner, then write access), or undefined. */
export function componentProblem(path: string, st: Stats, owners: readonly number[], stickyDirs: boolean): UntrustedPath | undefined {
  if (!owners.includes(st.uid)) {
    const to = owners[owners.length - 1];
    return new UntrustedPath(path, `${path} belongs to uid ${st.uid}, not to ${ownerText(owners)} (fix: chown ${to === 0 ? 'root' : to} ${path}, or use another path)`);
  }
  const writable = st.mode & 0o022;
  if (writable && !(stickyDirs && st.isDirectory() && st.mode & 0o1000)) {
    const who = writable === 0o022 ? 'its group and others' : writable & 0o020 ? 'its group' : 'others';
    return new UntrustedPath(path, `${path} is writable by ${who} (mode ${modeText(st)}; fix: chmod go-w ${path})`);
  }
  return undefined;
}

/**
 * Walks `path` from / and returns its real path, or throws UntrustedPath for
 * the first component (directory, symlink target, the file itself) that
 * breaks `rule`. A missing tail is not an error: the caller decides.
 */
export function walkTrusted(path: string, rule: TrustRule): WalkedPath {
  const pending = resolve(path).split('/').filter(Boolean);
  let real = '/';
  let stats: Stats | undefined = lstatSync('/');
  const check = (at: string, st: Stats) => {
    const problem = componentProblem(at, st, rule.owners, rule.stickyDirs);
    if (problem) throw problem;
  };
  check(real, stats);
  let links = 0;
  while (pending.length > 0) {
    const name = pending.shift()!;
    if (name === '.') continue;
    if (name === '..') {
      real = dirname(real); // a prefix of a path already checked
      stats = lstatSync(real);
      continue;
    }
    const next = join(real, name);
    try {
      stats = lstatSync(next);
    } catch (e) {
      if (!['ENOENT', 'ENOTDIR'].includes((e as NodeJS.ErrnoException).code ?? '')) throw e;
      return { real: join(next, ...pending), stats: undefined };
    }
    if (stats.isSymbolicLink()) {
      // The link sits in `real`, which passed: whoever made it could change
      // that directory anyway, unless it is a sticky one others may write to,
      // where anyone can add a link of their own. Its target is walked like
      // the rest.
      if (!rule.owners.includes(stats.uid) && lstatSync(real).mode & 0o002) {
        throw new UntrustedPath(next, `${next} is a symbolic link of uid ${stats.uid} in a directory others can write to (fix: use the path it leads to, after checking it)`);
      }
      if (pending.length === 0 && !rule.followLast) throw new UntrustedPath(next, `${next} is a symbolic link (give the real path, after checking where it leads)`);
      if (++links > MAX_SYMLINKS) throw new UntrustedPath(next, `${next}: too many levels of symbolic links`);
      const target = readlinkSync(next);
      if (target.startsWith('/')) real = '/';
      pending.unshift(...target.split('/').filter(Boolean));
      continue;
    }
    check(next, stats);
    real = next;
  }
  return { real, stats };
}
