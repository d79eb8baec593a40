// A criu service worker (`criu swrk 3`) on the end of a SEQPACKET socket pair:
// one request, criu's notifications answered in order, one response. The
// socket is the addon's (native/rpc.cc); messages are rpc.proto's (proto.ts).
import { closeSync } from 'node:fs';
import { native, type NativeMessage } from '../../native.js';
import type { CommandExit, CommandRunner } from '../runner.js';
import { ReqType, decodeResp, encodeReq, type CriuReqMessage, type CriuRespMessage } from './proto.js';

/** What a notification handler answers: whether criu may go on, and for query-ext-files the external objects to add. */
export interface NotifyAnswer {
  ok: boolean;
  external?: string[];
}

export type NotifyHandler = (notify: { script: string; pid?: number; fds: number[] }) => Promise<NotifyAnswer>;

export interface CriuConnection {
  /** The swrk process. */
  pid: number;
  argv: string[];
  exited: Promise<CommandExit>;
  /**
   * Sends `req` and answers every notification with `onNotify` until the
   * final response, which it resolves with; null when criu closed the socket
   * (exited, or was killed) without one.
   */
  call(req: CriuReqMessage, onNotify?: NotifyHandler): Promise<CriuRespMessage | null>;
  /** Closes our end: a worker waiting for a request then exits; a receive in flight returns null. */
  close(): void;
}

/** A send that found criu gone: its exit says the rest. */
async function sendOrGone(fd: number, data: Buffer): Promise<boolean> {
  try {
    await native().sendMessage(fd, data);
    return true;
  } catch (e) {
    if (['EPIPE', 'ECONNRESET', 'ENOTCONN'].includes((e as NodeJS.ErrnoException).code ?? '')) return false;
    throw e;
  }
}

/** The next message; null when criu is gone (a SEQPACKET peer that dies with our message unread resets the connection). */
async function receiveOrGone(fd: number): Promise<NativeMessage | null> {
  try {
    return await native().receiveMessage(fd);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ECONNRESET') return null;
    throw e;
  }
}

function closeAll(fds: number[]): void {
  for (const fd of fds) {
    try {
      closeSync(fd);
    } catch {
      // already closed by its owner
    }
  }
}

/** Starts `criu swrk 3` through `runner`, its end of the socket pair as fd 3. */
/** Starts `criu swrk 3` through `runner` (with `umask`, as every criu run), our end of the socket pair kept. */
export async function connectCriu(criu: string, runner: CommandRunner, out: string, umask?: number): Promise<CriuConnection> {
  const addon = native();
  const [ours, theirs] = addon.seqpacketPair();
  const argv = ['swrk', '3'];
  let running;
  try {
    running = await runner.run(criu, argv, { out, fds: [theirs], umask });
  } catch (e) {
    closeAll([ours]);
    throw e;
  } finally {
    // Only criu may hold its end: then its exit is our end-of-file.
    closeAll([theirs]);
  }
  let open = true;
  // The fd is closed only when no send or receive holds it: a worker queued
  // behind others in the thread pool could otherwise run on a number that
  // has been reused meanwhile. shutdown(2) alone makes every one return.
  let inFlight = 0;
  const using = async <T>(work: () => Promise<T>): Promise<T> => {
    inFlight++;
    try {
      return await work();
    } finally {
      if (--inFlight === 0 && !open) closeSync(ours);
    }
  };
  const close = () => {
    if (!open) return;
    open = false;
    addon.shutdownSocket(ours);
    if (inFlight === 0) closeSync(ours);
  };
  const call = async (req: CriuReqMessage, onNotify?: NotifyHandler): Promise<CriuRespMessage | null> => {
    if (!open || !(await using(() => sendOrGone(ours, encodeReq(req))))) return null;
    for (;;) {
      const message = open ? await using(() => receiveOrGone(ours)) : null;
      if (!message) return null;
      const resp = decodeResp(message.data);
      if (resp.type !== ReqType.NOTIFY) {
        closeAll(message.fds);
        return resp;
      }
      // criu blocks until it has our answer (cr-service.c, send_criu_rpc_script).
      const answer = onNotify ? await onNotify({ script: resp.notify?.script ?? '', pid: resp.notify?.pid, fds: message.fds }) : (closeAll(message.fds), { ok: true });
      if (!open) return null;
      const sent = await using(() =>
        sendOrGone(
          ours,
        encodeReq({
          type: ReqType.NOTIFY,
          notify_success: answer.ok,
          // images_dir_fd is required in criu_opts; criu reads only `external` here.
          ...(answer.external?.length ? { opts: { images_dir_fd: -1, external: answer.external } } : {}),
          }),
        ),
      );
      if (!sent) return null;
    }
  };
  return { pid: running.pid, argv, exited: running.exited, call, close };
}
