// Moving a tree between Running, Stopped and Dead. Policy lives here (order,
// passes, verification, rollback, timeouts); every look at the tree and every
// signal is one native pass (see native/walk.cc).
import { TreeStateError, describePids, describeThreads, hasCode, plural, type ErrorCode, type ThreadRef } from './errors.js';
import { refuseFrozen } from './cgroup/frozen.js';
import { killOwnedTree, ownedCgroup } from './cgroup/tree.js';
import { native, type Identity, type NativeFailure, type NativeWalkResult } from './native.js';
import { DURATION, wholeNumber } from './options.js';
import { Passes, backoff, checkTarget, pause, type PassTally } from './passes.js';
import { recordContinue, recordOf, recordStop, recordsFor, removeRecords } from './stop-records.js';
import { anyLiveThread, checkPid, classify, identitiesOf, refuseDeadRoot, liveThreads, pidsOf, processState, toProcessInfo, withFrozen, withKept, type TreeState, type TreeStatus, type WalkOptions } from './tree.js';
import { failureError, withNote } from './walk.js';

export interface TransitionOptions extends WalkOptions {
  /** How long the tree may take to reach the state (default 10 000 ms). */
  timeoutMs?: number;
}

export interface StopOptions extends TransitionOptions {
  /** Passes that may still find new processes before the tree counts as never settling (default 100). */
  maxPasses?: number;
}

/** What a transition did: the pass driver's tally (src/passes.ts), and what the policy adds. */
export interface TransitionResult extends PassTally {
  /** Continue only: the settle looks after the verified resume, and the processes that stopped again meanwhile and were resumed once more. */
  settle?: { looks: number; resumedAgain: number[] };
  /** Kill: processes it saw that are still alive at the end (the kill then fails, naming them); empty when it returns. */
  escaped?: number[];
  /** Stop: processes that were stopped already, by the application, before the stop (a continue keeps them stopped). */
  alreadyStopped?: number[];
  /** Continue: processes left stopped because the application, not treestate, had stopped them (see `all`). */
  keptStopped?: number[];
  /** What the call could not do as it would have liked, and did otherwise (an unreadable record, nowhere to keep one). */
  warnings?: string[];
}

export interface ContinueOptions extends TransitionOptions {
  /**
   * After the tree is verified running, how long it is watched for processes
   * that stop themselves in reaction to the stop being undone (a parent such
   * as su mirroring its child's stop); 0 skips it. Default 20 ms.
   */
  settleMs?: number;
  /**
   * Continue every process, the application's own stops too (those a stop or
   * a restore by treestate found stopped and remembered), and forget them.
   */
  all?: boolean;
}

const DEFAULT_SETTLE_MS = 20;
/** Rounds of "resumed, stopped itself again" before a continue gives up on a process. */
const SETTLE_ROUNDS = 5;
/** A watch goes on past `settleMs`, up to this many times it, while a parent it resumed is still runnable. */
const SETTLE_LATE_FACTOR = 5;
/** Looks in which a thread must be in ptrace-stop for a stop to refuse the tree before signalling it. */
const HELD_LOOKS = 5;

/** What a rollback did: the processes it resumed, and those it could not reach (EMFILE, EPERM …). */
interface Rollback {
  resumed: number[];
  failed: NativeFailure[];
}

/** Resumes exactly the processes a failed stop had stopped, children before parents. */
async function rollback(run: Passes): Promise<Rollback> {
  const targets = [...run.tally.signalled.values()].reverse();
  if (targets.length === 0) return { resumed: [], failed: [] };
  const result = await run.signal(targets, native().signals.SIGCONT);
  return { resumed: result.signalled, failed: result.failures };
}

/** `null`: the stop was told to leave what it stopped stopped. */
function rolledBackNote(undone: Rollback | null): string {
  if (undone === null) return '; what it had stopped stays stopped';
  const { resumed, failed } = undone;
  const stuck = failed.length ? `${describePids(failed.map((f) => f.pid))} could not be resumed (${failed[0]!.code}): continue ${failed.length === 1 ? 'it' : 'them'} by hand` : '';
  if (resumed.length === 0) return stuck ? `; ${stuck}` : '; nothing had been stopped';
  return `; the ${plural(resumed.length, 'process')} it had stopped ${resumed.length === 1 ? 'was' : 'were'} resumed${stuck ? `, but ${stuck}` : ''}`;
}

/** Which processes a pass saw, and how many of them were dead. */
interface TreeShape {
  identities: Map<number, number>;
  dead: number;
}

function treeShape(pass: NativeWalkResult): TreeShape {
  return {
    identities: new Map(pass.processes.map((p) => [p.pid, p.startTime])),
    dead: pass.processes.filter((p) => processState(p.threads) === 'dead').length,
  };
}

/** Same processes; and, since a process only goes from alive to dead, the same count of dead ones means the same ones. */
function sameShape(a: TreeShape, b: TreeShape): boolean {
  if (a.identities.size !== b.identities.size || a.dead !== b.dead) return false;
  for (const [pid, startTime] of b.identities) if (a.identities.get(pid) !== startTime) return false;
  return true;
}

