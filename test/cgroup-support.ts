// Shared bits of the cgroup tests: where run trees live, and the check that
// a test leaves nothing in the cgroup hierarchy.
import { existsSync, readdirSync, readFileSync, rmdirSync } from 'node:fs';
import { join } from 'node:path';
import { findHierarchy, runDir } from '../src/cgroup/hierarchy.js';

/** `<cgroup2 mount>/treestate`. */
export function runCgroupsDir(): string {
  const h = findHierarchy();
  if (!h) throw new Error('these tests need a cgroup v2 hierarchy');
  return runDir(h);
}

function runCgroups(): string[] {
  const dir = runCgroupsDir();
  return existsSync(dir) ? readdirSync(dir, { withFileTypes: true }).filter((e) => e.isDirectory()).map((e) => e.name) : [];
}

/**
 * Fails a test that leaves a run cgroup behind, and removes the run
 * directory after the file when it was not there before.
 */
export function leaveNoCgroups(): void {
  let existed = false;
  let earlier: string[] = [];
  before(() => {
    existed = existsSync(runCgroupsDir());
  });
  beforeEach(() => {
    earlier = runCgroups();
  });
  afterEach(() => {
    const left = runCgroups().filter((n) => !earlier.includes(n));
    for (const name of left) {
      try {
        rmdirSync(join(runCgroupsDir(), name));
      } catch {
        // still populated: the failure below names it
      }
    }
    if (left.length > 0) throw new Error(`the test left cgroups behind: ${left.join(', ')}`);
  });
  after(() => {
    if (!existed && existsSync(runCgroupsDir())) rmdirSync(runCgroupsDir());
  });
}

/** The pids of a cgroup, read straight from cgroup.procs; none once the run helper has removed it. */
export function procsOf(cgroup: string): number[] {
  let text: string;
  try {
    text = readFileSync(join(cgroup, 'cgroup.procs'), 'utf8');
  } catch (e) {
    // Removed between a check for it and this read: empty, as it had to be.
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw e;
  }
  return text.split('\n').filter(Boolean).map(Number);
}

/** The state letters of every thread of `pid`, straight from /proc (empty once it is gone). */
export function threadLetters(pid: number): string[] {
  let tids: string[];
  try {
    tids = readdirSync(`/proc/${pid}/task`);
  } catch {
    return [];
  }
  const out: string[] = [];
  for (const tid of tids) {
    try {
      const stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
      out.push(stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3));
    } catch {
      // exited between the listing and the read
    }
  }
  return out;
}
