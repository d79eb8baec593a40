// dump, pre-dump and restore through the real criu, ending in the final state
// the caller chose, and proving it: after criu exits the engine confirms the
// state (criu detaches with SIGSTOP without waiting, so T can show late).
import { closeSync, constants, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, dirname, join, relative } from 'node:path';
import { TreeStateError, describePids, describeThreads, hasCode, plural } from '../errors.js';
import { DURATION, checkNumbers } from '../options.js';
import { checkNotSelf, checkPid, getTreeState, identitiesOf, refuseDeadRoot, type TreeState, type TreeStatus } from '../tree.js';
import { continueKeeping, waitForState } from '../transitions.js';
import type { Identity } from '../native.js';
import { applicationStops, noteImageStops, readImageStops, recordStop, removeRecords } from '../stop-records.js';
import { readCheckpoint, type Checkpoint } from './images/read.js';
import { innermostPid } from './pidns.js';
import { cgroupRestoreRunner } from '../cgroup/run.js';
import { ownedCgroup } from '../cgroup/tree.js';
import { dumpArgs, preDumpArgs, restoreArgs, type CriuFlags, type DumpFinalState, type RestoreFinalState } from './args.js';
import { checkImagesDir, checkLogFile, prepareDumpDir } from './images.js';
import { hasDirtyTracking, locateCriu, onPath, type CriuInfo } from './locate.js';
import { PidNamespaceRunner, type PidNamespaceInfo } from './pidns.js';
import { pathBoundUnixSockets, verifyImages, type ImageVerification } from './verify.js';
import { criuErrorLines, diagnoseCriuFailure } from './diagnose.js';
import { stopCriu, type CriuStop } from './interrupt.js';
import { removeLinkRemaps, type LinkRemapCleanup } from './leftovers.js';
import { waitForImagePids } from './preflight-pids.js';
import { childProcessRunner, type CommandRunner, type RunningCommand } from './runner.js';
import { connectCriu } from './rpc/client.js';
import { hasHooks, hookHandler, type CriuHooks, type HookLog } from './rpc/hooks.js';
import { NetworkLockMethod, type CriuReqMessage, type CriuRespMessage } from './rpc/proto.js';
import { dumpRequest, preDumpRequest, restoreRequest, type RequestPlaces } from './rpc/requests.js';
import { readDumpStats, type DumpStats } from './rpc/stats.js';

export type CriuVerb = 'dump' | 'restore' | 'pre-dump';

export interface CriuProgress {
  verb: CriuVerb;
  /** `waiting for pids`: a restore waits for zombies holding the checkpoint's pids to be reaped. */
  phase: 'locating criu' | 'waiting for pids' | 'running criu' | 'verifying';
  elapsedMs: number;
}

export interface CriuOptions extends CriuFlags {
  imagesDir: string;
  /** Path of criu; otherwise TREESTATE_CRIU, the project-local one, PATH. */
  criu?: string;
  /** How long criu may run before it is killed (default 120 000 ms). */
  timeoutMs?: number;
  /** How long the tree may take to show the final state after criu exits (default 5 000 ms). */
  verifyTimeoutMs?: number;
  /** criu's log (default IMAGES_DIR/VERB.log); its directory must be the caller's, writable by no one else. */
  logFile?: string;
  /**
   * Use an existing images directory that group or others can read (a warning
   * in the result's `warnings`) instead of refusing it: the images hold the
   * tree's memory.
   */
  allowSharedDir?: boolean;
  /** Starts criu; the testing harness passes its reaper so restored trees land there. */
  runner?: CommandRunner;
  /** Callbacks for criu's notifications, each awaited while criu waits (see docs/criu-rpc.md). */
  hooks?: CriuHooks;
  onProgress?: (progress: CriuProgress) => void;
}

export interface DumpOptions extends CriuOptions {
  /** Default `dead`, as criu's. */
  finalState?: DumpFinalState;
  /**
   * After the dump, restore the images into throwaway pid, network and mount
   * namespaces, left stopped (the copy never runs), check that every process
   * and thread came back, and kill it: `verified` in the result, or EVERIFY.
   */
  verify?: boolean;
  /** Finish an iterative dump started by preDump into this directory. */
  prevImagesDir?: string;
  /**
   * Keep the link_remap files criu leaves after a `stopped` dump with
   * `--link-remap` (removed by default: the next dump of the tree would fail
   * on them). Keep them to kill the tree and restore these images: criu's
   * restore reopens the unlinked files through them.
   */
  keepLinkRemaps?: boolean;
}