/**
 * Running → Stopped. Parents before children; passes repeat until one finds
 * every live thread in group-stop and nothing left to signal, because
 * processes fork while we walk. On any failure the processes this call
 * stopped are resumed, so no half-stopped tree is left behind.
 */
export async function stopTree(pid: number, options: StopOptions = {}): Promise<TransitionResult> {
  refuseFrozen(checkPid(pid), 'stop');
  using run = new Passes(checkTarget(pid, options, STOP_NUMBERS), options);
  // Awaited here: `using` releases the cache when this function returns.
  return await stopPasses(run, options, false);
}

/**
 * A stop that succeeded remembers which processes were stopped already (every
 * thread in T, and this call never signalled them): the application's own
 * stops, which a continue keeps (src/stop-records.ts).
 */
function recordedStop(result: TransitionResult, last: NativeWalkResult, { tally }: Passes): TransitionResult {
  const present = identitiesOf(last.processes.filter((p) => processState(p.threads) !== 'dead'));
  const found = present.filter((p) => !tally.signalledAsItself(p));
  const { kept, warnings } = recordStop({ pid: result.root, startTime: result.rootStartTime }, present, found, 'stop');
  return { ...result, alreadyStopped: kept.map((p) => p.pid), ...(warnings.length ? { warnings } : {}) };
}

/** Reads that failed for want of resources, not of permission: a kill goes on through the pins it has. */
const READ_FAILURES = ['EMFILE', 'ENFILE', 'ENOMEM'] as const;

/**
 * Stop failures after which a kill goes on: SIGKILL needs no cooperation,
 * and a root that exited leaves processes the kill has seen to kill.
 */
const KILL_GOES_ON = ['ETIMEDOUT', 'ETRACED', 'ENOTSETTLED', 'ESRCH', ...READ_FAILURES] as const;

/**
 * The passes of a stop. For a kill (`beforeKill`), the stop only keeps the
 * tree from forking away while it is killed, so: a failure in KILL_GOES_ON
 * leaves what the stop reached stopped instead of resuming it (a process
 * resumed first could fork children the kill then misses), and threads in
 * uninterruptible sleep (D) are not waited for, since they cannot fork
 * either and SIGKILL takes them when they leave it. Otherwise every failure
 * resumes, as stopTree promises.
 */
const STOP_NUMBERS = { timeoutMs: DURATION, maxPasses: wholeNumber(1, 1_000_000) };

async function stopPasses(run: Passes, options: StopOptions, beforeKill: boolean): Promise<TransitionResult> {
  const { root } = run;
  // A rollback first closes the walk cache: if a read failed for want of
  // descriptors (EMFILE), the rollback needs them.
  const undo = async (code: string): Promise<Rollback | null> => {
    if (beforeKill && (KILL_GOES_ON as readonly string[]).includes(code)) return null;
    await run.releaseCache();
    return rollback(run);
  };
  // The looks count as passes; the first signalling pass is still the first to stop.
  let looks = 0;
  if (!beforeKill) {
    let look: NativeWalkResult;
    ({ look, looks } = await refuseHeldThreads(run));
    run.identify(look);
    // Nothing runs (and so nothing forks): stopped already.
    if (!anyLiveThread(look.processes, (s) => s !== 'T')) {
      run.tally.add(look);
      return recordedStop(run.result('stopped', look, looks), look, run);
    }
  }
  const progress = new StopProgress(run, options.maxPasses ?? 100, beforeKill);
  let quiet = 0;
  for (;;) {
    let pass: NativeWalkResult;
    try {
      // The first pass stops whatever runs without reading the threads
      // behind a running leader; the later ones read every thread.
      pass = await run.walk({ kind: 'stop', first: run.passes === 0 });
    } catch (e) {
      if (run.passes === 0) throw e;
      const undone = await undo((e as { code?: string }).code ?? '');
      if (hasCode(e, 'ESRCH')) {
        throw new TreeStateError('ESRCH', `process ${root} exited while its tree was being stopped${rolledBackNote(undone)}`, { pid: root, details: { resumed: undone?.resumed ?? [] } });
      }
      throw e instanceof TreeStateError ? withNote(e, rolledBackNote(undone)) : e;
    }
    const fresh = run.record(pass);
    if (pass.failures.length > 0) {
      const undone = await undo(pass.failures[0]!.code);
      throw failureError(pass.failures, 'stop', rolledBackNote(undone));
    }
    const verdict = progress.judge(pass, fresh);
    if (verdict !== null && typeof verdict === 'object' && 'release' in verdict) {
      // Not a failure: what did not resume (gone, say) the next pass sees.
      // It looks after a moment: the child has an exec to start.
      await run.signal(verdict.release, native().signals.SIGCONT);
      quiet = 0;
      await pause(1);
      continue;
    }
    if (verdict === 'stopped') {
      const result = run.result('stopped', pass, run.passes + looks);
      // Before a kill, nothing is left to continue.
      return beforeKill ? result : recordedStop(result, pass, run);
    }
    // The stop gives up: undoes what it did, and says so at the end of the error.
    if (verdict) throw new TreeStateError(verdict.code, `${verdict.message}${rolledBackNote(await undo(verdict.code))}`, verdict.fields);
    quiet = fresh > 0 ? 0 : quiet + 1;
    await pause(backoff(quiet));
  }
}

