// `dump --verify`: a checkpoint is only as good as its restore, so restore it
// once, where it can do no harm. The images come back in fresh pid, network
// and mount namespaces (treestate-reaper --pid-ns --net-ns), left stopped by
// criu before the program's first instruction, so the copy never runs: no
// write to a file, no packet to a peer. Every process and thread must be
// back, with as many threads as the images hold, and in T; then the copy is
// killed with its namespace.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { TreeStateError, describePids } from '../errors.js';
import { native } from '../native.js';
import { getTreeState, type TreeStatus } from '../tree.js';
import { killTree } from '../transitions.js';
import type { CriuFlags } from './args.js';
import { restore, type CriuResult } from './checkpoint.js';
import { readCheckpoint } from './images/read.js';
import { innermostPid } from './pidns.js';

export interface ImageVerification {
  /** Processes and threads the test restore brought back (all in T). */
  processes: number;
  threads: number;
  elapsedMs: number;
  /** criu's log of the test restore. */
  logFile: string;
}

/**
 * Unix sockets bound to a path that the live processes `pids` hold. criu
 * restores such a socket by unlinking its file and binding anew, which the
 * private mount namespace does not contain (the filesystem is shared): a test
 * restore would take the path away from the running original.
 */
export async function pathBoundUnixSockets(pids: number[]): Promise<string[]> {
  // The sockets the processes hold and the unix socket table, read once by
  // the native inspect that preflight uses (sock_diag: the caller's network
  // namespace); abstract names start with @ and unnamed ones are empty.
  const facts = await native().inspect(pids);
  const held = new Set(facts.processes.flatMap((p) => p.sockets));
  return facts.unix.filter((s) => held.has(s.inode) && s.path.startsWith('/')).map((s) => s.path);
}

async function gone(pid: number, timeoutMs: number): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (existsSync(`/proc/${pid}`)) {
    if (performance.now() > deadline) throw new TreeStateError('ETIMEDOUT', `the test restore's namespace init ${pid} did not exit within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

export interface VerifyOptions extends CriuFlags {
  criu?: string;
  timeoutMs?: number;
  /** The tree the images were dumped from (its root names the error); what must come back is read from the images. */
  expected?: TreeStatus;
}

/**
 * Restores the images in `imagesDir` into throwaway namespaces, left stopped,
 * checks what came back (against `expected` when given) and kills it.
 * Rejects with EVERIFY, carrying criu's reason, when they do not restore.
 */
export async function verifyImages(imagesDir: string, options: VerifyOptions = {}): Promise<ImageVerification> {
  const started = performance.now();
  const logFile = join(imagesDir, 'verify-restore.log');
  const root = options.expected?.root;
  let copy: CriuResult;
  try {
    copy = await restore({
      imagesDir,
      finalState: 'stopped',
      pidNamespace: 'new',
      networkNamespace: 'new',
      logFile,
      criu: options.criu,
      shellJob: options.shellJob,
      tcpEstablished: options.tcpEstablished,
      networkLock: options.networkLock,
      timeoutMs: options.timeoutMs,
    });
  } catch (e) {
    if (e instanceof TreeStateError && ['EINVAL', 'EIMAGES', 'ENOCRIU'].includes(e.code)) throw e;
    throw new TreeStateError('EVERIFY', `the images in ${imagesDir} do not restore (a test restore in throwaway namespaces failed; the images${root ? ' and the tree' : ''} are as they were): ${(e as Error).message}`, {
      pid: root,
      cause: e,
      details: { logFile },
    });
  }
  try {
    // What must come back: every process the images hold but zombies and
    // helpers (which criu recreates only to let them go), each with its
    // threads. Read once criu has restored them: a damaged image is criu's to
    // name first.
    const want = (await readCheckpoint(imagesDir)).processes.filter((p) => p.state !== 'zombie' && p.state !== 'helper');
    const status = await getTreeState(copy.root);
    const got = new Map(status.processes.map((p) => [innermostPid(p.pid), p]));
    const missing = want.filter((p) => !got.has(p.pid)).map((p) => p.pid);
    const short = want.filter((p) => got.has(p.pid) && got.get(p.pid)!.threads.length !== p.threads.length).map((p) => p.pid);
    if (missing.length || short.length || status.state !== 'stopped') {
      const why = [
        missing.length ? `processes ${describePids(missing)} did not come back` : '',
        short.length ? `processes ${describePids(short)} came back with another number of threads` : '',
        status.state !== 'stopped' ? `the copy is ${status.state}, not stopped` : '',
      ].filter(Boolean);
      throw new TreeStateError('EVERIFY', `a test restore of the images in ${imagesDir} differs from what they hold: ${why.join('; ')}`, { pid: root, pids: [...missing, ...short], details: { logFile } });
    }
    return {
      processes: status.processes.length,
      threads: status.processes.reduce((n, p) => n + p.threads.length, 0),
      elapsedMs: Math.round(performance.now() - started),
      logFile,
    };
  } finally {
    await killTree(copy.root);
    await gone(copy.pidNamespace!.init, 5000);
  }
}