export interface RestoreOptions extends CriuOptions {
  /** Default `running`, as criu's. */
  finalState?: RestoreFinalState;
  /**
   * `'new'`: restore into a fresh pid namespace (with its own /proc), so the
   * images' pids are free whatever runs on the host; the result's `root` is
   * the host pid and `pidNamespace` says the rest. Not with `runner`.
   */
  pidNamespace?: 'host' | 'new';
  /** With `pidNamespace: 'new'`: `'new'` gives the tree a network namespace of its own too, with only a loopback. */
  networkNamespace?: 'host' | 'new';
  /**
   * Restore into a new cgroup of its own (`true`, or the cgroup's name), as
   * a `run` tree: criu runs under treestate-run in that cgroup, which then
   * keeps the restored root (freeze, thaw, kill through cgroup.kill). Not
   * with `runner`.
   */
  cgroup?: boolean | string;
}

export interface PreDumpOptions extends CriuOptions {
  prevImagesDir?: string;
}

export interface CriuResult {
  verb: CriuVerb;
  /** The tree's root pid (for restore: the restored root, from --pidfile). */
  root: number;
  /** Restore: the restored root's start time (clock ticks after boot); with `root`, its identity. */
  rootStartTime?: number;
  /** The state asked for … */
  finalState: TreeState;
  /** … and the state the engine saw. */
  state: TreeState;
  /** Live processes of the tree after criu (empty for dead). */
  processes: number[];
  imagesDir: string;
  logFile: string;
  criu: { path: string; version: string };
  /** criu's argument vector: `swrk 3` over RPC (the request is `request`), the whole command line otherwise (see criu()). */
  argv: string[];
  /** The RPC request's options, without the descriptors (absent on the command line). */
  request?: Record<string, unknown>;
  /** Dump: criu's statistics (from its stats-dump). */
  stats?: DumpStats;
  elapsedMs: number;
  /** A restore into a new pid namespace: the root's pid there and the namespace's init (host pid). */
  pidNamespace?: PidNamespaceInfo;
  /** The tree's own cgroup: a dump that froze it to seize the tree (--freeze-cgroup), a restore into one (`cgroup`). */
  cgroup?: string;
  /** Whether treestate continued the tree after criu to reach Running (see restore, and dump of a tree that was stopped). */
  continued?: boolean;
  /**
   * Running: processes left stopped because the application had stopped them
   * (restore: stopped in the images; dump: stopped before the dump, not by treestate).
   * Stopped: the application's own stops, which a later continue keeps.
   */
  keptStopped?: number[];
  /**
   * A dump with `tcpEstablished` that left the tree stopped: criu keeps the
   * tree's established connections locked (their packets dropped) until a
   * restore from these images unlocks them, so continuing the original leaves
   * those connections hanging.
   */
  networkLocked?: boolean;
  /** `dump({ verify: true })`: what the test restore of the images found. */
  verified?: ImageVerification;
  /** dump leaving the tree alive: the link_remap files criu had left beside the program's files, removed (and any it could not). */
  linkRemaps?: LinkRemapCleanup;
  /** What the caller allowed that weakens a guarantee (allowSharedDir). */
  warnings: string[];
}

const DEFAULT_TIMEOUT_MS = 120_000;
const CRIU_UMASK = 0o077;

export { criuErrorLines } from './diagnose.js';

const NETWORK_LOCK_HINT =
  "criu could not lock the network for --tcp-established: its default lock runs iptables-restore, so install the iptables package, or pass networkLock 'nftables' (--network-lock nftables), which needs only the kernel's nf_tables";

/**
 * criu's network lock for established connections: its default runs
 * iptables-restore, which many hosts lack; criu links libnftables and locks
 * with nftables itself, so that is the choice when no iptables is installed.
 */
function withNetworkLock<T extends CriuFlags>(options: T): T {
  if (!options.tcpEstablished || options.networkLock) return options;
  return onPath('iptables-restore') ? options : { ...options, networkLock: 'nftables' };
}

/** A file's text, or '' when it cannot be read (a log criu never wrote). */
export function readText(path: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return '';
  }
}

interface Run {
  info: CriuInfo;
  /** The command line; over RPC, `swrk 3`. */
  argv: string[];
  logFile: string;
  started: number;
  /** Over RPC (criu swrk): the request, and the tree's root as the hooks should first see it. */
  request?: CriuReqMessage;
  root?: number;
}

