// dump, pre-dump and restore through the real criu, ending in the final state
// the caller chose, and proving it: after criu exits the engine confirms the
// state (criu detaches with SIGSTOP without waiting, so T can show late).
import { accessSync, constants, existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { TreeStateError, describePids, describeThreads, hasCode } from '../errors.js';
import { checkNotSelf, checkPid, getTreeState, refuseDeadRoot, type TreeState } from '../tree.js';
import { continueTree, waitForState } from '../transitions.js';
import { dumpArgs, preDumpArgs, restoreArgs, type CriuFlags, type DumpFinalState, type RestoreFinalState } from './args.js';
import { hasDirtyTracking, locateCriu, type CriuInfo } from './locate.js';
import { criuErrorLines, diagnoseCriuFailure } from './diagnose.js';
import { makeDirs } from './dirs.js';
import { stopCriu, type CriuStop } from './interrupt.js';
import { removeLinkRemaps, type LinkRemapCleanup } from './leftovers.js';
import { waitForImagePids } from './preflight-pids.js';
import { childProcessRunner, type CommandRunner } from './runner.js';

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
  /** criu's log (default IMAGES_DIR/VERB.log). */
  logFile?: string;
  /** Starts criu; the testing harness passes its reaper so restored trees land there. */
  runner?: CommandRunner;
  onProgress?: (progress: CriuProgress) => void;
}

export interface DumpOptions extends CriuOptions {
  /** Default `dead`, as criu's. */
  finalState?: DumpFinalState;
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
  /** criu's argument vector. */
  argv: string[];
  elapsedMs: number;
  /** Whether treestate continued the tree after criu to reach Running (see restore, and dump of a tree that was stopped). */
  continued?: boolean;
  /** dump leaving the tree alive: the link_remap files criu had left beside the program's files, removed (and any it could not). */
  linkRemaps?: LinkRemapCleanup;
}

const DEFAULT_TIMEOUT_MS = 120_000;

function imagesIn(dir: string): string[] {
  return readdirSync(dir).filter((f) => f.endsWith('.img'));
}

