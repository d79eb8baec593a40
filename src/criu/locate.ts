// Finding a criu that works here: an explicit option, TREESTATE_CRIU, the
// project-local one (scripts/setup-criu.sh), then PATH. The oldest usable
// CRIU follows the kernel (minCriuVersion).
import { execFile } from 'node:child_process';
import { accessSync, constants, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { release, tmpdir } from 'node:os';
import { delimiter, join, resolve } from 'node:path';
import { TreeStateError } from '../errors.js';
import { packageRoot } from '../native.js';
import { UntrustedPath, walkTrusted } from './trust.js';
import { readVerdict, writeVerdict } from './verdicts.js';
import { privilegeCause } from './diagnose.js';
import { connectCriu } from './rpc/client.js';
import { ReqType, type CriuRespMessage } from './rpc/proto.js';
import { childProcessRunner } from './runner.js';

export interface CriuInfo {
  path: string;
  /** Where it was found: option, env, local, path. */
  source: 'option' | 'env' | 'local' | 'path';
  version: string;
  /** What `criu check` printed; it exited 0. */
  check: string;
  /** Whether version and check came from a verdict kept earlier for this binary, kernel and boot (see verdicts.ts). */
  cached: boolean;
}

/**
 * The oldest CRIU that works on a kernel: 6.13 added a [vvar_vclock] mapping
 * that breaks the vDSO handling of CRIU < 4.1 (`criu check` fails), and 6.16
 * refuses the socket option CRIU < 4.2 reads from every TCP and UDP socket
 * ("Can't get 1:16 opt: Operation not supported", CRIU issue 2705, fixed in
 * 4.2): `criu check` passes there, but no server can be dumped.
 */
export function minCriuVersion(kernel = release()): number[] {
  const [major = 0, minor = 0] = kernel.split(/[.-]/).map(Number);
  return major > 6 || (major === 6 && minor >= 16) ? [4, 2] : [4, 1];
}

/** What scripts/setup-criu.sh installs (its PINNED_VERSION), for messages. */
export const PINNED_CRIU = '4.2.1';

const MIN_VERSION = minCriuVersion();
const HOW_TO_GET = `Get a working one with \`npm run setup:criu\` in the treestate repository (it installs CRIU ${MIN_VERSION.join('.')} or newer into a project-local prefix), or point TREESTATE_CRIU at one.`;

interface RunOutput {
  code: number;
  stdout: string;
  stderr: string;
}

export function runFile(file: string, args: string[], timeoutMs = 30_000): Promise<RunOutput> {
  return new Promise((resolve) => {
    execFile(file, args, { timeout: timeoutMs, maxBuffer: 16 << 20 }, (error, stdout, stderr) => {
      const code = error ? (typeof error.code === 'number' ? error.code : -1) : 0;
      resolve({ code, stdout: String(stdout), stderr: String(stderr) || (error && typeof error.code !== 'number' ? error.message : '') });
    });
  });
}

/** The first `name` on PATH, if any. */
export function onPath(name: string): string | undefined {
  return (process.env.PATH ?? '').split(delimiter).filter(Boolean).map((dir) => join(dir, name)).find(executable);
}

function executable(path: string): boolean {
  try {
    accessSync(path, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/** Candidates in lookup order; the first that exists is the one used. */
export function criuCandidates(explicit?: string): Array<{ path: string; source: CriuInfo['source'] }> {
  const out: Array<{ path: string; source: CriuInfo['source'] }> = [];
  if (explicit) out.push({ path: explicit, source: 'option' });
  if (process.env.TREESTATE_CRIU) out.push({ path: process.env.TREESTATE_CRIU, source: 'env' });
  out.push({ path: join(packageRoot(), '.criu', 'bin', 'criu'), source: 'local' });
  for (const dir of (process.env.PATH ?? '').split(delimiter).filter(Boolean)) out.push({ path: join(dir, 'criu'), source: 'path' });
  return out;
}

export function parseVersion(text: string): string | undefined {
  return /Version:\s*(\d+\.\d+(?:\.\d+)?)/.exec(text)?.[1];
}

export function versionAtLeast(version: string, min = MIN_VERSION): boolean {
  const parts = version.split('.').map(Number);
  for (let i = 0; i < min.length; i++) {
    if ((parts[i] ?? 0) !== min[i]) return (parts[i] ?? 0) > min[i]!;
  }
  return true;
}

const verified = new Map<string, Promise<CriuInfo>>();

async function verify(path: string, source: CriuInfo['source']): Promise<CriuInfo> {
  const kept = readVerdict<Pick<CriuInfo, 'version' | 'check'>>(path, 'check');
  if (kept && versionAtLeast(kept.version)) return { path, source, version: kept.version, check: kept.check, cached: true };
  const v = await runFile(path, ['--version']);
  const version = parseVersion(v.stdout);
  if (v.code !== 0 || !version) {
    throw new TreeStateError('ENOCRIU', `criu at ${path} does not run (${(v.stderr || v.stdout).trim().split('\n').pop() || `exit ${v.code}`}). ${HOW_TO_GET}`);
  }
  if (!versionAtLeast(version)) {
    throw new TreeStateError('ENOCRIU', `criu at ${path} is version ${version}; this kernel (${release()}) needs ${MIN_VERSION.join('.')} or newer. ${HOW_TO_GET}`);
  }
  // criu logs some errors it survives (RLIMIT_NOFILE); only its answer counts.
  const asked = await askCriu(path, true);
  if (!asked.check?.success) {
    // Over RPC criu does not print why it lacks privileges; its command line
    // does: asked only on this failure path, so a user reads criu's own words.
    const direct = await runFile(path, ['check']);
    const privileges = privilegeCause(`${asked.output}\n${direct.stdout}\n${direct.stderr}`);
    if (privileges) throw new TreeStateError('EPERM', privileges);
    const why = asked.output.trim().split('\n').filter((l) => /error|fail/i.test(l) && !/RLIMIT_NOFILE/.test(l)).slice(-3).join('; ');
    throw new TreeStateError('ENOCRIU', `criu at ${path} fails \`criu check\`${why ? `: ${why}` : asked.check?.cr_errmsg ? `: ${asked.check.cr_errmsg.trim()}` : ''}. ${HOW_TO_GET}`);
  }
  if (asked.memTrack !== undefined) writeVerdict(path, 'mem_dirty_track', asked.memTrack);
  const verdict = { version, check: asked.output.trim().split('\n').filter((l) => !/RLIMIT_NOFILE/.test(l)).pop() || 'Looks good.' };
  writeVerdict(path, 'check', verdict);
  return { path, source, ...verdict, cached: false };
}

/** A bare name is looked up in PATH as execFile would, so that the file checked is the file run. */
function commandPath(path: string): string {
  if (path.includes('/')) return resolve(path);
  const dirs = (process.env.PATH ?? '').split(delimiter).filter(Boolean);
  return dirs.map((dir) => resolve(dir, path)).find(executable) ?? path;
}

/**
 * As root, criu runs with every privilege: run it only if root alone can
 * change it, the file and every directory from / to it (symlinks followed,
 * and the directories holding them checked too). A sticky directory such as
 * /tmp may be on the way: there no one else can rename or replace root's
 * entries (a checkout cloned below /tmp), and a link someone else added
 * there is refused by the walk.
 */
function checkTrusted(path: string): void {
  if ((process.geteuid?.() ?? 0) !== 0) return;
  let stats;
  try {
    stats = walkTrusted(path, { owners: [0], stickyDirs: true, followLast: true }).stats;
  } catch (e) {
    if (!(e instanceof UntrustedPath)) throw e;
    throw new TreeStateError('EUNTRUSTED', `refusing to run criu at ${path} as root: ${e.message}. Root runs only a criu that no one but root can change: fix the path as said, or install criu in root-owned directories (npm run setup:criu in a root-owned checkout)`, {
      details: { path: e.path },
      cause: e,
    });
  }
  // A missing file is left to the run, which says ENOCRIU.
  if (stats && !stats.isFile()) throw new TreeStateError('EUNTRUSTED', `refusing to run criu at ${path} as root: it is not a regular file`);
}

/**
 * One `criu swrk` asked whether the kernel tracks dirty memory
 * (FEATURE_CHECK mem_track) and, with `check`, for `criu check`'s verdict
 * (CHECK, which criu accepts only as the last request of a session). What
 * criu printed (it logs CHECK to its stdout/stderr) comes back as `output`.
 */
async function askCriu(path: string, check: boolean): Promise<{ memTrack?: boolean; check?: CriuRespMessage; output: string }> {
  const dir = mkdtempSync(join(tmpdir(), 'treestate-criu-'));
  const out = join(dir, 'swrk.out');
  try {
    let connection;
    try {
      connection = await connectCriu(path, childProcessRunner, out);
    } catch (e) {
      throw new TreeStateError('ENOCRIU', `criu at ${path} does not run (${(e as Error).message}). ${HOW_TO_GET}`, { cause: e });
    }
    try {
      const features = await connection.call({ type: ReqType.FEATURE_CHECK, features: { mem_track: true }, keep_open: check });
      const memTrack = features?.success ? features.features?.mem_track === true : undefined;
      const verdict = check && features ? await connection.call({ type: ReqType.CHECK }) : undefined;
      return { memTrack, check: verdict ?? undefined, output: readText(out) };
    } finally {
      connection.close();
      await connection.exited;
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

function readText(path: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return '';
  }
}

/** The criu to use, verified (version and `criu check`); cached per path for this process. */
export async function locateCriu(explicit?: string): Promise<CriuInfo> {
  const candidate = criuCandidates(explicit).find((c) => executable(c.path) || c.source === 'option' || c.source === 'env');
  if (!candidate) throw new TreeStateError('ENOCRIU', `no criu found (looked at the TREESTATE_CRIU variable, ${join(packageRoot(), '.criu/bin/criu')} and PATH). ${HOW_TO_GET}`);
  const found = { ...candidate, path: commandPath(candidate.path) };
  // Checked on every call, before the cache: a verified path may since have changed hands.
  checkTrusted(found.path);
  let pending = verified.get(found.path);
  if (!pending) {
    pending = verify(found.path, found.source);
    verified.set(found.path, pending);
    pending.catch(() => verified.delete(found.path));
  }
  return pending;
}

/** Whether the kernel tracks dirty memory (soft-dirty), which pre-dump needs, as this criu sees it. */
export async function hasDirtyTracking(criu: CriuInfo): Promise<boolean> {
  const kept = readVerdict<boolean>(criu.path, 'mem_dirty_track');
  if (kept !== undefined) return kept;
  // FEATURE_CHECK mem_track: criu's kerndat has_dirty_track, what `criu check
  // --feature mem_dirty_track` prints as "Dirty tracking is OFF". A criu
  // that could not answer says nothing to keep.
  const { memTrack } = await askCriu(criu.path, false);
  if (memTrack === undefined) return false;
  writeVerdict(criu.path, 'mem_dirty_track', memTrack);
  return memTrack;
}
