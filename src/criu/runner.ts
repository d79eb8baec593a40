// How criu (or any helper program) is started. The default is a plain child
// process; the testing harness supplies one that runs it under its reaper, so
// a tree restored with --restore-detached is re-parented there and reaped at once.
import { spawn } from 'node:child_process';
import { closeSync, constants, openSync } from 'node:fs';

export interface CommandExit {
  code: number | null;
  signal: NodeJS.Signals | number | null;
}

export interface RunningCommand {
  pid: number;
  exited: Promise<CommandExit>;
}

export interface RunOptions {
  /** File for stdout and stderr, appended to; never followed if it is a symlink. */
  out: string;
  /** The program's umask (criu's decides its images' modes: treestate asks for 0o077). */
  umask?: number;
  /** Descriptors the program gets as fds 3, 4, …, in this order (criu swrk's socket). */
  fds?: number[];
}

export interface CommandRunner {
  /** Starts `file` with an argument vector (never a shell); stdout and stderr go to `out`. */
  run(file: string, args: string[], options: RunOptions): Promise<RunningCommand>;
}

/** How `out` is opened by every runner: appended to, created 0600, and a symlink planted at its name is an error (ELOOP), not followed. */
export const OUT_FLAGS = constants.O_WRONLY | constants.O_CREAT | constants.O_APPEND | constants.O_NOFOLLOW;

/**
 * Node cannot give a child a umask of its own, so the process's is swapped
 * for the spawn, which is synchronous: no JavaScript runs meanwhile (a file
 * another thread creates in that instant is only made more private). A worker
 * thread may not change it; there the child keeps the process's umask.
 */
export function withUmask<T>(umask: number | undefined, work: () => T): T {
  let previous: number | undefined;
  try {
    if (umask !== undefined) previous = process.umask(umask);
  } catch {
    // ERR_WORKER_UNSUPPORTED_OPERATION
  }
  try {
    return work();
  } finally {
    if (previous !== undefined) process.umask(previous);
  }
}

async function start(file: string, args: string[], { out, umask, fds = [] }: RunOptions, onStatus?: () => void): Promise<RunningCommand> {
  const fd = openSync(out, OUT_FLAGS, 0o600);
  try {
    // libuv dup2s each of `fds` into place in the child, which clears close-on-exec there only.
    const child = withUmask(umask, () => spawn(file, args, { stdio: ['ignore', fd, fd, ...fds, ...(onStatus ? (['pipe'] as const) : [])] }));
    const exited = new Promise<CommandExit>((resolve, reject) => {
      child.once('error', reject);
      child.once('exit', (code, signal) => resolve({ code, signal }));
    });
    if (child.pid === undefined) {
      await exited; // rejects with the spawn error (ENOENT, EACCES …)
    }
    if (onStatus) {
      const status = child.stdio[3 + fds.length] as NodeJS.ReadableStream;
      status.once('data', onStatus);
      status.on('error', () => {}); // the program's end is seen through `exited`
    }
    return { pid: child.pid!, exited };
  } finally {
    closeSync(fd);
  }
}

export const childProcessRunner: CommandRunner = {
  run: (file, args, options) => start(file, args, options),
};

/**
 * The plain runner, with a pipe as the program's next descriptor after `fds`
 * (fd 3 for a command line): for criu's --status-fd, which gets \0 once criu
 * serves (a page server, a lazy dump's pages); `onStatus` runs then, and
 * `onStart` as soon as the program runs, with its pid.
 */
export function statusPipeRunner(onStatus: () => void, onStart: (running: RunningCommand) => void): CommandRunner {
  return {
    async run(file, args, options) {
      const running = await start(file, args, options, onStatus);
      onStart(running);
      return running;
    },
  };
}
