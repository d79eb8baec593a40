// dump, pre-dump and restore through the real criu, ending in the final state
// the caller chose, and proving it: after criu exits the engine confirms the
// state (criu detaches with SIGSTOP without waiting, so T can show late).
import { accessSync, closeSync, constants, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, dirname, join, relative, resolve } from 'node:path';
import { TreeStateError, describePids, describeThreads, hasCode } from '../errors.js';
import { checkNotSelf, checkPid, getTreeState, type TreeState } from '../tree.js';
import { continueTree, killTree, waitForState } from '../transitions.js';
import { dumpArgs, preDumpArgs, restoreArgs, type CriuFlags, type DumpFinalState, type RestoreFinalState } from './args.js';
import { hasDirtyTracking, locateCriu, onPath, type CriuInfo } from './locate.js';
import { childProcessRunner, type CommandRunner, type RunningCommand } from './runner.js';
import { connectCriu } from './rpc/client.js';
import { hasHooks, hookHandler, type CriuHooks, type HookLog } from './rpc/hooks.js';
import { NetworkLockMethod, type CriuReqMessage, type CriuRespMessage } from './rpc/proto.js';
import { dumpRequest, preDumpRequest, restoreRequest, type RequestPlaces } from './rpc/requests.js';
import { readDumpStats, type DumpStats } from './rpc/stats.js';

export type CriuVerb = 'dump' | 'restore' | 'pre-dump';

export interface CriuProgress {
  verb: CriuVerb;
  phase: 'locating criu' | 'running criu' | 'verifying';
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
  /** criu's log (default IMAGES_DIR/VERB.log). */
  logFile?: string;
  /** Starts criu; the testing harness passes its reaper so restored trees land there. */
  runner?: CommandRunner;
  /** Callbacks for criu's notifications, each awaited while criu waits (see docs/criu-rpc.md). */
  hooks?: CriuHooks;
  onProgress?: (progress: CriuProgress) => void;
}

export interface DumpOptions extends CriuOptions {
  /** Default `dead`, as criu's. */
  finalState?: DumpFinalState;
  /** Finish an iterative dump started by preDump into this directory. */
  prevImagesDir?: string;
}

export interface RestoreOptions extends CriuOptions {
  /** Default `running`, as criu's. */
  finalState?: RestoreFinalState;
}

export interface PreDumpOptions extends CriuOptions {
  prevImagesDir?: string;
}

export interface CriuResult {
  verb: CriuVerb;
  /** The tree's root pid (for restore: the restored root, from --pidfile). */
  root: number;
  /** The state asked for … */
  finalState: TreeState;
  /** … and the state the engine saw. */
  state: TreeState;
  /** Live processes of the tree after criu (empty for dead). */
  processes: number[];
  imagesDir: string;
  logFile: string;
  criu: { path: string; version: string };
  /** criu's argument vector: `swrk 3` over RPC (the request is `request`), the whole command line with `extraArgs`. */
  argv: string[];
  /** The RPC request's options, without the descriptors (absent with `extraArgs`). */
  request?: Record<string, unknown>;
  /** Dump: criu's statistics (from its stats-dump). */
  stats?: DumpStats;
  elapsedMs: number;
  /** Whether treestate continued the tree after criu to reach Running (see restore, and dump of a tree that was stopped). */
  continued?: boolean;
  /**
   * A dump with `tcpEstablished` that left the tree stopped: criu keeps the
   * tree's established connections locked (their packets dropped) until a
   * restore from these images unlocks them, so continuing the original leaves
   * those connections hanging.
   */
  networkLocked?: boolean;
}

const DEFAULT_TIMEOUT_MS = 120_000;

function imagesIn(dir: string): string[] {
  return readdirSync(dir).filter((f) => f.endsWith('.img'));
}

/** A directory for new images: created if missing; refused if unwritable or already holding images. */
function prepareDumpDir(dir: string): void {
  if (!existsSync(dir)) {
    try {
      mkdirSync(dir, { recursive: true });
    } catch (e) {
      throw new TreeStateError('EIMAGES', `cannot create the images directory ${dir}: ${(e as Error).message}`, { cause: e });
    }
  }
  if (!statSync(dir).isDirectory()) throw new TreeStateError('EIMAGES', `${dir} is not a directory`);
  // access(2) says yes to root even on a read-only mount: try a real write.
  const probe = join(dir, `.treestate-write-test-${process.pid}`);
  try {
    accessSync(dir, constants.W_OK);
    writeFileSync(probe, '');
    rmSync(probe);
  } catch (e) {
    throw new TreeStateError('EIMAGES', `the images directory ${dir} is not writable: ${(e as Error).message}`, { cause: e });
  }
  const images = imagesIn(dir);
  if (images.length > 0) {
    throw new TreeStateError('EIMAGES', `the images directory ${dir} already holds ${images.length} images (${images.slice(0, 3).join(', ')}…); treestate never overwrites or deletes images: use an empty directory`);
  }
}

