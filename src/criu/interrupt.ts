// Stopping a criu that ran past its timeout. criu (4.1 up to 4.2 at least)
// has no handler for SIGTERM or SIGINT: either kills it outright, and a dump
// killed while its parasite is inside the tree leaves that parasite mapped in
// the processes (`/memfd:CRIUMFD (deleted)`, ~2.5 MB, one more per retry).
// What criu does handle, from the moment a dump or pre-dump starts collecting
// the tree, is SIGALRM, its own timeout signal (criu/cr-dump.c,
// alarm_handler): it interrupts the syscall criu waits in, re-arms itself
// every second up to five times and then gives up with BUG(). Interrupted,
// criu either fails on its error path, which cures the parasite and resumes
// the tree, or finishes the dump. So: SIGALRM, a grace period covering
// criu's five rounds, and only then the kill.
// SIGALRM goes only to a criu that catches it. Before it sets the handler
// criu has not touched the tree, but it may have children (its kernel
// probes fork some and stop them): the signal would kill criu alone and
// orphan them, where the kill takes criu's whole tree. A restore never sets
// the handler, and is killed at once with what it restored.
import { constants as osConstants } from 'node:os';
import { native } from '../native.js';
import { killTree } from '../transitions.js';
import type { CriuVerb } from './checkpoint.js';
import type { RunningCommand } from './runner.js';

/** criu's alarm handler re-arms 5 times at 1 s: past this, it can only crash. */
export const INTERRUPT_GRACE_MS = 6500;

export interface CriuStop {
  /** `interrupted`: criu, catching SIGALRM, ended within the grace period after it; `killed`: it was killed with what it had started. */
  how: 'interrupted' | 'killed';
  /** Processes criu had started, killed with it. */
  killed: number[];
}

/**
 * Kills criu with every process it has started: a restore cut short has
 * restored processes that are still criu's children, and a bare SIGKILL to
 * criu would leave them to run on, orphaned and unreported.
 */
async function killCriu(pid: number): Promise<number[]> {
  try {
    const result = await killTree(pid, { timeoutMs: 5000 });
    return result.exited.filter((p) => p !== pid);
  } catch {
    try {
      process.kill(pid, 'SIGKILL'); // criu is our own child
    } catch {
      // already gone
    }
    return [];
  }
}

/** Stops a criu that overran its timeout, letting a dump or pre-dump clean up first. */
export async function stopCriu(verb: CriuVerb, running: RunningCommand, graceMs = INTERRUPT_GRACE_MS): Promise<CriuStop> {
  if (verb !== 'restore' && native().catchesSignal(running.pid, osConstants.signals.SIGALRM)) {
    try {
      process.kill(running.pid, 'SIGALRM');
    } catch {
      return { how: 'interrupted', killed: [] }; // gone meanwhile
    }
    let timer: NodeJS.Timeout | undefined;
    const grace = new Promise<undefined>((r) => (timer = setTimeout(() => r(undefined), graceMs)));
    const exit = await Promise.race([running.exited, grace]).finally(() => clearTimeout(timer));
    if (exit) return { how: 'interrupted', killed: [] };
  }
  return { how: 'killed', killed: await killCriu(running.pid) };
}