type GiveUp = { code: ErrorCode; message: string; fields: ConstructorParameters<typeof TreeStateError>[2] };
/** Processes this stop stopped that hold a parent in vfork: resumed, so that they can exec and free it. */
type Release = { release: Identity[] };

/** How many times a stop resumes the stopped children of one parent held in vfork before it gives up (EVFORK). */
const VFORK_RELEASES = 3;

/**
 * What the passes of a stop have shown so far: whether the last one proves
 * the tree stopped, or why the stop cannot finish (each reason counted over
 * consecutive passes, so that a moment's state is not taken for a lasting
 * one), or neither: then another pass.
 */
class StopProgress {
  private growing = 0;
  private tracedOnly = 0;
  private heldOnly = 0;
  /** Parents held in vfork, and how many times their stopped children were resumed. */
  private readonly released = new Map<number, number>();
  /** Consecutive passes held by a vfork whose stopped child is not ours to resume (the application stopped it). */
  private heldByOthers = 0;
  private previousShape: TreeShape | undefined;

  constructor(
    private readonly run: Passes,
    private readonly maxPasses: number,
    private readonly beforeKill: boolean,
  ) {}

  judge(pass: NativeWalkResult, fresh: number): 'stopped' | GiveUp | Release | null {
    const { root, passes } = this.run;
    const notStopped = liveThreads(pass.processes, (s) => s !== 'T');
    // When a process exits, its children move to a subreaper or init, and a
    // pass that reads the old parent after and the new one before the move
    // never sees them: such an orphan may still run. Only an exit causes the
    // move, so a pass proves the tree stopped only if it shows the same
    // processes, as alive or dead, as the pass before it (the first pass: if
    // it found everything already stopped, nothing was running to exit).
    const shape = treeShape(pass);
    const unchanged = this.previousShape === undefined || sameShape(this.previousShape, shape);
    this.previousShape = shape;
    if (pass.signalled.length === 0 && notStopped.length === 0 && unchanged) return 'stopped';
    const threads = { pid: root, threads: notStopped, pids: pidsOf(notStopped) };
    if (passes > 1 && fresh > 0 && ++this.growing > this.maxPasses) {
      return { code: 'ENOTSETTLED', message: `the tree of ${root} kept forking new processes through ${plural(this.maxPasses, 'pass')}`, fields: { pid: root, pids: pass.processes.map((p) => p.pid) } };
    }
    // A thread in ptrace-stop only reaches group-stop when its tracer lets
    // it: if nothing else is left, say so rather than wait for the timeout.
    this.tracedOnly = notStopped.length > 0 && notStopped.every((t) => t.state === 't') ? this.tracedOnly + 1 : 0;
    if (this.tracedOnly >= 8) return { code: 'ETRACED', message: `cannot stop the tree of ${root}: ${describeThreads(notStopped)} in ptrace-stop`, fields: threads };
    // A parent waiting in vfork (D) leaves it only when its child execs or
    // exits: with that child stopped, never, so no SIGSTOP reaches it. A
    // posix_spawn (make, a shell) caught between its vfork and its exec is
    // that: the stop resumes the children it stopped of such a parent, the
    // child execs, the parent leaves vfork into the SIGSTOP it has pending,
    // and the next passes stop the new program. A child that does not exec
    // (or one the application stopped itself, which is not ours to resume)
    // holds its parent for good: after VFORK_RELEASES, say so rather than
    // wait for the timeout.
    const vforkHeld = this.beforeKill ? [] : waitingInVfork(pass);
    if (vforkHeld.length > 0 && notStopped.every((t) => vforkHeld.includes(t.pid))) {
      // Which stopped child a parent waits for, /proc does not say: resume
      // those this stop stopped (the others re-stop on the next pass), never
      // one it did not stop.
      const held = new Set(vforkHeld);
      const stoppedChildren = pass.processes.filter((p) => held.has(p.ppid) && processState(p.threads) === 'stopped');
      const { tally } = this.run;
      const ours = stoppedChildren.filter((p) => tally.signalledAsItself(p));
      const others = stoppedChildren.filter((p) => !tally.signalledAsItself(p)).map((p) => p.pid);
      if (ours.length > 0 && vforkHeld.every((pid) => (this.released.get(pid) ?? 0) < VFORK_RELEASES)) {
        for (const pid of vforkHeld) this.released.set(pid, (this.released.get(pid) ?? 0) + 1);
        this.heldByOthers = 0;
        return { release: identitiesOf(ours) };
      }
      // Nothing of ours to resume: a moment's state is not taken for a lasting one.
      if (ours.length > 0 || ++this.heldByOthers >= 3) {
        const waits = vforkHeld.length === 1 ? 'waits' : 'wait';
        const why = others.length > 0
          ? `; ${describePids(others)} ${others.length === 1 ? 'is' : 'are'} stopped, not by this stop (by the application, say), and a stop resumes only what it stopped`
          : `; the children it had stopped were resumed ${VFORK_RELEASES} times to let it exec, and it did not`;
        return { code: 'EVFORK', message: `cannot stop the tree of ${root}: ${describePids(vforkHeld)} ${waits} in vfork for a stopped child, and a process leaves vfork only when its child execs or exits${why}`, fields: { ...threads, pids: vforkHeld } };
      }
    } else {
      this.heldByOthers = 0;
    }
    // A process with a thread in D or t may never finish its group-stop: the
    // kernel can hand the SIGSTOP to that very thread (a vfork parent, say),
    // and its other threads then run on; a kill waits for none of them.
    // (Such threads are among the not-stopped ones: no need to look further.)
    const held = this.beforeKill ? new Set(notStopped.filter((t) => t.state === 't' || t.state === 'D').map((t) => t.pid)) : undefined;
    this.heldOnly = held && notStopped.length > 0 && notStopped.every((t) => held.has(t.pid)) ? this.heldOnly + 1 : 0;
    if (this.heldOnly >= 8) return { code: 'ETIMEDOUT', message: `the tree of ${root} cannot stop now: ${describeThreads(notStopped)} in uninterruptible sleep or ptrace-stop`, fields: threads };
    if (this.run.expired()) return { code: 'ETIMEDOUT', message: `the tree of ${root} did not stop within ${this.run.timeoutMs} ms: ${describeThreads(notStopped)} not stopped`, fields: threads };
    return null;
  }
}