/**
 * Runs criu once with a timeout and progress: over RPC (`criu swrk`, the
 * request answered by one response, notifications by the hooks), or as a
 * command line (see criu()). Resolves with criu's response when it succeeded
 * (undefined on the command line); otherwise rejects with ECRIU, EHOOK or
 * ETIMEDOUT.
 */
async function runCriu(verb: CriuVerb, options: CriuOptions, run: Run, afterFailure: () => Promise<string>): Promise<CriuRespMessage | undefined> {
  const timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  const out = `${run.logFile}.out`;
  const progress = options.onProgress;
  const tick = progress ? setInterval(() => progress({ verb, phase: 'running criu', elapsedMs: performance.now() - run.started }), 250) : undefined;
  try {
    progress?.({ verb, phase: 'running criu', elapsedMs: performance.now() - run.started });
    const runner = options.runner ?? childProcessRunner;
    const hooks: HookLog = { seen: [] };
    let running: RunningCommand;
    let answered: Promise<CriuRespMessage | null> = Promise.resolve(null);
    let hangUp = () => {};
    // umask 077: criu creates images 0644 and its logs as the umask allows,
    // and images hold the tree's memory.
    if (run.request) {
      const connection = await connectCriu(run.info.path, runner, out, CRIU_UMASK);
      running = connection;
      hangUp = connection.close;
      const onNotify = hasHooks(options.hooks) ? hookHandler(options.hooks!, hooks, run.root) : undefined;
      answered = connection.call(run.request, onNotify).finally(hangUp);
    } else {
      running = await runner.run(run.info.path, run.argv, { out, umask: CRIU_UMASK });
    }
    let stopping: Promise<CriuStop> | undefined;
    let gone = (_: null) => {};
    // A hook that never settles would keep us from reading criu's end of
    // file: once the timeout has stopped criu, stop waiting for the answer.
    const stoppedAndGone = new Promise<null>((resolve) => (gone = resolve));
    const timer = setTimeout(() => {
      stopping = stopCriu(verb, running);
      void stopping.then(() => running.exited).then(() => gone(null));
    }, timeoutMs);
    const resp = await Promise.race([answered, stoppedAndGone]);
    hangUp();
    // criu has answered: the restored tree is still swrk's child until swrk
    // exits, and a late timeout must not kill it with swrk.
    if (resp) clearTimeout(timer);
    const exit = await running.exited.finally(() => clearTimeout(timer));
    const ok = run.request ? resp?.success === true : exit.code === 0;
    const stop = await stopping;
    // criu may succeed after the timer fired: it was exiting already, or it
    // finished the dump it was interrupted in (SIGALRM does not always make
    // it give up). That criu finished, and its tree is verified like any other.
    const finished = stop && ok && stop.killed.length === 0;
    if (stop && !finished) {
      const also = stop.killed.length ? ` together with the ${plural(stop.killed.length, 'process')} it had started (${describePids(stop.killed)})` : '';
      const how = stop.how === 'killed' ? `was killed${also}` : "was interrupted (SIGALRM, criu's own timeout signal) and gave up";
      throw new TreeStateError('ETIMEDOUT', `criu ${verb} did not finish within ${timeoutMs} ms and ${how}; ${await afterFailure()}; log: ${run.logFile}`, {
        details: { logFile: run.logFile, argv: run.argv, killed: stop.killed, how: stop.how },
      });
    }
    if (hooks.failure) {
      const { hook, notification, error } = hooks.failure;
      const why = error instanceof Error ? error.message : String(error);
      // pre-resume and post-resume cannot stop criu: the tree is restored (and left stopped: treestate restores stopped).
      const after = ok && resp?.restore?.pid ? `criu ${verb} went on: ${await describeTree(resp.restore.pid)}` : await afterFailure();
      throw new TreeStateError('EHOOK', `the ${hook} hook (criu's ${notification}) failed: ${why}; ${after}; log: ${run.logFile}`, {
        cause: error,
        ...(resp?.restore?.pid ? { pid: resp.restore.pid } : {}),
        details: { hook, notification, criuSucceeded: ok, notifications: hooks.seen, logFile: run.logFile, ...(resp?.restore?.pid ? { root: resp.restore.pid } : {}) },
      });
    }
    if (!ok) {
      const log = readText(run.logFile);
      const lines = [...criuErrorLines(log), ...criuErrorLines(readText(out), 3)];
      // criu's first error (cr_errmsg) is the reason, unless it is the
      // RLIMIT_NOFILE one criu logs and survives: then the first one after it.
      // cr_errno is sent only when criu set one.
      const first = resp?.cr_errmsg && !/RLIMIT_NOFILE/.test(resp.cr_errmsg) ? resp.cr_errmsg.trim() : criuErrorLines(log, Infinity)[0]?.replace(/^\([\d.]+\)\s*/, '');
      // A cause treestate recognises comes first; criu's own lines follow.
      const cause = await diagnoseCriuFailure(lines);
      const how = resp
        ? `failed: ${cause ?? (first || 'criu gave no reason')}`
        : `${exit.code === null ? `was killed by signal ${exit.signal}` : `exited with ${exit.code}${run.request ? ' without answering' : ''}`}${cause ? `: ${cause}` : ''}`;
      const hint = criuHint(log);
      throw new TreeStateError('ECRIU', `criu ${verb} ${how}${hint}; ${await afterFailure()}; log: ${run.logFile}${lines.length ? `\n  ${lines.join('\n  ')}` : ''}`, {
        ...(resp?.cr_errno ? { errno: resp.cr_errno } : {}),
        details: { logFile: run.logFile, argv: run.argv, exitCode: exit.code, signal: exit.signal, errors: lines, ...(cause ? { cause } : {}), ...(resp?.cr_errmsg ? { criuError: resp.cr_errmsg } : {}) },
      });
    }
    return resp ?? undefined;
  } finally {
    clearInterval(tick);
  }
}

