// criu's RPC requests for dump, pre-dump and restore, built in one place from
// treestate's options (the counterpart of args.ts for the command line).
import type { CriuFlags, DumpFinalState } from '../args.js';
import type { CriuHooks } from './hooks.js';
import { hasHooks } from './hooks.js';
import { NetworkLockMethod, ReqType, type CriuOptsMessage, type CriuReqMessage } from './proto.js';

/** Descriptors criu reads through /proc/OUR_PID/fd/N (its peer's, by SO_PEERCRED), and the log's name in the work directory. */
export interface RequestPlaces {
  imagesDirFd: number;
  workDirFd: number;
  /** No directories: criu writes it in the work directory. */
  logName: string;
}

function common(places: RequestPlaces, flags: CriuFlags, hooks: CriuHooks | undefined): CriuOptsMessage {
  return {
    images_dir_fd: places.imagesDirFd,
    work_dir_fd: places.workDirFd,
    log_file: places.logName,
    log_level: 4,
    ...(flags.shellJob ? { shell_job: true } : {}),
    ...(flags.tcpEstablished ? { tcp_established: true } : {}),
    ...(flags.networkLock ? { network_lock: NetworkLockMethod[flags.networkLock] } : {}),
    // Without hooks criu is not asked to notify: no round trip per step.
    ...(hasHooks(hooks) ? { notify_scripts: true } : {}),
    ...(hooks?.orphanPtsMaster ? { orphan_pts_master: true } : {}),
  };
}

/** `parentImg`: the previous images directory relative to the images directory (criu resolves it there). */
export function dumpRequest(pid: number, finalState: DumpFinalState, places: RequestPlaces, flags: CriuFlags & { parentImg?: string }, hooks?: CriuHooks): CriuReqMessage {
  return {
    type: ReqType.DUMP,
    opts: {
      ...common(places, flags, hooks),
      pid,
      ...(finalState === 'running' ? { leave_running: true } : finalState === 'stopped' ? { leave_stopped: true } : {}),
      ...(flags.parentImg ? { parent_img: flags.parentImg, track_mem: true } : {}),
    },
  };
}

/**
 * SINGLE_PRE_DUMP, not PRE_DUMP: after a PRE_DUMP criu's worker waits for
 * more pre-dumps or the final DUMP on the same socket (cr-service.c,
 * pre_dump_loop); treestate's pre-dump is one operation of its own.
 */
export function preDumpRequest(pid: number, places: RequestPlaces, flags: CriuFlags & { parentImg?: string }, hooks?: CriuHooks): CriuReqMessage {
  return { type: ReqType.SINGLE_PRE_DUMP, opts: { ...common(places, flags, hooks), pid, ...(flags.parentImg ? { parent_img: flags.parentImg } : {}) } };
}

/**
 * Over RPC criu always restores detached. `finalState` 'running': criu
 * resumes the tree itself (restore() asks so only when nothing was stopped at
 * dump time and no hook is to run).
 */
export function restoreRequest(places: RequestPlaces, flags: CriuFlags, hooks?: CriuHooks, finalState: 'running' | 'stopped' = 'stopped'): CriuReqMessage {
  return { type: ReqType.RESTORE, opts: { ...common(places, flags, hooks), ...(finalState === 'stopped' ? { leave_stopped: true } : {}) } };
}
