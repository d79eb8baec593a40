// One native pass over a tree (native/walk.cc), the errors its failures
// become, and the test seam that sees every pass. Every look at a tree and
// every signal to one goes through walkTree (or, for processes known from
// an earlier pass, signalList); the transitions ask for them through their
// pass driver (src/passes.ts).
import { constants as osConstants } from 'node:os';
import { TreeStateError, describePids, hasCode } from './errors.js';
import { native, type Identity, type NativeFailure, type NativeSignalListResult, type NativeWalkCache, type NativeWalkOptions, type NativeWalkResult } from './native.js';

/**
 * Sees each native pass, before the operation that asked for it does: the
 * way a test makes something happen between two passes (a real event,
 * deterministically placed, instead of a race). Installed with
 * `observePasses` (exported by treestate/testing).
 */
export interface PassObserver {
  /** Before each native pass is asked for. */
  beforePass?(request: NativeWalkOptions): void | Promise<void>;
  afterPass?(pass: NativeWalkResult, request: NativeWalkOptions): void | Promise<void>;
  /** After each signal to processes known from an earlier pass (a stop's rollback, a continue's settle). */
  afterSignalList?(outcome: NativeSignalListResult, request: { targets: Identity[]; signal: number }): void | Promise<void>;
  /**
   * Whether the verifying pass a continue asks for in the same native call
   * (`verify`) is asked for as a call of its own, so that `afterPass` runs
   * between the two passes as well. Default true; false keeps the
   * operation's native calls as they are (to count them).
   */
  separateVerify?: boolean;
}

let observer: PassObserver | undefined;

/**
 * Test seam: `observer` sees every pass until the returned function is
 * called (one observer at a time). Not for production use: it slows every
 * pass by a turn of the event loop.
 */
export function observePasses(next: PassObserver): () => void {
  if (observer) throw new Error('treestate: observePasses: an observer is installed already');
  observer = next;
  return () => {
    if (observer === next) observer = undefined;
  };
}

/**
 * One native pass; a root that does not exist becomes our ESRCH error, one
 * that cannot be read (EMFILE, EACCES …) a TreeStateError with that code. A
 * pass that only looks and could not read some process fails as a whole: a
 * tree it read in part is not the tree. (A pass that signals returns such
 * failures with what it signalled, for the transition to undo.)
 */
export async function walkTree(options: NativeWalkOptions): Promise<NativeWalkResult> {
  const watching = observer;
  const request = watching && watching.separateVerify !== false ? { ...options, verify: undefined } : options;
  if (watching?.beforePass) await watching.beforePass(request);
  let result: NativeWalkResult;
  try {
    result = await native().walk(request);
  } catch (e) {
    throw walkError(e, options);
  }
  if (watching?.afterPass) await watching.afterPass(result, request);
  const root = result.processes[0];
  if (root?.kernelThread) {
    throw new TreeStateError('EREFUSED', `refusing pid ${options.root}: it is a kernel thread (${root.comm})`, { pid: options.root });
  }
  if ((options.kind ?? 'look') === 'look' && result.failures.length > 0) throw failureError(result.failures, 'read');
  return result;
}

/** Signals processes known from an earlier pass, each by identity, every thread of each (native/walk.cc, SignalList). */
export async function signalList(targets: Identity[], signal: number, protect: number[]): Promise<NativeSignalListResult> {
  const watching = observer;
  const outcome = await native().signalList(targets, signal, true, protect);
  if (watching?.afterSignalList) await watching.afterSignalList(outcome, { targets, signal });
  return outcome;
}

/** What a pass that could not start (its root unreadable, gone, or a thread) rejects with. */
function walkError(e: unknown, options: NativeWalkOptions): unknown {
  const tgid = (e as { tgid?: unknown }).tgid;
  if (hasCode(e, 'EINVAL_PID') && typeof tgid === 'number') return threadError(options.root, tgid, options.protect ?? []);
  if (hasCode(e, 'ESRCH') && !(e instanceof TreeStateError)) {
    return new TreeStateError('ESRCH', `no such process: ${options.root}`, { pid: options.root, errno: -osConstants.errno.ESRCH, syscall: 'open', cause: e });
  }
  const f = e as Partial<NativeFailure>;
  if (typeof f.code === 'string' && typeof f.errno === 'number') {
    return new TreeStateError(f.code, `cannot read process ${options.root}: ${reason(f)}`, { pid: options.root, errno: f.errno, syscall: f.syscall, cause: e });
  }
  return e;
}