/** Processes of the pass with a thread waiting in vfork (D) and a child in group-stop. */
function waitingInVfork(pass: NativeWalkResult): number[] {
  const stopped = new Set(pass.processes.filter((p) => processState(p.threads) === 'stopped').map((p) => p.pid));
  return pass.processes.filter((p) => p.threads.some((t) => t.state === 'D' && t.vfork) && p.children.some((c) => stopped.has(c))).map((p) => p.pid);
}

/**
 * A stop looks before it signals: a thread held in ptrace-stop never reaches
 * group-stop, so the stop could only fail, and a SIGSTOP, or the SIGCONT of
 * the rollback, sent to a tracee is queued for its tracer to see (ShdPnd),
 * which a tracer that does not expect it may never handle. A thread shows t
 * for a moment at each signal its tracer inspects (a signal-delivery-stop):
 * only one seen there in every one of HELD_LOOKS looks (over ~30 ms)
 * refuses the stop. Returns the last look, and how many were taken.
 */
async function refuseHeldThreads(run: Passes): Promise<{ look: NativeWalkResult; looks: number }> {
  const { root } = run;
  let held: ThreadRef[] | undefined;
  for (let look = 1; ; look++) {
    let pass: NativeWalkResult;
    try {
      pass = await run.walk();
    } catch (e) {
      // A tree that cannot be read whole (hidepid, EMFILE) is not stopped in part either.
      if (!(e instanceof TreeStateError) || e.pids.length === 0) throw e;
      throw withNote(e, rolledBackNote({ resumed: [], failed: [] }));
    }
    refuseDeadRoot(pass.processes[0], 'stop');
    const traced = liveThreads(pass.processes, (s) => s === 't');
    held = held === undefined ? traced : traced.filter((t) => held!.some((h) => h.tid === t.tid));
    if (held.length === 0) return { look: pass, looks: look };
    if (look >= HELD_LOOKS) {
      throw new TreeStateError('ETRACED', `cannot stop the tree of ${root}: ${describeThreads(held)} in ptrace-stop, which a stop cannot end; nothing was signalled`, {
        pid: root,
        threads: held,
        pids: pidsOf(held),
      });
    }
    await pause(2 ** look);
  }
}

/**
 * Stopped → Running. Depth-first, children before their parent, SIGCONT to
 * every thread of every process; then passes until no live thread is in
 * group-stop. Threads in ptrace-stop cannot be resumed by SIGCONT: they are
 * reported (ETRACED, with their tracer) instead of claiming success. A tree
 * treestate stopped (or restored) keeps stopped what the application itself
 * had stopped, as its record says (src/stop-records.ts; `all` continues them
 * too); a tree with no record is continued whole.
 */
export async function continueTree(pid: number, options: ContinueOptions = {}): Promise<TransitionResult> {
  const root = checkPid(pid);
  // Without a record the tree is continued whole, and its records removed.
  if (options.all) return continueKeeping(root, options, undefined);
  // The newest record may be the live root's; older ones are of processes
  // that had the pid before it (the first pass proves which, by start time).
  const { records, warnings } = recordsFor(root);
  let result: TransitionResult;
  try {
    result = await continueKeeping(root, options, records[0]);
  } catch (e) {
    // No such process: whatever was recorded under its pid is stale.
    if (hasCode(e, 'ESRCH')) removeRecords(root);
    throw e;
  }
  return warnings.length ? { ...result, warnings: [...warnings, ...(result.warnings ?? [])] } : result;
}

/** What a continue leaves stopped: the application's own stops in the tree of `root`. */
export interface KeptStops {
  root: Identity;
  kept: Identity[];
}

/**
 * The continue itself, leaving `keep.kept` stopped when the root is still
 * `keep.root` (otherwise the pid names another process now, and the whole
 * tree is continued); afterwards, what it kept is remembered (or the tree
 * forgotten). For restore and dump, which know the kept processes from the
 * images or from the tree before the dump.
 */
