// How criu (or any helper program) is started. The default is a plain child
// process; the testing harness supplies one that runs it under its reaper, so
// a tree restored with --restore-detached is re-parented there and reaped at once.
import { spawn } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';

export interface CommandExit {
  code: number | null;
  signal: NodeJS.Signals | number | null;
}

export interface RunningCommand {
  pid: number;
  exited: Promise<CommandExit>;
}

export interface RunOptions {
  /** File for stdout and stderr. */
  out: string;
  /** Descriptors the program gets as fds 3, 4, …, in this order (criu swrk's socket). */
  fds?: number[];
}

export interface CommandRunner {
  /** Starts `file` with an argument vector (never a shell); stdout and stderr go to `out`. */
  run(file: string, args: string[], options: RunOptions): Promise<RunningCommand>;
}

export const childProcessRunner: CommandRunner = {
  async run(file, args, { out, fds = [] }) {
    const fd = openSync(out, 'a');
    try {
      // libuv dup2s each into place in the child, which clears close-on-exec there only.
      const child = spawn(file, args, { stdio: ['ignore', fd, fd, ...fds] });
      const exited = new Promise<CommandExit>((resolve, reject) => {
        child.once('error', reject);
        child.once('exit', (code, signal) => resolve({ code, signal }));
      });
      if (child.pid === undefined) {
        await exited; // rejects with the spawn error (ENOENT, EACCES …)
      }
      return { pid: child.pid!, exited };
    } finally {
      closeSync(fd);
    }
  },
};