/** A directory for new images: created if missing; refused if unwritable or already holding images. */
function prepareDumpDir(dir: string): void {
  if (!existsSync(dir)) {
    try {
      makeDirs(dir);
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

export { criuErrorLines } from './diagnose.js';

function readText(path: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return '';
  }
}

interface Run {
  info: CriuInfo;
  argv: string[];
  logFile: string;
  started: number;
}

/** Runs criu once with a timeout and progress; resolves when it exited 0, otherwise rejects with ECRIU/ETIMEDOUT. */
async function runCriu(verb: CriuVerb, options: CriuOptions, run: Run, afterFailure: () => Promise<string>): Promise<void> {
  const timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  const out = `${run.logFile}.out`;
  const progress = options.onProgress;
  const tick = progress ? setInterval(() => progress({ verb, phase: 'running criu', elapsedMs: performance.now() - run.started }), 250) : undefined;
  try {
    progress?.({ verb, phase: 'running criu', elapsedMs: performance.now() - run.started });
    const running = await (options.runner ?? childProcessRunner).run(run.info.path, run.argv, { out });
    let stopping: Promise<CriuStop> | undefined;
    const timer = setTimeout(() => {
      stopping = stopCriu(verb, running);
    }, timeoutMs);
    const exit = await running.exited.finally(() => clearTimeout(timer));
    const stop = await stopping;
    // criu may exit 0 after the timer fired: it was exiting already, or it
    // finished the dump it was interrupted in (SIGALRM does not always make
    // it give up). That criu finished, and its tree is verified like any other.
    const finished = stop && exit.code === 0 && stop.killed.length === 0;
    if (stop && !finished) {
      const also = stop.killed.length ? ` together with the ${stop.killed.length} process(es) it had started (${describePids(stop.killed)})` : '';
      const how = stop.how === 'killed' ? `was killed${also}` : "was interrupted (SIGALRM, criu's own timeout signal) and gave up";
      throw new TreeStateError('ETIMEDOUT', `criu ${verb} did not finish within ${timeoutMs} ms and ${how}; ${await afterFailure()}; log: ${run.logFile}`, {
        details: { logFile: run.logFile, argv: run.argv, killed: stop.killed, how: stop.how },
      });
    }
    if (exit.code !== 0) {
      const lines = [...criuErrorLines(readText(run.logFile)), ...criuErrorLines(readText(out), 3)];
      const how = exit.code === null ? `was killed by signal ${exit.signal}` : `exited with ${exit.code}`;
      const cause = await diagnoseCriuFailure(lines);
      throw new TreeStateError('ECRIU', `criu ${verb} ${how}${cause ? `: ${cause}` : ''}; ${await afterFailure()}; log: ${run.logFile}${lines.length ? `\n  ${lines.join('\n  ')}` : ''}`, {
        details: { logFile: run.logFile, argv: run.argv, exitCode: exit.code, signal: exit.signal, errors: lines, ...(cause ? { cause } : {}) },
      });
    }
  } finally {
    clearInterval(tick);
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
  refuseDeadRoot(before.processes[0], 'dump');
  if (options.prevImagesDir) checkImagesDir(resolve(options.prevImagesDir), 'the previous images directory');
  prepareDumpDir(b.imagesDir);
  const argv = dumpArgs(root, b.imagesDir, b.logFile, finalState, { ...options, prevImagesDir: options.prevImagesDir && resolve(options.prevImagesDir) });
  // A failed dump leaves the tree running (criu resumes it): say what we see.
  await runCriu('dump', options, { info: b.info, argv, logFile: b.logFile, started: b.started }, () => describeTree(root));
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
  const linkRemaps = finalState === 'dead' || options.keepLinkRemaps ? undefined : await removeLinkRemaps(b.imagesDir, root);
  return { ...result('dump', root, finalState, finalState === 'dead' ? [] : processes, b, argv), continued, ...(linkRemaps?.removed.length || linkRemaps?.left.length ? { linkRemaps } : {}) };
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
  if (options.prevImagesDir) checkImagesDir(resolve(options.prevImagesDir), 'the previous images directory');
  prepareDumpDir(b.imagesDir);
  const argv = preDumpArgs(root, b.imagesDir, b.logFile, { ...options, prevImagesDir: options.prevImagesDir && resolve(options.prevImagesDir) });
  await runCriu('pre-dump', options, { info: b.info, argv, logFile: b.logFile, started: b.started }, () => describeTree(root));
  options.onProgress?.({ verb: 'pre-dump', phase: 'verifying', elapsedMs: performance.now() - b.started });
  return result('pre-dump', root, 'running', await verify('pre-dump', root, 'running', options), b, argv);
}

/** criu restore --restore-detached, leaving the tree running (default) or stopped; resolves with the restored root. */
export async function restore(options: RestoreOptions): Promise<CriuResult> {
  const finalState = checkChoice('finalState', options?.finalState, ['running', 'stopped'], 'running');
  const b = await begin('restore', options);
  checkImagesDir(b.imagesDir, 'the images directory');
  await waitForImagePids(b.imagesDir, { onWait: () => options.onProgress?.({ verb: 'restore', phase: 'waiting for pids', elapsedMs: performance.now() - b.started }) });
  // criu refuses to overwrite a pid file: give it a fresh one.
  const pidDir = mkdtempSync(join(tmpdir(), 'treestate-restore-'));
  const pidFile = join(pidDir, 'root.pid');
  try {
    // Always restore stopped, then continue with the engine when Running was
    // asked for: criu restores a process that was stopped at dump time
    // stopped (sending SIGSTOP as it detaches, so T shows late), and this way
    // the tree deterministically ends as asked, whatever it was at dump time.
    const argv = restoreArgs(b.imagesDir, b.logFile, pidFile, 'stopped', options);
    await runCriu('restore', options, { info: b.info, argv, logFile: b.logFile, started: b.started }, async () => 'criu removes what it had restored when it fails');
    const root = Number(readText(pidFile).trim());
    if (!Number.isSafeInteger(root) || root <= 0) throw new TreeStateError('ECRIU', `criu restore exited 0 but wrote no root pid to ${pidFile}; log: ${b.logFile}`);
    options.onProgress?.({ verb: 'restore', phase: 'verifying', elapsedMs: performance.now() - b.started });
    await verify('restore', root, 'stopped', options);
    if (finalState === 'running') await continueTree(root);
    return { ...result('restore', root, finalState, await verify('restore', root, finalState, options), b, argv), continued: finalState === 'running' };
  } finally {
    rmSync(pidDir, { recursive: true, force: true });
  }
}