export async function continueKeeping(root: number, options: ContinueOptions, keep: KeptStops | undefined): Promise<TransitionResult> {
  const target = checkTarget(root, options, { timeoutMs: DURATION });
  refuseFrozen(root, 'continue');
  using run = new Passes(target, options);
  let verifying: NativeWalkResult | undefined;
  const kept = new Map((keep?.kept ?? []).map((p) => [p.pid, p.startTime]));
  const isKept = (p: { pid: number; startTime: number }) => kept.get(p.pid) === p.startTime;
  for (;;) {
    let pass: NativeWalkResult;
    try {
      pass =
        verifying ??
        (await run.walk({
          rootStartTime: run.rootStartTime ?? keep?.root.startTime,
          kind: 'continue',
          first: run.passes === 0,
          // The verifying pass at once, in the same native call: this thread
          // would otherwise wait for a core behind every thread just woken.
          verify: run.passes === 0,
          keep: kept.size ? [...kept].map(([pid, startTime]) => ({ pid, startTime })) : undefined,
        }));
    } catch (e) {
      // The first pass signals nothing when the root is not the record's:
      // the record is stale, and the tree is continued whole.
      if (run.passes > 0 || !keep || !hasCode(e, 'ESRCH')) throw e;
      keep = undefined;
      kept.clear();
      continue;
    }
    verifying = pass.verifying;
    if (run.passes === 0) refuseDeadRoot(pass.processes[0], 'continue');
    run.record(pass);
    const rootStartTime = run.rootStartTime!;
    if (pass.failures.length > 0) {
      // What it could read it continued: say so (continuing again is safe).
      const reached = [...run.tally.signalled.keys()];
      throw failureError(pass.failures, 'continue', reached.length ? `; continued ${describePids(reached)}, which it reached` : '');
    }
    // States are read before each pass signals, so a pass that finds no
    // thread in group-stop proves the SIGCONTs of the passes before it worked
    // (or, on the first pass, that nothing was stopped). The follow-up pass
    // does not re-read the non-leader threads of what the first resumed
    // ('+'): the kernel ended their group-stop as the SIGCONT was sent.
    // The kept processes may be stopped, and only they.
    const ours = kept.size ? pass.processes.filter((p) => !isKept(p)) : pass.processes;
    if (!anyLiveThread(ours, (s) => s === 'T')) {
      const result = run.result('running', pass);
      const traced = liveThreads(ours, (s) => s === 't');
      if (traced.length > 0) {
        result.state = 'mixed';
        throw new TreeStateError('ETRACED', `continued the tree of ${root}, but ${describeThreads(traced)} ${traced.length === 1 ? 'is' : 'are'} in ptrace-stop, which SIGCONT cannot resume`, {
          pid: root,
          threads: traced,
          pids: pidsOf(traced),
          details: { result },
        });
      }
      const keptStopped = identitiesOf(pass.processes.filter((p) => isKept(p) && p.threads.some((t) => t.state === 'T')));
      const settled = (options.settleMs ?? DEFAULT_SETTLE_MS) <= 0 ? result : await settle(pass, run, options, isKept);
      recordContinue({ pid: root, startTime: rootStartTime }, keptStopped, 'continue');
      return { ...settled, keptStopped: keptStopped.map((p) => p.pid) };
    }
    if (run.expired()) {
      const stopped = liveThreads(ours, (s) => s === 'T');
      throw new TreeStateError('ETIMEDOUT', `the tree of ${root} did not resume within ${run.timeoutMs} ms: ${describeThreads(stopped)} still stopped`, {
        pid: root,
        threads: stopped,
        pids: pidsOf(stopped),
      });
    }
    await pause(backoff(run.passes - 1));
  }
}

/**
 * A continue is not over when every thread has left T: a parent that
 * mirrors its child's stop (su, runuser: waitpid(WUNTRACED), then
 * kill(getpid(), SIGSTOP)) may have seen the child stop before our SIGSTOP
 * reached it, and carries out that reaction only once resumed — after the
 * verifying pass, as soon as the scheduler runs it. So the processes this
 * call saw running are watched for `settleMs` (looks at 1, 4, 16 … ms),
 * longer (up to SETTLE_LATE_FACTOR times) while a parent among them is still
 * runnable, and one that shows T again is resumed, and the watch starts
 * over. A process that stops itself again every time is not resumed
 * forever: after SETTLE_ROUNDS rounds the continue fails (ETIMEDOUT) naming
 * it. The application's own stops, which the continue keeps (`isKept`), are
 * not resumed again either.
 *
 * A process that stops itself stops all its threads (a group-stop), its
 * leader's included: so a look reads only each watched process's leader
 * state, found by identity, not the whole tree with every thread and
 * children file (a process whose leader thread has exited, a zombie leader,
 * is no longer watched).
 */
