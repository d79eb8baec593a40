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

/** `freezeCgroup`: the tree's own cgroup, which criu then freezes to seize the tree in one step. */
export function dumpArgs(pid: number, imagesDir: string, logFile: string, finalState: DumpFinalState, flags: CriuFlags & { prevImagesDir?: string; freezeCgroup?: string }): string[] {
  const state = finalState === 'running' ? ['--leave-running'] : finalState === 'stopped' ? ['--leave-stopped'] : [];
  const freeze = flags.freezeCgroup ? ['--freeze-cgroup', flags.freezeCgroup] : [];
  return ['dump', '-t', String(pid), '-D', imagesDir, ...state, ...freeze, ...prev(imagesDir, flags.prevImagesDir), ...common(flags, logFile), ...(flags.extraArgs ?? [])];
}

/**
 * `inOwnCgroup`: criu runs in a new cgroup made for the tree and leaves
 * cgroups alone (--manage-cgroups=ignore, written with '=' since its value
 * is optional), so the restored processes are born in criu's cgroup instead
 * of being moved back to the dumped paths.
 */
export function restoreArgs(imagesDir: string, logFile: string, pidFile: string, finalState: RestoreFinalState, flags: CriuFlags & { inOwnCgroup?: boolean }): string[] {
  const state = finalState === 'stopped' ? ['--leave-stopped'] : [];
  const cgroups = flags.inOwnCgroup ? ['--manage-cgroups=ignore'] : [];
  return ['restore', '-D', imagesDir, '--restore-detached', '--pidfile', pidFile, ...state, ...cgroups, ...common(flags, logFile), ...(flags.extraArgs ?? [])];
}

export function preDumpArgs(pid: number, imagesDir: string, logFile: string, flags: CriuFlags & { prevImagesDir?: string }): string[] {
  return ['pre-dump', '-t', String(pid), '-D', imagesDir, ...(flags.prevImagesDir ? ['--prev-images-dir', relative(imagesDir, flags.prevImagesDir) || '.'] : []), ...common(flags, logFile), ...(flags.extraArgs ?? [])];
}
