// criu's argument vectors, built in one place (and unit-tested): criu always
// runs with an argv, never through a shell.
import { relative } from 'node:path';

export type DumpFinalState = 'dead' | 'running' | 'stopped';
export type RestoreFinalState = 'running' | 'stopped';

/** How criu keeps the network quiet while it dumps or restores established TCP connections. */
export type NetworkLock = 'iptables' | 'nftables' | 'skip';

export interface CriuFlags {
  shellJob?: boolean;
  tcpEstablished?: boolean;
  /** criu's --network-lock; unset: criu's default (iptables). */
  networkLock?: NetworkLock;
  /**
   * Appended to criu's arguments as they are: treestate does not filter them,
   * and they run with criu's privileges (as root, `--action-script` runs any
   * program as root). Pass only arguments you would type yourself.
   */
  extraArgs?: string[];
}

function common(flags: CriuFlags, logFile: string): string[] {
  return [
    '-o',
    logFile,
    '-v4',
    ...(flags.shellJob ? ['--shell-job'] : []),
    ...(flags.tcpEstablished ? ['--tcp-established'] : []),
    ...(flags.networkLock ? ['--network-lock', flags.networkLock] : []),
  ];
}

/** criu reads --prev-images-dir relative to the images directory. */
function prev(imagesDir: string, prevImagesDir: string | undefined): string[] {
  return prevImagesDir ? ['--prev-images-dir', relative(imagesDir, prevImagesDir) || '.', '--track-mem'] : [];
}

export function dumpArgs(pid: number, imagesDir: string, logFile: string, finalState: DumpFinalState, flags: CriuFlags & { prevImagesDir?: string }): string[] {
  const state = finalState === 'running' ? ['--leave-running'] : finalState === 'stopped' ? ['--leave-stopped'] : [];
  return ['dump', '-t', String(pid), '-D', imagesDir, ...state, ...prev(imagesDir, flags.prevImagesDir), ...common(flags, logFile), ...(flags.extraArgs ?? [])];
}

export function restoreArgs(imagesDir: string, logFile: string, pidFile: string, finalState: RestoreFinalState, flags: CriuFlags): string[] {
  const state = finalState === 'stopped' ? ['--leave-stopped'] : [];
  return ['restore', '-D', imagesDir, '--restore-detached', '--pidfile', pidFile, ...state, ...common(flags, logFile), ...(flags.extraArgs ?? [])];
}

export function preDumpArgs(pid: number, imagesDir: string, logFile: string, flags: CriuFlags & { prevImagesDir?: string }): string[] {
  return ['pre-dump', '-t', String(pid), '-D', imagesDir, ...(flags.prevImagesDir ? ['--prev-images-dir', relative(imagesDir, flags.prevImagesDir) || '.'] : []), ...common(flags, logFile), ...(flags.extraArgs ?? [])];
}
