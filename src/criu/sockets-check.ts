// What `treestate check` proves beyond `criu check`: that this criu can dump
// the sockets servers hold. `criu check` passes with CRIU 4.1 on kernels
// >= 6.16 although every TCP and UDP socket fails to dump there (CRIU issue
// 2705), so the proof is a real dump of a tiny tree that holds them.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawnTree } from '../testing/fixture.js';
import { dump } from './checkpoint.js';
import type { CriuInfo } from './locate.js';
import { readVerdict, writeVerdict } from './verdicts.js';

export interface SocketCheck {
  /** What the throwaway tree held. */
  held: string;
  ok: boolean;
  /** criu's error when it could not dump them. */
  error?: string;
  elapsedMs: number;
}

async function dumpOnce(info: CriuInfo, held: string, tcpPair: boolean): Promise<SocketCheck> {
  const started = performance.now();
  const dir = mkdtempSync(join(tmpdir(), 'treestate-check-'));
  const tree = await spawnTree({ depth: 0, sockets: true, tcpPair });
  try {
    // Left running, then killed with the fixture: a dump that kills the tree
    // leaves its established connections locked on the host (iptables rules
    // or an nftables table) until a restore unlocks them, and this one is
    // never restored.
    await dump(tree.root, { imagesDir: join(dir, 'images'), criu: info.path, finalState: 'running', tcpEstablished: tcpPair });
    return { held, ok: true, elapsedMs: Math.round(performance.now() - started) };
  } catch (e) {
    return { held, ok: false, error: (e as Error).message, elapsedMs: Math.round(performance.now() - started) };
  } finally {
    await tree.dispose();
    rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * Dumps a one-process tree holding a listening TCP socket, a UDP socket and a
 * unix socket; then one holding an established TCP connection. A success is
 * kept for this binary and kernel (verdicts.ts); a failure is tried again
 * next time (installing iptables, say, can mend it).
 */
export async function checkSockets(info: CriuInfo): Promise<SocketCheck[] & { cached?: boolean }> {
  const kept = readVerdict<SocketCheck[]>(info.path, 'sockets');
  if (kept) return Object.assign(kept, { cached: true });
  const checks = [
    await dumpOnce(info, 'listening TCP, UDP and unix sockets', false),
    await dumpOnce(info, 'an established TCP connection (--tcp-established)', true),
  ];
  if (checks.every((c) => c.ok)) writeVerdict(info.path, 'sockets', checks);
  return checks;
}
