// Finding a criu that works here: an explicit option, TREESTATE_CRIU, the
// project-local one (scripts/setup-criu.sh), then PATH. Kernels >= 6.13 need
// CRIU >= 4.1 (an extra [vvar_vclock] mapping breaks older vDSO handling).
import { execFile } from 'node:child_process';
import { accessSync, constants } from 'node:fs';
import { delimiter, join } from 'node:path';
import { TreeStateError } from '../errors.js';
import { packageRoot } from '../native.js';
import { privilegeCause } from './diagnose.js';

export interface CriuInfo {
  path: string;
  /** Where it was found: option, env, local, path. */
  source: 'option' | 'env' | 'local' | 'path';
  version: string;
  /** What `criu check` printed; it exited 0. */
  check: string;
}

const MIN_VERSION = [4, 1];
const HOW_TO_GET =
  'Get a working one with `npm run setup:criu` in the treestate repository (it installs CRIU >= 4.1 into a project-local prefix), or point TREESTATE_CRIU at one.';

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
  const v = await runFile(path, ['--version']);
  const version = parseVersion(v.stdout);
  if (v.code !== 0 || !version) {
    throw new TreeStateError('ENOCRIU', `criu at ${path} does not run (${(v.stderr || v.stdout).trim().split('\n').pop() || `exit ${v.code}`}). ${HOW_TO_GET}`);
  }
  if (!versionAtLeast(version)) {
    throw new TreeStateError('ENOCRIU', `criu at ${path} is version ${version}; this kernel needs ${MIN_VERSION.join('.')} or newer. ${HOW_TO_GET}`);
  }
  // criu logs some errors it survives (RLIMIT_NOFILE); only the exit code counts.
  const check = await runFile(path, ['check']);
  if (check.code !== 0) {
    const privileges = privilegeCause(`${check.stdout}\n${check.stderr}`);
    if (privileges) throw new TreeStateError('EPERM', privileges);
    const why = `${check.stdout}\n${check.stderr}`.trim().split('\n').filter((l) => /error|fail/i.test(l)).slice(-3).join('; ');
    throw new TreeStateError('ENOCRIU', `criu at ${path} fails \`criu check\`${why ? `: ${why}` : ''}. ${HOW_TO_GET}`);
  }
  return { path, source, version, check: check.stdout.trim() || 'Looks good.' };
}

/** The criu to use, verified (version and `criu check`); cached per path for this process. */
export async function locateCriu(explicit?: string): Promise<CriuInfo> {
  const found = criuCandidates(explicit).find((c) => executable(c.path) || c.source === 'option' || c.source === 'env');
  if (!found) throw new TreeStateError('ENOCRIU', `no criu found (looked at the TREESTATE_CRIU variable, ${join(packageRoot(), '.criu/bin/criu')} and PATH). ${HOW_TO_GET}`);
  let pending = verified.get(found.path);
  if (!pending) {
    pending = verify(found.path, found.source);
    verified.set(found.path, pending);
    pending.catch(() => verified.delete(found.path));
  }
  return pending;
}

let dirtyTracking: Promise<boolean> | undefined;

/** Whether the kernel tracks dirty memory (soft-dirty), which pre-dump needs. */
export function hasDirtyTracking(criu: CriuInfo): Promise<boolean> {
  dirtyTracking ??= runFile(criu.path, ['check', '--feature', 'mem_dirty_track']).then((r) => r.code === 0 && !/Dirty tracking is OFF/.test(r.stderr + r.stdout));
  return dirtyTracking;
}