async function settle(verifying: NativeWalkResult, run: Passes, options: ContinueOptions, isKept: (p: Identity) => boolean): Promise<TransitionResult> {
  const { root } = run;
  const settleMs = options.settleMs ?? DEFAULT_SETTLE_MS;
  const { SIGCONT } = native().signals;
  // Processes this call saw running; those it has not seen are not its to resume.
  const resumed = verifying.processes.filter((p) => processState(p.threads) !== 'dead' && !isKept(p));
  const watched = identitiesOf(resumed);
  // Only a parent can mirror its child's stop; one still runnable (R) may
  // not have had the CPU since its SIGCONT, or be on its way to the reaction.
  const isParent = resumed.map((p) => p.children.length > 0);
  let states = resumed.map((p) => p.threads.find((t) => t.tid === p.pid)?.state ?? '-').join('');
  const reacting = () => isParent.some((parent, i) => parent && states[i] === 'R');
  const resumedAgain: number[] = [];
  let looks = 0;
  for (let round = 0; watched.length > 0; round++) {
    const windowEnd = performance.now() + settleMs;
    const lateEnd = windowEnd + settleMs * (SETTLE_LATE_FACTOR - 1);
    let again: Identity[] = [];
    for (let wait = 1; again.length === 0; wait *= 4) {
      const now = performance.now();
      if (now >= windowEnd && (now >= lateEnd || !reacting())) break;
      await pause(now < windowEnd ? Math.min(wait, windowEnd - now) : Math.min(4, lateEnd - now));
      states = await native().leaderStates(watched);
      looks++;
      again = watched.filter((_, i) => states[i] === 'T');
    }
    if (again.length === 0) break;
    const stopped: ThreadRef[] = again.map((p) => ({ pid: p.pid, tid: p.pid, state: 'T' }));
    if (round >= SETTLE_ROUNDS || run.expired()) {
      throw new TreeStateError(
        'ETIMEDOUT',
        `continued the tree of ${root}, but ${describeThreads(stopped)} stopped again each time it was resumed (${plural(round + 1, 'time')}): something in the tree keeps stopping it`,
        { pid: root, threads: stopped, pids: pidsOf(stopped), details: { resumedAgain } },
      );
    }
    const sent = await run.signal(again, SIGCONT);
    if (sent.failures.length > 0) throw failureError(sent.failures, 'continue', '');
    for (const pid of sent.signalled) if (!resumedAgain.includes(pid)) resumedAgain.push(pid);
  }
  // The verified result, timed to the end of the watch.
  return { ...run.result('running', verifying), settle: { looks, resumedAgain } };
}

/**
 * → Dead. The tree is stopped first so nothing can fork away while it is
 * killed; then SIGKILL to every process, children first, and wait on the
 * pidfds until every process is gone or a zombie. When the stop cannot
 * finish (traced threads, endless forking, a timeout, no descriptors left),
 * what it stopped stays stopped and the kill goes on parents first, the
 * children of each process that still ran read again once it is killed: a
 * parent killed first forks no more, so none of its children is born after
 * the kill looked. A process
 * the call saw in the tree is killed, with whatever it has forked since,
 * even if it left the tree meanwhile (its parent, the root say, exited and
 * it moved to a subreaper or init): it is found again by identity, and the
 * kill repeats until no pass finds a process it had not seen. What is still
 * alive at the end has escaped, and the kill fails (EESCAPED) naming it, as
 * it does when a process it killed as it ran exited before its children
 * could be listed again.
 */
export async function killTree(pid: number, options: StopOptions = {}): Promise<TransitionResult> {
  const target = checkTarget(pid, options, STOP_NUMBERS);
  const { root } = target;
  // A tree that owns its cgroup dies through cgroup.kill: in one step, and
  // with the processes that left its parent links (src/cgroup/tree.ts).
  const owned = await ownedCgroup(root);
  if (owned && !owned.members.includes(process.pid)) {
    const result = await killOwnedTree(owned, options);
    removeRecords(root);
    return result;
  }
  const run = new Passes(target, options);
  const leadsSession = native().sessionOf(root) === root;
  let stopped = false;
  try {
    using stop = new Passes(target, { ...options, timeoutMs: Math.max(1, run.timeoutMs / 2) }, run.tally);
    run.rootStartTime = (await stopPasses(stop, options, true)).rootStartTime;
    stopped = true;
  } catch (e) {
    // Anything else (EPERM, a root that never was) is the caller's to see,
    // and the stop has resumed what it stopped.
    if (!hasCode(e, ...KILL_GOES_ON) || (hasCode(e, 'ESRCH') && run.tally.identities().length === 0)) {
      await run.releaseCache();
      throw e;
    }
  }
  run.rootStartTime ??= run.tally.identities()[0]?.startTime;
  const sweep = new KillSweep(run, stopped);
  try {
    await sweep.from(undefined);
    await sweep.strays();
    // A root that leads its own session: every member of the session
    // descends from it (a session is entered only by being forked into it,
    // after the leader's setsid), and the session keeps the root's pid as
    // its id while a member lives, so no other process can take that pid.
    // When a process was killed as it ran and exited before its children
    // could be listed again, a child it forked just before the SIGKILL went
    // to a subreaper or init unseen: it is still in the session, killed there.
    if (leadsSession && sweep.relistRaced) await sweep.session(root);
  } finally {
    await run.releaseCache();
  }
  const { unread, unlisted } = sweep;
  if (unread.length > 0) {
    throw failureError(unread, 'kill', `; ${unread.length === 1 ? 'it was' : 'they were'} not killed, nor a stopped process above (their children would have been orphaned), and nothing was resumed`);
  }
  const escaped = await native().waitExit(run.tally.identities(), run.remaining());
  const result: TransitionResult = { ...run.result('dead', undefined), escaped };
  if (escaped.length > 0 || unlisted.size > 0) {
    result.state = 'mixed';
    const alive = escaped.length ? `${describePids(escaped)} escaped and ${escaped.length === 1 ? 'is' : 'are'} still alive` : '';
    const gaps = unlisted.size ? `${describePids([...unlisted])} exited before ${unlisted.size === 1 ? 'its' : 'their'} children could be listed, and a child forked just before the kill may have escaped` : '';
    throw new TreeStateError('EESCAPED', `the tree of ${root} was killed, but ${[alive, gaps].filter(Boolean).join('; and ')}`, { pid: root, pids: escaped.length ? escaped : [...unlisted], details: { result, unlisted: [...unlisted] } });
  }
  // Every process seen is dead now: the tally reports them all as exited.
  removeRecords(root);
  return result;
}

