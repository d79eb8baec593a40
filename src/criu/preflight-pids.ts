// Before a restore: criu gives every process and thread back its own pid
// (clone3 with set_tid), and fails with "Can't fork for PID: File exists"
// when one is taken. The commonest holder is the dumped tree's own zombie
// right after a kill whose parent is init, which reaps only every few
// seconds: wait for those, bounded, and name any other holder at once.
import { TreeStateError, describePids, hasCode } from '../errors.js';
import { snapshot } from '../tree.js';
import type { Checkpoint } from './images/read.js';

/** What holds a pid the images need. */
export interface PidHolder {
  /** The pid the images need. */
  pid: number;
  /** The process holding it (the same pid, or the process of which it is a thread). */
  process: number;
  comm: string;
  ppid: number;
  zombie: boolean;
}

/** How long a zombie holding a needed pid may take to be reaped (init reaps every few seconds). */
export const ZOMBIE_WAIT_MS = 5000;
const POLL_MS = 20;

async function holderOf(pid: number): Promise<PidHolder | undefined> {
  try {
    const root = (await snapshot(pid)).processes[0]!;
    return { pid, process: root.pid, comm: root.comm, ppid: root.ppid, zombie: root.state === 'dead' };
  } catch (e) {
    // EINVAL_PID: a number no process can have, so none holds it.
    if (hasCode(e, 'ESRCH', 'EINVAL_PID')) return undefined;
    // pid 1, a kernel thread: taken, and never by a zombie.
    if (hasCode(e, 'EREFUSED')) return { pid, process: pid, comm: (e as Error).message, ppid: 0, zombie: false };
    throw e;
  }
}

function describeHolder(h: PidHolder): string {
  const what = h.zombie ? 'a zombie' : 'process';
  const thread = h.process === h.pid ? '' : ` (a thread of ${h.process})`;
  return `${h.pid}${thread} is held by ${what} "${h.comm}" whose parent is ${h.ppid}`;
}

/**
 * Resolves once every pid and thread id of the checkpoint (read by readCheckpoint) is
 * free on this host, waiting up to `zombieWaitMs` for zombies to be reaped;
 * otherwise rejects with EPIDTAKEN naming each holder and its parent.
 */
export async function waitForImagePids(checkpoint: Checkpoint, options: { zombieWaitMs?: number; onWait?: (zombies: PidHolder[]) => void } = {}): Promise<void> {
  let needed = checkpoint.processes.flatMap((p) => p.threads);
  const deadline = performance.now() + (options.zombieWaitMs ?? ZOMBIE_WAIT_MS);
  let announced = false;
  for (;;) {
    const held = (await Promise.all(needed.map(holderOf))).filter((h): h is PidHolder => h !== undefined);
    if (held.length === 0) return;
    const live = held.filter((h) => !h.zombie);
    if (live.length > 0 || performance.now() >= deadline) {
      const why = live.length > 0 ? '' : ` (zombies their parents did not reap within ${options.zombieWaitMs ?? ZOMBIE_WAIT_MS} ms)`;
      throw new TreeStateError(
        'EPIDTAKEN',
        `cannot restore: the checkpoint needs pid${held.length === 1 ? '' : 's'} ${describePids(held.map((h) => h.pid))} and ${held.length === 1 ? 'it is' : 'they are'} taken${why}: ${held.map(describeHolder).join('; ')}. ` +
          'criu gives every process its own pid back: end the holder (or have its parent reap it) and restore again, or restore into a new pid namespace (--pid-ns new), where they are free',
        { pids: held.map((h) => h.pid), details: { holders: held } },
      );
    }
    if (!announced) options.onWait?.(held);
    announced = true;
    needed = held.map((h) => h.pid);
    await new Promise((r) => setTimeout(r, POLL_MS));
  }
}
