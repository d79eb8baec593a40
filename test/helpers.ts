// Shared bits of the suite. Trees come from the harness (src/testing), not from here.
import { execFile, execFileSync, spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { cpSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { locateCriu } from '../src/criu/locate.js';
import { TreeStateError } from '../src/errors.js';
import { packageRoot, type NativeWalkOptions, type NativeWalkResult } from '../src/native.js';
import { readStatFields } from '../src/proc-stat.js';
import { observePasses } from '../src/testing/index.js';

export const cliPath = fileURLToPath(new URL('../bin/treestate.cjs', import.meta.url));

export interface CliRun {
  code: number;
  stdout: string;
  stderr: string;
}

/** Whether every directory from / down to `path` lets other users in. */
function openToOthers(path: string): boolean {
  for (let dir = path; ; dir = dirname(dir)) {
    if ((statSync(dir).mode & 0o005) !== 0o005) return false;
    if (dirname(dir) === dir) return true;
  }
}

let unprivilegedCli: string | undefined;

/**
 * The CLI as another user can run it: the checkout itself when it is open to
 * others, otherwise a world-readable copy of what the CLI needs at run time
 * (a CI checkout may live below a private directory).
 */
function cliFor(uid: number | undefined): string {
  if (uid === undefined || uid === 0) return cliPath;
  if (unprivilegedCli) return unprivilegedCli;
  const root = packageRoot();
  if (openToOthers(join(root, 'build', 'Release')) && openToOthers(join(root, 'dist'))) return (unprivilegedCli = cliPath);
  const copy = mkdtempSync(join(tmpdir(), 'treestate-cli-'));
  for (const part of ['package.json', 'bin', 'dist', 'scripts/setup-criu.sh', 'build/Release/treestate.node', 'build/Release/treestate-fixture', 'build/Release/treestate-reaper', 'node_modules/bindings', 'node_modules/file-uri-to-path']) {
    cpSync(join(root, part), join(copy, part), { recursive: true });
  }
  execFileSync('chmod', ['-R', 'a+rX', copy]);
  process.on('exit', () => rmSync(copy, { recursive: true, force: true }));
  return (unprivilegedCli = join(copy, 'bin', 'treestate.cjs'));
}

/**
 * Runs the built CLI (dist/) as a separate process, the way a user does; as
 * another user with `uid`; with at most `fdLimit` open files (prlimit);
 * with `hidepid`, in a private mount namespace whose /proc is a new procfs
 * mounted hidepid=invisible (the host's /proc is untouched, and the mount
 * goes away with the namespace when the CLI exits), as `uid` through setpriv.
 */
export function cli(args: string[], options: { env?: NodeJS.ProcessEnv; uid?: number; gid?: number; timeoutMs?: number; fdLimit?: number; hidepid?: boolean } = {}): Promise<CliRun> {
  const path = cliFor(options.uid);
  let [file, argv] = options.fdLimit
    ? ['prlimit', [`--nofile=${options.fdLimit}:${options.fdLimit}`, '--', process.execPath, path, ...args]]
    : [process.execPath, [path, ...args]];
  const hidden = options.hidepid === true;
  if (hidden) {
    const as = `setpriv --reuid=${options.uid ?? 0} --regid=${options.gid ?? options.uid ?? 0} --clear-groups --`;
    argv = ['-m', '--propagation', 'private', '--', 'sh', '-c', `mount -t proc -o hidepid=invisible proc /proc && exec ${as} "$@"`, 'sh', file, ...argv];
    file = 'unshare';
  }
  return new Promise((resolve) => {
    execFile(
      file,
      argv,
      {
        env: { ...process.env, NO_COLOR: '1', ...options.env },
        uid: hidden ? undefined : options.uid,
        gid: hidden ? undefined : options.gid,
        cwd: options.uid ? '/' : undefined,
        timeout: options.timeoutMs ?? 60_000,
      },
      (error, stdout, stderr) => {
        const code = error ? (typeof error.code === 'number' ? error.code : 1) : 0;
        resolve({ code, stdout: String(stdout), stderr: String(stderr) });
      },
    );
  });
}

/** Whether CRIU tests may be skipped: only outside CI. */
export const inCI = Boolean(process.env.CI);


/**
 * CRIU tests run wherever a working criu is found, and always in CI (where
 * .ci/run provides one): there a missing criu is a failure, not a skip.
 */
export function requireCriu(): void {
  before(async function () {
    try {
      await locateCriu();
    } catch (e) {
      if (inCI) throw e;
      console.warn(`    (skipping CRIU tests outside CI: ${(e as Error).message})`);
      this.skip();
    }
  });
}

/** A fresh temporary directory per test, removed after it (the test's own, not treestate's). */
export function tempDirs(): () => string {
  const made: string[] = [];
  afterEach(() => {
    for (const dir of made.splice(0)) rmSync(dir, { recursive: true, force: true });
  });
  return () => {
    const dir = mkdtempSync(join(tmpdir(), 'treestate-test-'));
    made.push(dir);
    return dir;
  };
}

/**
 * Like tempDirs, in a directory only root can change (/run, not the sticky
 * /tmp): where a program root runs may live (see src/criu/trust.ts).
 */
export function rootOnlyDirs(): () => string {
  const made: string[] = [];
  afterEach(() => {
    for (const dir of made.splice(0)) rmSync(dir, { recursive: true, force: true });
  });
  return () => {
    const dir = mkdtempSync(join('/run', 'treestate-test-'));
    made.push(dir);
    return dir;
  };
}

/** Polls `check` until it holds (for states the kernel reaches a moment later). */
export async function waitFor(check: () => boolean | Promise<boolean>, timeoutMs = 5000, what = 'condition'): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`${what} not reached within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/**
 * Runs `work` with `afterPass` called after each native tree pass, before the
 * caller sees it: the way a test makes something happen between two passes
 * (a real event, deterministically placed, instead of a race). Through the
 * library's test seam (observePasses, treestate/testing), which asks for a
 * continue's verifying pass as a call of its own, so that the hook runs
 * between those two passes as well.
 */
export async function betweenNativePasses<T>(
  afterPass: (index: number, pass: NativeWalkResult, options: NativeWalkOptions) => void | Promise<void>,
  work: () => Promise<T>,
): Promise<T> {
  let index = 0;
  const stop = observePasses({ afterPass: (pass, options) => afterPass(index++, pass, options) });
  try {
    return await work();
  } finally {
    stop();
  }
}

/** Runs `work` counting the native tree passes it makes. */
export async function countingNativePasses<T>(work: () => Promise<T>): Promise<{ value: T; passes: number }> {
  let passes = 0;
  const value = await betweenNativePasses(() => void passes++, work);
  return { value, passes };
}

/** The fields of /proc/PID/stat after the comm: [state, ppid, …]. Throws (ENOENT, ESRCH) once the process is gone. */
export function statFields(pid: number): string[] {
  return readStatFields(`/proc/${pid}/stat`);
}

/** The TracerPid of `pid` (0: not traced). */
export function readTracer(pid: number): number {
  return Number(/TracerPid:\s*(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1]);
}

/** Whether `pid` has exited: gone from /proc or a zombie. */
export function hasExited(pid: number): boolean {
  try {
    return statFields(pid)[0] === 'Z';
  } catch (e) {
    // ESRCH: reaped between the open and the read.
    if (['ENOENT', 'ESRCH'].includes((e as NodeJS.ErrnoException).code ?? '')) return true;
    throw e;
  }
}

/** The TreeStateError `work` rejects with (failing the test if it resolves). */
export async function rejection(work: Promise<unknown>): Promise<TreeStateError> {
  try {
    await work;
  } catch (e) {
    if (e instanceof TreeStateError) return e;
    throw e;
  }
  throw new Error('expected a rejection, but it resolved');
}

/**
 * A parent that does not reap: it starts `sleep 1000` in a session of its own
 * (its stdio /dev/null, so criu can dump it) and reaps it only when told,
 * like init between two of its reaping rounds, but deterministically.
 */
const LAZY_PARENT = `
import os, sys
pid = os.fork()
if pid == 0:
    os.setsid()
    fd = os.open('/dev/null', os.O_RDWR)
    for i in (0, 1, 2):
        os.dup2(fd, i)
    os.close(fd)
    os.execvp('sleep', ['sleep', '1000'])
print(pid, flush=True)
sys.stdin.readline()
os.waitpid(pid, 0)
print('reaped', flush=True)
sys.stdin.readline()
`;

export interface LazyParent {
  /** The pid of its child. */
  child: number;
  /** Has the parent reap its child, resolving once it did. */
  reap(): Promise<void>;
  /** Ends the parent (killing its child first if it was never reaped). */
  [Symbol.asyncDispose](): Promise<void>;
}

export async function spawnLazyParent(): Promise<LazyParent> {
  const parent = spawn('python3', ['-c', LAZY_PARENT], { stdio: ['pipe', 'pipe', 'inherit'] });
  const exited = new Promise((r) => parent.once('exit', r));
  const lines = createInterface({ input: parent.stdout! })[Symbol.asyncIterator]();
  const child = Number((await lines.next()).value);
  let reaped = false;
  const reap = async () => {
    if (reaped) return;
    reaped = true;
    parent.stdin!.write('reap\n');
    const line = await lines.next();
    if (line.value !== 'reaped') throw new Error(`the lazy parent said ${JSON.stringify(line.value)}, not "reaped"`);
  };
  return {
    child,
    reap,
    async [Symbol.asyncDispose]() {
      if (!reaped) {
        process.kill(child, 'SIGKILL'); // still its child, unreaped: the pid cannot name another process
        await reap();
      }
      parent.stdin!.end('\n');
      await exited;
    },
  };
}
