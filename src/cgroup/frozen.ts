// Whether a tree is Frozen: the one look at the freezer that status, stop
// and continue need, kept apart from src/cgroup/tree.ts (which reads trees
// through src/tree.ts, itself a user of this file).
import { TreeStateError, hasCode } from '../errors.js';
import { readEvents, runCgroupOf } from './hierarchy.js';

/** The run cgroup of the tree of `root` when the freezer holds it, else null: what `status` reports as frozen. */
export function frozenCgroupOf(root: number): string | null {
  let cgroup: string | null;
  try {
    cgroup = runCgroupOf(root);
    return cgroup && readEvents(cgroup).frozen === 1 ? cgroup : null;
  } catch (e) {
    if (hasCode(e, 'ESRCH', 'ENOENT')) return null;
    throw e;
  }
}

/**
 * Stop and continue act through signals, which a frozen tree cannot take
 * until it is thawed: refuse them instead of timing out on a state the
 * signals cannot bring.
 */
export function refuseFrozen(root: number, verb: 'stop' | 'continue'): void {
  const cgroup = frozenCgroupOf(root);
  if (cgroup) {
    throw new TreeStateError('EFROZEN', `cannot ${verb} ${root}: the tree is frozen (${cgroup}); thaw it first (treestate thaw ${root})`, { pid: root });
  }
}

