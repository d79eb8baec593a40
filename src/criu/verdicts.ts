// Verdicts about a criu binary on this kernel (`criu check`, the socket
// dump), kept across processes so that a dump does not pay for `criu check`
// every time. Keyed by the binary's identity (path, inode, size, mtime) and
// the running kernel (release, build and boot), so a new criu, a new kernel or
// a reboot asks again. Only root keeps them, in a root-only directory: a
// verdict read from a place another user can write would let that user make
// treestate trust a criu it never checked.
import { realpathSync, statSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { release, version } from 'node:os';
import { bootId, readStateFile, stateDir, writeStateFile } from '../state-dir.js';

function keyOf(criu: string, what: string): string | undefined {
  try {
    const real = realpathSync(criu);
    const st = statSync(real);
    const id = [what, real, st.dev, st.ino, st.size, st.mtimeMs, st.ctimeMs, release(), version(), bootId()].join('\0');
    return createHash('sha256').update(id).digest('hex').slice(0, 32);
  } catch {
    return undefined;
  }
}

/** A verdict kept earlier for this criu binary on this kernel and boot. */
export function readVerdict<T>(criu: string, what: string): T | undefined {
  const dir = stateDir();
  const key = keyOf(criu, what);
  const text = dir && key ? readStateFile(dir, `${key}.json`) : undefined;
  try {
    return text === undefined ? undefined : (JSON.parse(text) as T);
  } catch {
    return undefined;
  }
}

/** Keeps a verdict (a cache: losing one costs one more check). */
export function writeVerdict(criu: string, what: string, value: unknown): void {
  const dir = stateDir();
  const key = keyOf(criu, what);
  if (dir && key) writeStateFile(dir, `${key}.json`, JSON.stringify(value));
}