/** What to do about a criu failure whose log shows a cause treestate knows the fix of, as " (…)"; "" otherwise. */
function criuHint(log: string): string {
  if (/Iptables configuration failed|nftables.*(fail|error)|Can't lock network/i.test(log)) return ` (${NETWORK_LOCK_HINT})`;
  if (/A session leader of .* is outside of its pid namespace/.test(log)) {
    return ' (the tree belongs to session 0 as its pid namespace sees it: a session led from outside the namespace, as for a tree started by `docker exec` or `unshare -p` without setsid, or by no process at all, under an init that never called setsid; --shell-job cannot help; start the tree in a session of its own: setsid, or treestate run --detach)';
  }
  return '';
}

/**
 * The directories criu reads by descriptor (through /proc/OUR_PID/fd/N, its
 * peer's), opened for the run: the images, and the log's as work directory
 * (criu takes a log name without directories, and writes stats-dump there).
 */
function openPlaces(imagesDir: string, logFile: string): RequestPlaces & { close(): void } {
  const flags = constants.O_RDONLY | constants.O_DIRECTORY;
  const imagesDirFd = openSync(imagesDir, flags);
  let workDirFd: number;
  try {
    workDirFd = openSync(dirname(logFile), flags);
  } catch (e) {
    closeSync(imagesDirFd);
    throw new TreeStateError('EINVAL', `cannot open the log's directory ${dirname(logFile)}: ${(e as Error).message}`, { cause: e });
  }
  return { imagesDirFd, workDirFd, logName: basename(logFile), close: () => (closeSync(imagesDirFd), closeSync(workDirFd)) };
}

/**
 * Runs criu for one verb: over RPC, or as a command line where RPC cannot
 * serve: `extraArgs` (a request carries no free-form arguments), and the
 * runs whose runner starts criu as its first program and so cannot hand it
 * the socket (a restore into a new pid namespace or into a cgroup of its
 * own), or that need an option the request subset lacks (--freeze-cgroup).
 */
async function criu(
  verb: CriuVerb,
  options: CriuOptions,
  b: { info: CriuInfo; started: number },
  placed: Placed,
  how: { commandLine: () => string[]; request: (places: RequestPlaces) => CriuReqMessage; onCommandLine?: boolean; root?: number },
  afterFailure: () => Promise<string>,
): Promise<{ argv: string[]; request?: Record<string, unknown>; resp?: CriuRespMessage }> {
  const run = { info: b.info, logFile: placed.logFile, started: b.started };
  if (options.extraArgs?.length || how.onCommandLine) {
    const argv = how.commandLine();
    await runCriu(verb, options, { ...run, argv }, afterFailure);
    return { argv };
  }
  const places = openPlaces(placed.imagesDir, placed.logFile);
  try {
    const req = how.request(places);
    const argv = ['swrk', '3'];
    const resp = await runCriu(verb, options, { ...run, argv, request: req, root: how.root }, afterFailure);
    const { images_dir_fd: _i, work_dir_fd: _w, network_lock, ...shown } = req.opts ?? { images_dir_fd: -1 };
    const lock = Object.entries(NetworkLockMethod).find(([, v]) => v === network_lock)?.[0];
    return { argv, request: { ...shown, ...(lock ? { network_lock: lock } : {}) }, resp };
  } finally {
    places.close();
  }
}

async function describeTree(pid: number): Promise<string> {
  try {
    const status = await getTreeState(pid);
    const off = status.differing.length ? `: ${describeThreads(status.differing)}` : '';
    return `the tree of ${pid} is ${status.state}${off}`;
  } catch (e) {
    return hasCode(e, 'ESRCH') ? `process ${pid} no longer exists` : `the state of ${pid} is unknown (${(e as Error).message})`;
  }
}

/** Confirms the final state (Running with `kept`, by default the tree's record, allowed in T); a mismatch is EMISMATCH naming the processes. */
async function verify(verb: CriuVerb, root: number, state: TreeState, options: CriuOptions, kept?: Identity[]): Promise<TreeStatus> {
  try {
    return await waitForState(root, state, { timeoutMs: options.verifyTimeoutMs ?? 5000, keptStopped: kept });
  } catch (e) {
    if (!(e instanceof TreeStateError) || !['ETIMEDOUT', 'ESRCH'].includes(e.code)) throw e;
    throw new TreeStateError('EMISMATCH', `criu ${verb} succeeded, but ${await describeTree(root)}, not ${state}`, { pid: root, threads: e.threads, cause: e });
  }
}

async function begin(verb: CriuVerb, options: CriuOptions): Promise<{ info: CriuInfo; started: number }> {
  const started = performance.now();
  if (!options || typeof options.imagesDir !== 'string' || options.imagesDir === '') {
    throw new TreeStateError('EINVAL', `${verb} needs an images directory (imagesDir)`);
  }
  checkNumbers(options, { timeoutMs: DURATION, verifyTimeoutMs: DURATION });
  options.onProgress?.({ verb, phase: 'locating criu', elapsedMs: 0 });
  const info = await locateCriu(options.criu);
  return { info, started };
}

interface Placed {
  /** Real paths, checked (images.ts): what criu is given. */
  imagesDir: string;
  logFile: string;
  warnings: string[];
}

function place(verb: CriuVerb, options: CriuOptions, images: { dir: string; warnings: string[] }): Placed {
  return { imagesDir: images.dir, logFile: checkLogFile(options.logFile ?? join(images.dir, `${verb}.log`)), warnings: images.warnings };
}

/** The live processes of a verified tree. */
function alive(status: TreeStatus): number[] {
  return status.processes.filter((p) => p.state !== 'dead').map((p) => p.pid);
}

function result(verb: CriuVerb, root: number, state: TreeState, processes: number[], b: { info: CriuInfo; started: number }, placed: Placed, argv: string[]): CriuResult {
  return {
    verb,
    root,
    finalState: state,
    state,
    processes,
    imagesDir: placed.imagesDir,
    logFile: placed.logFile,
    criu: { path: b.info.path, version: b.info.version },
    argv,
    elapsedMs: Math.round(performance.now() - b.started),
    warnings: placed.warnings,
  };
}

function checkChoice<T extends string>(name: string, value: T | undefined, choices: readonly T[], fallback: T): T {
  if (value === undefined) return fallback;
  if (!choices.includes(value)) throw new TreeStateError('EINVAL', `${name} must be one of ${choices.join(', ')}, not ${JSON.stringify(value)}`);
  return value;
}

/** criu dump, leaving the tree dead (default), running or stopped, and verifying it. */
export async function dump(pid: number, options: DumpOptions): Promise<CriuResult> {
  const root = checkPid(pid);
  checkNotSelf(root);
  const finalState = checkChoice('finalState', options?.finalState, ['dead', 'running', 'stopped'], 'dead');
  const b = await begin('dump', options);
  const before = await getTreeState(root); // ESRCH before criu runs
  refuseDeadRoot(before.processes[0], 'dump');
  const prevImagesDir = options.prevImagesDir ? checkImagesDir(options.prevImagesDir, 'the previous images directory') : undefined;
  const placed = place('dump', options, prepareDumpDir(options.imagesDir, options.allowSharedDir === true));
  // A tree that owns its cgroup is seized by freezing it: one step, forks included.
  const freezeCgroup = (await ownedCgroup(root))?.cgroup;
  const flags = withNetworkLock(options);
  // A failed dump leaves the tree running (criu resumes it): say what we see.
  const { argv, request } = await criu(
    'dump',
    options,
    b,
    placed,
    {
      commandLine: () => dumpArgs(root, placed.imagesDir, placed.logFile, finalState, { ...flags, prevImagesDir, freezeCgroup }),
      request: (places) => dumpRequest(root, finalState, places, { ...flags, parentImg: prevImagesDir && (relative(placed.imagesDir, prevImagesDir) || '.') }, options.hooks),
      onCommandLine: Boolean(freezeCgroup),
      root,
    },
    () => describeTree(root),
  );
  const stats = await readDumpStats(dirname(placed.logFile));
  options.onProgress?.({ verb: 'dump', phase: 'verifying', elapsedMs: performance.now() - b.started });
  let continued = false;
  const rootId = { pid: root, startTime: before.processes[0]!.startTime };
  // The application's own stops: what was stopped before the dump and not by treestate.
  const foundStopped = identitiesOf(before.processes.filter((p) => p.state === 'stopped'));
  const warnings: string[] = [];
  const appStopped = applicationStops(rootId, foundStopped, warnings);
  // The images say stopped for what treestate stopped too: note which, so
  // that a restore to Running resumes those and keeps the rest.
  const appKeys = new Set(appStopped.map((p) => p.pid));
  noteImageStops(placed.imagesDir, foundStopped.filter((p) => !appKeys.has(p.pid)).map((p) => p.pid));
  let kept: Identity[] = [];
  if (finalState === 'running' && before.counts.stopped > 0) {
    // --leave-running puts processes that were stopped before the dump back
    // into T, by detaching with SIGSTOP (so T shows a moment later). The
    // caller asked for Running, as the application had it: wait for those
    // stops to land, then continue what treestate had stopped, and keep
    // what the application had.
    const wereStopped = before.processes.filter((p) => p.state === 'stopped' || p.state === 'mixed').map((p) => p.pid);
    const deadline = performance.now() + 2000;
    while (performance.now() < deadline) {
      const now = await getTreeState(root);
      if (wereStopped.every((pid) => now.processes.find((p) => p.pid === pid)?.threads.some((t) => t.state === 'T') ?? true)) break;
      await new Promise((r) => setTimeout(r, 5));
    }
    kept = appStopped;
    await continueKeeping(root, {}, { root: rootId, kept });
    continued = true;
  }
  const status = await verify('dump', root, finalState, options, kept);
  const processes = alive(status);
  let keptStopped = status.keptStopped ?? [];
  if (finalState === 'stopped') {
    const recorded = recordStop(rootId, identitiesOf(status.processes.filter((p) => p.state !== 'dead')), foundStopped, 'dump');
    keptStopped = recorded.kept.map((p) => p.pid);
    warnings.push(...recorded.warnings);
  } else if (finalState === 'dead') {
    removeRecords(root);
  }
  const networkLocked = finalState === 'stopped' && Boolean(options.tcpEstablished);
  const linkRemaps = finalState === 'dead' || options.keepLinkRemaps ? undefined : await removeLinkRemaps(placed.imagesDir, root);
  const done = result('dump', root, finalState, finalState === 'dead' ? [] : processes, b, placed, argv);
  const dumped = { ...done, warnings: [...done.warnings, ...warnings], request, ...(stats ? { stats } : {}), continued, ...(keptStopped.length ? { keptStopped } : {}), ...(linkRemaps?.removed.length || linkRemaps?.left.length ? { linkRemaps } : {}), ...(networkLocked ? { networkLocked } : {}), ...(freezeCgroup ? { cgroup: freezeCgroup } : {}) };
  if (!options.verify) return dumped;
  options.onProgress?.({ verb: 'dump', phase: 'verifying', elapsedMs: performance.now() - b.started });
  if (finalState !== 'dead') {
    const bound = await pathBoundUnixSockets(processes);
    if (bound.length) {
      throw new TreeStateError('EVERIFY', `criu dump succeeded, but the images were not test-restored: the tree, still alive, holds unix sockets bound to ${bound.slice(0, 3).join(', ')}, and a test restore would unlink and re-create those files under it (verify a dump with --final-state dead, or one of a tree without path-bound unix sockets)`, {
        pid: root,
        details: { dump: dumped, sockets: bound },
      });
    }
  }
  // What the images hold must come back (verify.ts reads them).
  const verified = await verifyImages(placed.imagesDir, { ...withNetworkLock(options), criu: b.info.path, expected: before });
  return { ...dumped, verified, elapsedMs: Math.round(performance.now() - b.started) };
}

/**
 * The restored processes (host identities) that the images say were stopped
 * at dump time, but those treestate had stopped (its note beside the images). In a new pid namespace the images' pids are the namespace's:
 * each restored process is matched by its pid there.
 */
function imageStops(checkpoint: Checkpoint | undefined, stoppedByTreestate: number[], restored: TreeStatus, inNamespace: boolean): Identity[] {
  const ours = new Set(stoppedByTreestate);
  const stopped = new Set((checkpoint?.processes ?? []).filter((p) => p.state === 'stopped' && !ours.has(p.pid)).map((p) => p.pid));
  if (stopped.size === 0) return [];
  return identitiesOf(restored.processes.filter((p) => p.state !== 'dead' && stopped.has(inNamespace ? innermostPid(p.pid) : p.pid)));
}

/** criu pre-dump: the tree keeps running. Refused before criu runs where the kernel has no dirty-memory tracking. */
export async function preDump(pid: number, options: PreDumpOptions): Promise<CriuResult> {
  const root = checkPid(pid);
  checkNotSelf(root);
  const b = await begin('pre-dump', options);
  if (!(await hasDirtyTracking(b.info))) {
    throw new TreeStateError(
      'ENODIRTYTRACK',
      'pre-dump needs the kernel to track dirty memory (soft-dirty), and this kernel does not (`criu check --feature mem_dirty_track`: "Dirty tracking is OFF"); use a plain dump instead',
    );
  }
  refuseDeadRoot((await getTreeState(root)).processes[0], 'pre-dump');
  const prevImagesDir = options.prevImagesDir ? checkImagesDir(options.prevImagesDir, 'the previous images directory') : undefined;
  const placed = place('pre-dump', options, prepareDumpDir(options.imagesDir, options.allowSharedDir === true));
  const { argv, request } = await criu(
    'pre-dump',
    options,
    b,
    placed,
    {
      commandLine: () => preDumpArgs(root, placed.imagesDir, placed.logFile, { ...options, prevImagesDir }),
      request: (places) => preDumpRequest(root, places, { ...options, parentImg: prevImagesDir && (relative(placed.imagesDir, prevImagesDir) || '.') }, options.hooks),
      root,
    },
    () => describeTree(root),
  );
  options.onProgress?.({ verb: 'pre-dump', phase: 'verifying', elapsedMs: performance.now() - b.started });
  return { ...result('pre-dump', root, 'running', alive(await verify('pre-dump', root, 'running', options)), b, placed, argv), request };
}

/** criu restore --restore-detached, leaving the tree running (default) or stopped; resolves with the restored root. */
export async function restore(options: RestoreOptions): Promise<CriuResult> {
  const finalState = checkChoice('finalState', options?.finalState, ['running', 'stopped'], 'running');
  const inNewNamespace = checkChoice('pidNamespace', options?.pidNamespace, ['host', 'new'], 'host') === 'new';
  if (inNewNamespace && options.runner) throw new TreeStateError('EINVAL', 'pidNamespace "new" runs criu under its own init: it takes no runner');
  if (options?.cgroup && options.runner) throw new TreeStateError('EINVAL', 'restore takes cgroup or runner, not both: a restore into a cgroup runs criu under treestate-run');
  if (options?.cgroup && inNewNamespace) throw new TreeStateError('EINVAL', 'restore takes cgroup or pidNamespace "new", not both (yet)');
  const b = await begin('restore', options);
  // Images are code criu runs: only the caller's own, unchanged by anyone else.
  const placed = place('restore', options, { dir: checkImagesDir(options.imagesDir, 'the images directory'), warnings: [] });
  const ownNetwork = checkChoice('networkNamespace', options?.networkNamespace, ['host', 'new'], 'host') === 'new';
  if (ownNetwork && !inNewNamespace) throw new TreeStateError('EINVAL', 'networkNamespace "new" goes with pidNamespace "new"');
  const namespace = inNewNamespace ? new PidNamespaceRunner(ownNetwork) : undefined;
  let kept = false;
  // What criu will restore, and which processes were stopped at dump time.
  // On the host the pids must be free, so images that cannot be read are
  // EIMAGES here, before criu runs; in a new pid namespace criu is left to
  // name the damage (dump --verify's test restore), and if it restores them
  // all the same, nothing is kept stopped, which the result says.
  let checkpoint: Checkpoint | undefined;
  const unread: string[] = [];
  try {
    checkpoint = await readCheckpoint(placed.imagesDir);
  } catch (e) {
    if (!inNewNamespace || !hasCode(e, 'EIMAGES')) throw e;
    unread.push(`which processes were stopped at dump time cannot be read from the images (${(e as Error).message}): none is kept stopped on that account`);
  }
  // In a new pid namespace the images' pids are free whatever the host runs.
  if (checkpoint && !inNewNamespace) await waitForImagePids(checkpoint, { onWait: () => options.onProgress?.({ verb: 'restore', phase: 'waiting for pids', elapsedMs: performance.now() - b.started }) });
  // criu refuses to overwrite a pid file: give it a fresh one.
  const pidDir = mkdtempSync(join(tmpdir(), 'treestate-restore-'));
  const pidFile = join(pidDir, 'root.pid');
  try {
    // To Running, criu resumes the tree itself, as a plain `criu restore`
    // does, when the images say no process was stopped at dump time and no
    // hook is to run before the tree resumes. Otherwise restore stopped and
    // continue with the engine: criu restores a process that was stopped at
    // dump time stopped (sending SIGSTOP as it detaches, so T shows late),
    // hooks (pre-resume, post-resume) are promised a tree that has not run,
    // and this way the tree deterministically ends as asked, whatever it was
    // at dump time.
    const direct = finalState === 'running' && checkpoint !== undefined && !checkpoint.processes.some((p) => p.state === 'stopped') && !hasHooks(options.hooks);
    const inOwnCgroup = Boolean(options.cgroup);
    const runner = namespace ?? (inOwnCgroup ? cgroupRestoreRunner(pidFile, { name: typeof options.cgroup === 'string' ? options.cgroup : undefined }) : options.runner);
    const flags = withNetworkLock(options);
    // The pid-namespace and cgroup runners start criu as their first program:
    // a command line with a pid file. Over RPC the root comes in criu's answer.
    const { argv, request, resp } = await criu(
      'restore',
      { ...options, runner },
      b,
      placed,
      {
        commandLine: () => restoreArgs(placed.imagesDir, placed.logFile, pidFile, direct ? 'running' : 'stopped', { ...flags, inOwnCgroup }),
        request: (places) => restoreRequest(places, flags, options.hooks, direct ? 'running' : 'stopped'),
        onCommandLine: Boolean(namespace) || inOwnCgroup,
      },
      async () => 'criu removes what it had restored when it fails',
    );
    const written = resp ? resp.restore?.pid ?? 0 : Number(readText(pidFile).trim());
    if (!Number.isSafeInteger(written) || written <= 0) throw new TreeStateError('ECRIU', `criu restore succeeded but gave no root pid; log: ${placed.logFile}`);
    const located = namespace?.locate(written);
    const root = located?.host ?? written;
    options.onProgress?.({ verb: 'restore', phase: 'verifying', elapsedMs: performance.now() - b.started });
    const warnings: string[] = [...unread];
    let appStops: Identity[] = [];
    if (!direct) {
      const restored = await verify('restore', root, 'stopped', options);
      // Stopped at dump time is the application's own stop: a restore to
      // Running leaves it stopped, as criu's own restore does; a restore to
      // Stopped remembers it, for the continue to come.
      const rootId = { pid: root, startTime: restored.processes[0]!.startTime };
      const note = readImageStops(placed.imagesDir);
      if (note.warning) warnings.push(note.warning);
      appStops = imageStops(checkpoint, note.stoppedByTreestate, restored, Boolean(namespace));
      if (finalState === 'running') await continueKeeping(root, {}, { root: rootId, kept: appStops });
      else warnings.push(...recordStop(rootId, identitiesOf(restored.processes.filter((p) => p.state !== 'dead')), appStops, 'restore').warnings);
    }
    const cgroup = (runner as { cgroup?: string } | undefined)?.cgroup;
    const status = await verify('restore', root, finalState, options, finalState === 'running' ? appStops : undefined);
    const keptStopped = finalState === 'running' ? status.keptStopped ?? [] : appStops.map((p) => p.pid);
    const done = {
      ...result('restore', root, finalState, alive(status), b, placed, argv),
      rootStartTime: status.processes[0]!.startTime,
      request,
      continued: finalState === 'running' && !direct,
      ...(keptStopped.length ? { keptStopped } : {}),
      ...(inOwnCgroup && cgroup ? { cgroup } : {}),
    };
    done.warnings.push(...warnings);
    kept = true;
    return located ? { ...done, pidNamespace: { pid: located.pid, init: located.init } } : done;
  } finally {
    rmSync(pidDir, { recursive: true, force: true });
    // A failed restore leaves no namespace behind: its init kills what is in it.
    await namespace?.finish(kept);
  }
}