/**
 * The pid given names a thread, not a process: /proc/TID opens, and a signal
 * through it reaches the whole process, so it is refused rather than taken
 * for the process. Threads of what is never signalled are refused as it is.
 */
function threadError(pid: number, tgid: number, protect: number[]): TreeStateError {
  if (tgid === 1) return new TreeStateError('EREFUSED', `refusing pid ${pid}: it is a thread of pid 1, whose tree is the whole system`, { pid });
  if (protect.includes(tgid)) {
    const who = tgid === process.pid ? 'treestate itself' : 'an ancestor of treestate';
    return new TreeStateError('EREFUSED', `refusing pid ${pid}: it is a thread of process ${tgid}, ${who}`, { pid });
  }
  return new TreeStateError('EINVAL_PID', `${pid} is a thread of process ${tgid}, not a process; name the process`, { pid, details: { tgid } });
}

/**
 * "too many open files (EMFILE)": the errno's own words (the native error's
 * description), then its code. EPERM from open names a process that is alive
 * but that /proc will not show this user (hidepid), not one that is gone.
 */
export function reason(f: Partial<NativeFailure>): string {
  const words = f.description || 'failed';
  const hidden = f.code === 'EPERM' && f.syscall === 'open' ? ': alive, but /proc does not let this user read it (hidepid)' : '';
  return `${words.charAt(0).toLowerCase()}${words.slice(1)} (${f.code})${hidden}`;
}

/**
 * The one error built from a pass's failures. Refusals first (what must
 * never be signalled), then reads (the tree it saw is incomplete), then the
 * signals that failed (EPERM …). `verb` is what the pass was doing (stop,
 * continue, kill; read for a look); `extra` ends the message (what was undone).
 */
export function failureError(failures: NativeFailure[], verb: string, extra = ''): TreeStateError {
  const refused = failures.filter((f) => f.code === 'EREFUSED');
  if (refused.length > 0) {
    const pids = refused.map((f) => f.pid);
    return new TreeStateError('EREFUSED', `refusing to ${verb} ${describePids(pids)}: pid 1, a kernel thread or treestate's own ancestry${extra}`, { pids, pid: pids[0] });
  }
  const reads = failures.filter((f) => f.syscall !== 'pidfd_send_signal');
  const first = (reads.length > 0 ? reads : failures)[0]!;
  const pids = (reads.length > 0 ? reads : failures).filter((f) => f.code === first.code).map((f) => f.pid);
  const fields = { pids, pid: pids[0], errno: first.errno, syscall: first.syscall };
  if (reads.length > 0) {
    return new TreeStateError(first.code, `cannot read ${pids.length === 1 ? 'process' : 'processes'} ${describePids(pids)}: ${reason(first)}; the tree was not read whole${extra}`, fields);
  }
  const why = first.code === 'EPERM' ? 'operation not permitted' : first.message;
  return new TreeStateError(first.code, `cannot ${verb} ${pids.length === 1 ? 'pid' : 'pids'} ${describePids(pids)} (${first.code}: ${why})${extra}`, fields);
}

/** `e` with `note` added to its message, every other field kept (what a failed transition undid). */
export function withNote(e: TreeStateError, note: string): TreeStateError {
  const { code, pid, pids, threads, errno, syscall, details } = e;
  return new TreeStateError(code, `${e.message}${note}`, { pid, pids, threads, errno, syscall, details, cause: e });
}

/**
 * The walk cache of one operation's passes: each pass reads the tree's /proc
 * files through descriptors kept open by the pass before (one pread each
 * instead of open, read, close). `using` releases it when the operation
 * ends, whatever its outcome; `release()` closes the files sooner and says
 * when they are closed (a rollback wants every descriptor it can get).
 */
export function walkCache(): { handle: NativeWalkCache; release(): Promise<void> } & Disposable {
  const handle = native().createWalkCache();
  const release = () => native().releaseWalkCache(handle);
  return { handle, release, [Symbol.dispose]: () => void release() };
}