/**
 * Kills what is left of session `sid` after its leader's tree was killed:
 * every live member that started no earlier than `born` (the leader's start
 * time: a session keeps its leader's pid as its id while a member lives, so
 * only a member that started before the leader could belong to an older
 * session of that pid), each with what it forked. Resolves with the members
 * still alive at the end (none, unless something held them: D state, a
 * copy faulting on pages that never come); rejects as a kill pass does
 * (EPERM, a refused signal).
 */
export async function killSession(sid: number, born: number, options: { timeoutMs?: number } = {}): Promise<number[]> {
  const target = checkTarget(sid, options, { timeoutMs: DURATION });
  using run = new Passes(target, options);
  run.rootStartTime = born;
  const sweep = new KillSweep(run, false);
  await sweep.session(sid);
  return native().waitExit(run.tally.identities(), run.remaining());
}

/** The kill passes of a kill: from the root, then from each process seen and not yet reached. */
class KillSweep {
  /** Processes a kill pass signalled (or found dead) and waited for. */
  private readonly reached = new Map<number, number>();
  /** Processes the last pass of a walk could not read, left alive. */
  readonly unread: NativeFailure[] = [];
  /** Processes that had begun to exit before their children were listed again. */
  readonly unlisted = new Set<number>();

  constructor(
    private readonly run: Passes,
    /** The stop before the kill finished: the tree cannot fork. */
    private readonly stopped: boolean,
  ) {}

  /** A killed process exited before its children could be listed again (whatever its state when read). */
  relistRaced = false;

  /**
   * What the call saw and no kill pass reached has left the tree (its
   * parent exited and it moved to a subreaper or init), or exited: kill it
   * where it is now, with what it forked since, until nothing new shows.
   */
  async strays(): Promise<void> {
    for (let round = 0; ; round++) {
      const strays = this.run.tally.identities().filter((p) => this.reached.get(p.pid) !== p.startTime);
      if (strays.length === 0) return;
      if (round > 0) this.inTime(strays.map((p) => p.pid));
      for (const stray of strays) {
        this.reached.set(stray.pid, stray.startTime);
        await this.from(stray);
      }
    }
  }

  /**
   * The members of the root's own session that no pass reached, killed with
   * what they forked, until none is left. A gap `unlisted` reported is
   * closed by it: the children it stands for are in the session (unless one
   * left it with setsid in the microseconds between its birth and the scan).
   */
  async session(sid: number): Promise<void> {
    const born = this.run.rootStartTime ?? 0;
    for (let round = 0; ; round++) {
      const members = (await native().sessionMembers(sid)).filter((p) => p.startTime >= born && this.reached.get(p.pid) !== p.startTime);
      if (members.length === 0) break;
      if (round > 0) this.inTime(members.map((p) => p.pid));
      for (const member of members) {
        this.reached.set(member.pid, member.startTime);
        await this.from(member);
      }
      await this.strays();
    }
    this.unlisted.clear();
  }

