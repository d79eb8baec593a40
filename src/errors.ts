// The errors treestate throws: one class, a small set of stable codes.

import type { constants } from 'node:os';
import type { NativeThread } from './native.js';

/**
 * A system error the kernel gave while treestate read or signalled a
 * process (EMFILE, ENOMEM, EACCES …): an errno's name, as Node's own system
 * errors carry it. Closed: the errno names Node knows.
 */
export type SystemErrorCode = keyof typeof constants.errno;

/** Every code treestate's own errors carry (the README's table), or a system error's. */
export type ErrorCode =
  | 'EINVAL_PID' // not a positive integer pid
  | 'EREFUSED' // pid 1, a kernel thread, or a tree holding treestate itself
  | 'ESRCH' // no such process
  | 'EPERM' // not allowed to signal some process
  | 'ETIMEDOUT' // the tree did not reach the state in time
  | 'ENOTSETTLED' // the tree kept forking new processes
  | 'ETRACED' // threads in ptrace-stop that SIGCONT cannot resume
  | 'EVFORK' // a stop of a tree in which a parent waits in vfork for a stopped child
  | 'EESCAPED' // a kill could not prove every process of the tree dead
  | 'EINVAL' // a bad option
  | 'ENOCRIU' // no working criu
  | 'EUNTRUSTED' // as root, a criu that someone other than root could change
  | 'ECRIU' // criu failed
  | 'EIMAGES' // an images directory that cannot be used, or an image that does not decode
  | 'EPIDTAKEN' // a pid the checkpoint needs is taken on this host
  | 'ENODIRTYTRACK' // pre-dump on a kernel without dirty-memory tracking
  | 'EHOOK' // a CRIU notification hook threw or rejected
  | 'EMISMATCH' // the tree is not in the state criu should have left it in
  | 'EVERIFY' // images that do not restore (dump --verify, verifyImages)
  | 'EMIGRATE' // a migration that failed (the phase is named; the source runs on)
  | 'ECGROUP' // no writable cgroup v2 hierarchy, or a cgroup file that cannot be written
  | 'ENOCGROUP' // the tree does not own a cgroup (freeze, thaw: only for `run` trees)
  | 'EFROZEN' // stop or continue of a frozen tree: thaw it first
  | 'ESPAWN' // a program that could not be started (treestate/testing's reaper, run)
  | 'ELEAK' // treestate/testing: a test left a process or a supervised tree behind
  | 'ENOTAWAITED' // treestate/testing: a test did not await a chai tree assertion
  | SystemErrorCode;

/** A thread named in an error or a status: the thread record, with its process. */
export interface ThreadRef extends NativeThread {
  pid: number;
}

export class TreeStateError extends Error {
  readonly code: ErrorCode;
  /** The process the operation was about. */
  readonly pid?: number;
  /** The processes the error concerns (EPERM, EREFUSED, ETIMEDOUT …). */
  readonly pids: number[];
  /** Threads in the wrong state (ETIMEDOUT, ETRACED, EMISMATCH). */
  readonly threads: ThreadRef[];
  readonly errno?: number;
  readonly syscall?: string;
  /** What the operation did before it failed, when that matters (a rollback, a partial result). */
  readonly details?: Record<string, unknown>;

  constructor(
    code: ErrorCode,
    message: string,
    extra: { pid?: number; pids?: number[]; threads?: ThreadRef[]; errno?: number; syscall?: string; details?: Record<string, unknown>; cause?: unknown } = {},
  ) {
    super(message, extra.cause === undefined ? undefined : { cause: extra.cause });
    this.name = 'TreeStateError';
    this.code = code;
    this.pid = extra.pid;
    this.pids = extra.pids ?? [];
    this.threads = extra.threads ?? [];
    this.errno = extra.errno;
    this.syscall = extra.syscall;
    this.details = extra.details;
  }
}

/** Whether `e` is an error with the given code (ours or a native one). */
export function hasCode(e: unknown, ...codes: string[]): boolean {
  return typeof e === 'object' && e !== null && codes.includes((e as { code?: string }).code ?? '');
}

export function describeThreads(threads: ThreadRef[], limit = 8): string {
  const shown = threads.slice(0, limit).map((t) => {
    const who = t.tid === t.pid ? `pid ${t.pid}` : `pid ${t.pid} thread ${t.tid}`;
    return t.tracerPid ? `${who} (${t.state}, traced by ${t.tracerPid})` : `${who} (${t.state})`;
  });
  const more = threads.length > limit ? ` and ${threads.length - limit} more` : '';
  return shown.join(', ') + more;
}

/** `1 pass`, `2 passes`: a count with its noun. */
export function plural(count: number, one: string, many = /(s|sh|ch|x)$/.test(one) ? `${one}es` : `${one}s`): string {
  return `${count} ${count === 1 ? one : many}`;
}

export function describePids(pids: Array<number | string>, limit = 12): string {
  const more = pids.length > limit ? ` and ${pids.length - limit} more` : '';
  return pids.slice(0, limit).join(', ') + more;
}