function checkImagesDir(dir: string, what: string): void {
  if (!existsSync(dir)) throw new TreeStateError('EIMAGES', `${what} ${dir} does not exist`);
  if (!statSync(dir).isDirectory()) throw new TreeStateError('EIMAGES', `${what} ${dir} is not a directory`);
  if (!existsSync(join(dir, 'inventory.img'))) {
    throw new TreeStateError('EIMAGES', `${what} ${dir} holds no CRIU images (no inventory.img)`);
  }
}

/** The error lines criu logged, minus the RLIMIT_NOFILE one it always logs and survives. */
export function criuErrorLines(text: string, limit = 6): string[] {
  return text
    .split('\n')
    .filter((l) => /\bError\b|\berror\b|BUG/.test(l) && !/RLIMIT_NOFILE/.test(l))
    .slice(-limit)
    .map((l) => l.trim());
}

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

function readText(path: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return '';
  }
}

interface Run {
  info: CriuInfo;
  /** The command line, used only with `extraArgs`, which RPC cannot carry. */
  argv: string[];
  logFile: string;
  started: number;
  /** Over RPC (criu swrk): the request, and the tree's root as the hooks should first see it. */
  request?: CriuReqMessage;
  root?: number;
}

/**
 * Kills criu on a timeout, with every process it has started: a restore cut
 * short has restored processes that are still criu's children, and a bare
 * SIGKILL to criu would leave them to run on, orphaned and unreported.
 * Resolves with the pids killed besides criu.
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

/**
 * Runs criu once with a timeout and progress: over RPC (`criu swrk`, the
 * request answered by one response, notifications by the hooks), or as a
 * command line for `extraArgs`. Resolves with criu's response when it
 * succeeded; otherwise rejects with ECRIU, EHOOK or ETIMEDOUT.
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
    if (run.request) {
      const connection = await connectCriu(run.info.path, runner, out);
      running = connection;
      hangUp = connection.close;
      const onNotify = hasHooks(options.hooks) ? hookHandler(options.hooks!, hooks, run.root) : undefined;
      answered = connection.call(run.request, onNotify).finally(hangUp);
    } else {
      running = await runner.run(run.info.path, run.argv, { out });
    }
    let killed: Promise<number[]> | undefined;
    let gone = (_: null) => {};
    // A hook that never settles would keep us from reading criu's end of
    // file: once the timeout has killed criu, stop waiting for the answer.
    const killedAndGone = new Promise<null>((resolve) => (gone = resolve));
    const timer = setTimeout(() => {
      killed = killCriu(running.pid);
      void killed.then(() => running.exited).then(() => gone(null));
    }, timeoutMs);
    const resp = await Promise.race([answered, killedAndGone]);
    hangUp();
    // criu has answered: the restored tree is still swrk's child until swrk
    // exits, and a late timeout must not kill it with swrk.
    if (resp) clearTimeout(timer);
    const exit = await running.exited.finally(() => clearTimeout(timer));
    const ok = run.request ? resp?.success === true : exit.code === 0;
    // The timer may fire while criu is exiting after a success: its exit is
    // then not yet known here, and the kill finds criu gone and kills
    // nothing. That criu finished; a restored tree is complete and is
    // verified like any other.
    const finishedFirst = killed && ok && (await killed).length === 0;
    if (killed && !finishedFirst) {
      const started = await killed;
      const also = started.length ? ` together with the ${started.length} process(es) it had started (${describePids(started)})` : '';
      throw new TreeStateError('ETIMEDOUT', `criu ${verb} did not finish within ${timeoutMs} ms and was killed${also}; ${await afterFailure()}; log: ${run.logFile}`, {
        details: { logFile: run.logFile, argv: run.argv, killed: started },
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
      const how = resp
        ? `failed: ${first || 'criu gave no reason'}`
        : exit.code === null
          ? `was killed by signal ${exit.signal}`
          : `exited with ${exit.code}${run.request ? ' without answering' : ''}`;
      const hint = /Iptables configuration failed|nftables.*(fail|error)|Can't lock network/i.test(log) ? ` (${NETWORK_LOCK_HINT})` : '';
      throw new TreeStateError('ECRIU', `criu ${verb} ${how}${hint}; ${await afterFailure()}; log: ${run.logFile}${lines.length ? `\n  ${lines.join('\n  ')}` : ''}`, {
        ...(resp?.cr_errno ? { errno: resp.cr_errno } : {}),
        details: { logFile: run.logFile, argv: run.argv, exitCode: exit.code, signal: exit.signal, errors: lines, ...(resp?.cr_errmsg ? { criuError: resp.cr_errmsg } : {}) },
      });
    }
    return resp ?? undefined;
  } finally {
    clearInterval(tick);
  }
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

/** Runs criu for one verb: over RPC, or with `extraArgs` (which only a command line can carry) as one. */
async function criu(
  verb: CriuVerb,
  options: CriuOptions,
  b: { info: CriuInfo; started: number; imagesDir: string; logFile: string },
  commandLine: () => string[],
  request: (places: RequestPlaces) => CriuReqMessage,
  afterFailure: () => Promise<string>,
  root?: number,
): Promise<{ argv: string[]; request?: Record<string, unknown>; resp?: CriuRespMessage }> {
  const run = { info: b.info, logFile: b.logFile, started: b.started };
  if (options.extraArgs?.length) {
    const argv = commandLine();
    await runCriu(verb, options, { ...run, argv }, afterFailure);
    return { argv };
  }
  const places = openPlaces(b.imagesDir, b.logFile);
  try {
    const req = request(places);
    const argv = ['swrk', '3'];
    const resp = await runCriu(verb, options, { ...run, argv, request: req, root }, afterFailure);
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

/** Confirms the final state; a mismatch is EMISMATCH naming the processes. */
async function verify(verb: CriuVerb, root: number, state: TreeState, options: CriuOptions): Promise<number[]> {
  try {
    const status = await waitForState(root, state, { timeoutMs: options.verifyTimeoutMs ?? 5000 });
    return status.processes.filter((p) => p.state !== 'dead').map((p) => p.pid);
  } catch (e) {
    if (!(e instanceof TreeStateError) || !['ETIMEDOUT', 'ESRCH'].includes(e.code)) throw e;
    throw new TreeStateError('EMISMATCH', `criu ${verb} succeeded, but ${await describeTree(root)}, not ${state}`, { pid: root, threads: e.threads, cause: e });
  }
}

async function begin(verb: CriuVerb, options: CriuOptions): Promise<{ info: CriuInfo; started: number; imagesDir: string; logFile: string }> {
  const started = performance.now();
  if (!options || typeof options.imagesDir !== 'string' || options.imagesDir === '') {
    throw new TreeStateError('EINVAL', `${verb} needs an images directory (imagesDir)`);
  }
  const imagesDir = resolve(options.imagesDir);
  options.onProgress?.({ verb, phase: 'locating criu', elapsedMs: 0 });
  const info = await locateCriu(options.criu);
  return { info, started, imagesDir, logFile: resolve(options.logFile ?? join(imagesDir, `${verb}.log`)) };
}

function result(verb: CriuVerb, root: number, state: TreeState, processes: number[], b: { info: CriuInfo; started: number; imagesDir: string; logFile: string }, argv: string[]): CriuResult {
  return {
    verb,
    root,
    finalState: state,
    state,
    processes,
    imagesDir: b.imagesDir,
    logFile: b.logFile,
    criu: { path: b.info.path, version: b.info.version },
    argv,
    elapsedMs: Math.round(performance.now() - b.started),
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
  if (options.prevImagesDir) checkImagesDir(resolve(options.prevImagesDir), 'the previous images directory');
  prepareDumpDir(b.imagesDir);
  const flags = withNetworkLock(options);
  const prev = options.prevImagesDir && resolve(options.prevImagesDir);
  // A failed dump leaves the tree running (criu resumes it): say what we see.
  const { argv, request } = await criu(
    'dump',
    options,
    b,
    () => dumpArgs(root, b.imagesDir, b.logFile, finalState, { ...flags, prevImagesDir: prev }),
    (places) => dumpRequest(root, finalState, places, { ...flags, parentImg: prev && (relative(b.imagesDir, prev) || '.') }, options.hooks),
    () => describeTree(root),
    root,
  );
  const stats = readDumpStats(dirname(b.logFile));
  options.onProgress?.({ verb: 'dump', phase: 'verifying', elapsedMs: performance.now() - b.started });
  let continued = false;
  if (finalState === 'running' && before.counts.stopped > 0) {
    // --leave-running puts processes that were stopped before the dump back
    // into T, by detaching with SIGSTOP (so T shows a moment later). The
    // caller asked for Running: wait for those stops to land, then continue.
    const wereStopped = before.processes.filter((p) => p.state === 'stopped' || p.state === 'mixed').map((p) => p.pid);
    const deadline = performance.now() + 2000;
    while (performance.now() < deadline) {
      const now = await getTreeState(root);
      if (wereStopped.every((pid) => now.processes.find((p) => p.pid === pid)?.threads.some((t) => t.state === 'T') ?? true)) break;
      await new Promise((r) => setTimeout(r, 5));
    }
    await continueTree(root);
    continued = true;
  }
  const processes = await verify('dump', root, finalState, options);
  const networkLocked = finalState === 'stopped' && Boolean(options.tcpEstablished);
  return { ...result('dump', root, finalState, finalState === 'dead' ? [] : processes, b, argv), request, continued, ...(networkLocked ? { networkLocked } : {}), ...(stats ? { stats } : {}) };
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
  await getTreeState(root);
  if (options.prevImagesDir) checkImagesDir(resolve(options.prevImagesDir), 'the previous images directory');
  prepareDumpDir(b.imagesDir);
  const prev = options.prevImagesDir && resolve(options.prevImagesDir);
  const { argv, request } = await criu(
    'pre-dump',
    options,
    b,
    () => preDumpArgs(root, b.imagesDir, b.logFile, { ...options, prevImagesDir: prev }),
    (places) => preDumpRequest(root, places, { ...options, parentImg: prev && (relative(b.imagesDir, prev) || '.') }, options.hooks),
    () => describeTree(root),
    root,
  );
  options.onProgress?.({ verb: 'pre-dump', phase: 'verifying', elapsedMs: performance.now() - b.started });
  return { ...result('pre-dump', root, 'running', await verify('pre-dump', root, 'running', options), b, argv), request };
}

/** criu restore --restore-detached, leaving the tree running (default) or stopped; resolves with the restored root. */
export async function restore(options: RestoreOptions): Promise<CriuResult> {
  const finalState = checkChoice('finalState', options?.finalState, ['running', 'stopped'], 'running');
  const b = await begin('restore', options);
  checkImagesDir(b.imagesDir, 'the images directory');
  // criu refuses to overwrite a pid file: give the command line a fresh one
  // (over RPC the root comes in criu's response).
  const pidDir = options.extraArgs?.length ? mkdtempSync(join(tmpdir(), 'treestate-restore-')) : undefined;
  const pidFile = pidDir && join(pidDir, 'root.pid');
  try {
    // Always restore stopped, then continue with the engine when Running was
    // asked for: criu restores a process that was stopped at dump time
    // stopped (sending SIGSTOP as it detaches, so T shows late), and this way
    // the tree deterministically ends as asked, whatever it was at dump time.
    const flags = withNetworkLock(options);
    const { argv, request, resp } = await criu(
      'restore',
      options,
      b,
      () => restoreArgs(b.imagesDir, b.logFile, pidFile!, 'stopped', flags),
      (places) => restoreRequest(places, flags, options.hooks),
      async () => 'criu removes what it had restored when it fails',
    );
    const root = resp ? resp.restore?.pid ?? 0 : Number(readText(pidFile!).trim());
    if (!Number.isSafeInteger(root) || root <= 0) throw new TreeStateError('ECRIU', `criu restore succeeded but gave no root pid; log: ${b.logFile}`);
    options.onProgress?.({ verb: 'restore', phase: 'verifying', elapsedMs: performance.now() - b.started });
    await verify('restore', root, 'stopped', options);
    if (finalState === 'running') await continueTree(root);
    return { ...result('restore', root, finalState, await verify('restore', root, finalState, options), b, argv), request, continued: finalState === 'running' };
  } finally {
    if (pidDir) rmSync(pidDir, { recursive: true, force: true });
  }
}