  /** Passes from one process (the root, then a stray) until one signals nothing, or it is gone. */
  async from(from: Identity | undefined): Promise<void> {
    const { run } = this;
    let failures: NativeFailure[] = [];
    for (let round = 0; ; round++) {
      if (round > 0) this.inTime([from?.pid ?? run.root], ' and what it forked since its last pass');
      let pass: NativeWalkResult;
      try {
        pass = await run.walk({
          // From the root through the cache, from a stray without it; both by
          // identity (the root's once a pass has read it): a killed root
          // that is reaped frees its pid, and a later pass must not kill
          // the process that takes it.
          ...(from ? { root: from.pid, rootStartTime: from.startTime, cache: undefined } : {}),
          // A stopped tree cannot fork: read it all, then kill it in one
          // burst, children first. One that still forks is killed parents
          // first, and what ran is listed again once killed.
          kind: this.stopped ? 'kill-stopped' : 'kill',
        });
      } catch (e) {
        // Reaped: nothing left to kill through it.
        if (hasCode(e, 'ESRCH') && (from !== undefined || run.rootStartTime !== undefined)) break;
        throw e;
      }
      run.record(pass);
      // Only a process with a thread running (R) when read, or in
      // ptrace-stop (t: its tracer may resume it at once, as one that
      // swallows stops does), can have forked in the microseconds before its
      // SIGKILL; one whose threads all slept, were stopped, in uninterruptible
      // sleep (a parent waiting in vfork) or exiting would first have to be
      // woken: the same residual window as a childless process's
      // (docs/safety.md). (Test: kill.test.ts, a root held in vfork beside
      // sleeping threads, flagged 1 run in 3.)
      const couldFork = (pid: number) => pass.processes.find((p) => p.pid === pid)?.threads.some((t) => t.state === 'R' || t.state === 't' || t.state === '?') ?? true;
      if (pass.unlisted.length > 0) this.relistRaced = true;
      for (const p of pass.unlisted) if (couldFork(p)) this.unlisted.add(p);
      const refusals = pass.failures.filter((f) => f.syscall === 'pidfd_send_signal' || !(READ_FAILURES as readonly string[]).includes(f.code));
      if (refusals.length > 0) throw failureError(refusals, 'kill', '');
      for (const p of pass.processes) this.reached.set(p.pid, p.startTime);
      // Out of descriptors: a process that could not be read is not killed,
      // nor a stopped one above it (its children would be orphaned, out of
      // the tree's reach). Free the cache's descriptors and read again.
      failures = pass.failures;
      const retry = failures.length > 0 && run.cached;
      if (failures.length > 0) await run.releaseCache();
      if (pass.signalled.length === 0 && !retry) break; // nothing left that it can kill
      const signalled = new Set(pass.signalled);
      await this.waitDead(identitiesOf(pass.processes.filter((p) => signalled.has(p.pid))));
    }
    this.unread.push(...failures);
  }

  /**
   * Every pass of a kill ends with the processes it signalled dead, so a tree
   * that forks as fast as it is killed could keep the sweep going for ever.
   * Each loop of the sweep makes its first round whatever the time (a kill
   * sends its SIGKILLs, however short its timeout), and another only before
   * the deadline: past it, the kill ends naming what it was still to kill.
   */
  private inTime(pids: number[], more = ''): void {
    const { run } = this;
    if (!run.expired()) return;
    throw new TreeStateError('ETIMEDOUT', `the tree of ${run.root} did not die within ${run.timeoutMs} ms: ${describePids(pids)}${more} ${pids.length === 1 && !more ? 'was' : 'were'} still to be killed`, { pid: run.root, pids });
  }

  private async waitDead(targets: Identity[]): Promise<void> {
    const { run } = this;
    const alive = await native().waitExit(targets, run.remaining());
    if (alive.length > 0 && run.expired()) {
      throw new TreeStateError('ETIMEDOUT', `the tree of ${run.root} did not die within ${run.timeoutMs} ms: ${describePids(alive)} still alive`, { pid: run.root, pids: alive });
    }
  }
}

export interface WaitOptions extends WalkOptions {
  /** Default 10 000 ms. */
  timeoutMs?: number;
  /** Time between looks (default 10 ms). */
  intervalMs?: number;
  /**
   * Processes that may be in T in a `running` tree (the application's own
   * stops, kept by a continue); by default those the tree's record names.
   */
  keptStopped?: Identity[];
}

/**
 * Resolves with the tree's status once it is in `state`. For `dead`, a root
 * that exits or is reaped (or never existed) counts as dead.
 */
export async function waitForState(pid: number, state: TreeState, options: WaitOptions = {}): Promise<TreeStatus> {
  const root = checkPid(pid);
  if (!['running', 'stopped', 'dead', 'mixed', 'frozen'].includes(state)) {
    throw new TreeStateError('EINVAL', `unknown state ${JSON.stringify(state)}: expected running, stopped, dead, mixed or frozen`);
  }
  // Only looks: a tree that holds treestate may be waited for.
  using run = new Passes(checkTarget(root, options, { timeoutMs: DURATION, intervalMs: DURATION }, false), options);
  let kept = options.keptStopped;
  for (;;) {
    let status: TreeStatus;
    try {
      const pass = await run.walk();
      run.identify(pass);
      kept ??= recordOf({ pid: root, startTime: run.rootStartTime! }).record?.kept ?? [];
      status = withFrozen(withKept(classify({ root, walk: pass.walk, processes: pass.processes.map(toProcessInfo) }), kept));
    } catch (e) {
      if (!hasCode(e, 'ESRCH') || !(e instanceof TreeStateError)) throw e;
      if (state === 'dead') {
        return { root, walk: 'children', processes: [], state: 'dead', differing: [], counts: { running: 0, stopped: 0, traced: 0, dead: 0 } };
      }
      throw run.rootStartTime === undefined ? e : new TreeStateError('ESRCH', `process ${root} exited while waiting for its tree to be ${state}`, { pid: root });
    }
    if (status.state === state) return status;
    if (run.expired()) {
      const off: ThreadRef[] = status.state === 'mixed' ? status.differing : liveThreads(status.processes, () => true);
      throw new TreeStateError('ETIMEDOUT', `the tree of ${root} is ${status.state}, not ${state}, after ${run.timeoutMs} ms${off.length ? `: ${describeThreads(off)}` : ''}`, {
        pid: root,
        threads: off,
        details: { status },
      });
    }
    await pause(options.intervalMs ?? 10);
  }
}
