// The cgroup v2 hierarchy and treestate's own directory in it. A tree that
// `run` started lives in `<cgroup2 mount>/treestate/<name>`: a cgroup made
// for it alone, which is what makes freezing and killing it whole safe.
import { lstatSync, mkdirSync, readFileSync, readdirSync, watch, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { TreeStateError, hasCode } from '../errors.js';
import { native } from '../native.js';

/** The directory under the cgroup2 mount that holds the cgroups of `run` trees. */
export const RUN_DIR = 'treestate';

export interface Hierarchy {
  /** Where cgroup2 is mounted (found in /proc/self/mountinfo). */
  mount: string;
  /** The hierarchy path mounted there: "/" unless it is a bind mount of a sub-tree. */
  root: string;
}

let known: Hierarchy | null | undefined;

/** The cgroup v2 hierarchy, or null where none is mounted. */
export function findHierarchy(): Hierarchy | null {
  if (known === undefined) {
    const m = native().cgroup2Mount();
    known = m && { mount: m.path, root: m.root };
  }
  return known;
}

export function requireHierarchy(): Hierarchy {
  const h = findHierarchy();
  if (!h) throw new TreeStateError('ECGROUP', 'no cgroup v2 hierarchy is mounted (no cgroup2 line in /proc/self/mountinfo): run needs one');
  return h;
}

/** `<mount>/treestate`. */
export function runDir(h: Hierarchy): string {
  return join(h.mount, RUN_DIR);
}

/**
 * Makes `<mount>/treestate` (0755) if it is missing, and refuses one that is
 * not a real directory owned by root or by us: cgroups below someone else's
 * directory are not treestate's to freeze or kill.
 */
export function ensureRunDir(h: Hierarchy): string {
  const dir = runDir(h);
  try {
    mkdirSync(dir, { mode: 0o755 });
  } catch (e) {
    if (hasCode(e, 'EACCES', 'EPERM', 'EROFS')) {
      throw new TreeStateError('ECGROUP', `cannot create ${dir}: the cgroup v2 hierarchy at ${h.mount} is not writable (${(e as NodeJS.ErrnoException).code}); run needs root or a delegated hierarchy`, { cause: e });
    }
    if (!hasCode(e, 'EEXIST')) throw new TreeStateError('ECGROUP', `cannot create ${dir}: ${(e as Error).message}`, { cause: e });
  }
  checkRunDir(dir);
  return dir;
}

function checkRunDir(dir: string): void {
  const st = lstatSync(dir);
  const euid = process.geteuid?.() ?? 0;
  if (!st.isDirectory() || (st.uid !== 0 && st.uid !== euid)) {
    throw new TreeStateError('ECGROUP', `refusing ${dir}: it is not a directory owned by root or by uid ${euid}, so its cgroups are not treestate's`);
  }
}

/** The absolute path of a cgroup given relative to the hierarchy's root, or null when it is outside the mounted part. */
export function cgroupPath(h: Hierarchy, relative: string): string | null {
  const root = h.root === '/' ? '' : h.root;
  if (root && relative !== root && !relative.startsWith(`${root}/`)) return null;
  return join(h.mount, relative.slice(root.length));
}

/** The absolute path of the process's cgroup v2, or null (no hierarchy, or outside its mounted part). */
export function cgroupOfPid(pid: number): string | null {
  const h = findHierarchy();
  if (!h) return null;
  let relative: string | null;
  try {
    relative = native().cgroupOf(pid);
  } catch (e) {
    if (hasCode(e, 'ESRCH')) throw new TreeStateError('ESRCH', `no such process: ${pid}`, { pid, cause: e });
    throw e;
  }
  return relative === null ? null : cgroupPath(h, relative);
}

/**
 * The cgroup of a `run` tree that `pid` is in: `<mount>/treestate/<name>`
 * under a run directory owned by root or by us. Null for any other cgroup.
 */
export function runCgroupOf(pid: number): string | null {
  const h = findHierarchy();
  const path = cgroupOfPid(pid);
  if (!h || !path || dirname(path) !== runDir(h)) return null;
  try {
    checkRunDir(runDir(h));
  } catch {
    return null;
  }
  return path;
}

/**
 * A file of a cgroup. A cgroup removed between the open and the read (the
 * run helper removes its cgroup once empty) fails the read with ENODEV:
 * that is ENOENT here, a cgroup that is gone, as for an open after the removal.
 */
function readCgroupFile(cgroup: string, file: string): string {
  try {
    return readFileSync(join(cgroup, file), 'utf8');
  } catch (e) {
    if (!hasCode(e, 'ENODEV')) throw e;
    throw Object.assign(new Error(`ENOENT: ${cgroup} was removed while ${file} was read`), { code: 'ENOENT', cause: e });
  }
}

/** cgroup.events as numbers: `populated`, `frozen`. */
export function readEvents(cgroup: string): Record<string, number> {
  const out: Record<string, number> = {};
  for (const line of readCgroupFile(cgroup, 'cgroup.events').split('\n')) {
    const [key, value] = line.split(' ');
    if (key) out[key] = Number(value);
  }
  return out;
}

/** Writes one of the cgroup's control files (cgroup.freeze, cgroup.kill). */
export function writeControl(cgroup: string, file: string, value: string): void {
  try {
    writeFileSync(join(cgroup, file), value);
  } catch (e) {
    throw new TreeStateError('ECGROUP', `cannot write ${value} to ${join(cgroup, file)}: ${(e as Error).message}`, { cause: e });
  }
}

/** Every process in the cgroup and the cgroups below it. */
export function cgroupMembers(cgroup: string): number[] {
  const pids = readCgroupFile(cgroup, 'cgroup.procs').split('\n').filter(Boolean).map(Number);
  for (const entry of readdirSync(cgroup, { withFileTypes: true })) {
    if (entry.isDirectory()) pids.push(...cgroupMembers(join(cgroup, entry.name)));
  }
  return pids;
}

/**
 * Resolves true once cgroup.events shows `key value`, false after
 * `timeoutMs`. The kernel signals every change of the file as a modification
 * (kernfs_notify), which inotify sees; the short timer covers a notification
 * that comes between our read and the watch.
 */
export async function waitEvent(cgroup: string, key: string, value: number, timeoutMs: number): Promise<boolean> {
  const deadline = performance.now() + timeoutMs;
  const reached = () => {
    try {
      return readEvents(cgroup)[key] === value;
    } catch (e) {
      // Removed: the run helper removes the cgroup once it is empty.
      if (hasCode(e, 'ENOENT') && key === 'populated' && value === 0) return true;
      throw e;
    }
  };
  if (reached()) return true;
  let wake: (() => void) | undefined;
  let watcher: ReturnType<typeof watch>;
  try {
    watcher = watch(join(cgroup, 'cgroup.events'), () => wake?.());
  } catch (e) {
    // Removed between the read and the watch: reached() says what that means.
    if (hasCode(e, 'ENOENT')) return reached();
    throw e;
  }
  watcher.on('error', () => wake?.());
  try {
    for (;;) {
      const left = deadline - performance.now();
      if (left <= 0) return reached();
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, Math.min(left, 20));
        wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      if (reached()) return true;
    }
  } finally {
    watcher.close();
  }
}
