// `treestate receive`: the destination half of a migration, started by
// `treestate migrate` over ssh. It starts a criu page server bound to the
// address the ssh client reached (and only for as long as the migration
// lasts), takes the other images from the source, restores and verifies the
// tree, and keeps it only when the source says its own copy is dead. With
// --lazy (post-copy) there is no page server here: `criu lazy-pages` fetches
// the pages from the source's page server while the restored tree runs.
import { closeSync, constants, mkdirSync, mkdtempSync, openSync, readdirSync, rmSync, statSync, writeSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { criuErrorLines, readText, restore, type CriuResult } from '../criu/checkpoint.js';
import { locateCriu } from '../criu/locate.js';
import { statusPipeRunner, type CommandExit, type RunningCommand } from '../criu/runner.js';
import { TreeStateError, describePids, hasCode } from '../errors.js';
import { native } from '../native.js';
import { killSession, killTree } from '../transitions.js';
import { IMAGE_NAME, type ReceiverCommand, type ReceiverEvent } from './protocol.js';

export function freePort(address: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const probe = createServer();
    probe.once('error', reject);
    probe.listen(0, address, () => {
      const { port } = probe.address() as { port: number };
      probe.close(() => resolve(port));
    });
  });
}

/** The address this host was reached at, from sshd's SSH_CONNECTION ("client port server port"). */
export function reachedAddress(env = process.env): string | undefined {
  return env.SSH_CONNECTION?.trim().split(/\s+/)[2];
}

/** The address the ssh client came from (SSH_CONNECTION's first field). */
function clientAddress(env = process.env): string | undefined {
  return env.SSH_CONNECTION?.trim().split(/\s+/)[0];
}

interface CriuServer {
  exited: Promise<CommandExit>;
  kill(): void;
}

const NO_SERVER: CriuServer = { exited: Promise.resolve({ code: 0, signal: null }), kill: () => {} };

/** Starts a criu that serves (page-server, lazy-pages) and resolves once it does: criu writes \0 to --status-fd then. */
async function serve(criu: string, args: string[], log: string): Promise<CriuServer> {
  let running: RunningCommand | undefined;
  let listening = () => {};
  const serves = new Promise<void>((resolve) => (listening = resolve));
  const started = await statusPipeRunner(listening, (r) => (running = r)).run(criu, [...args, '--status-fd', '3', '-o', log, '-v4'], { out: `${log}.out`, umask: 0o077 });
  const server = {
    exited: started.exited,
    kill: () => {
      try {
        process.kill(running!.pid, 'SIGKILL');
      } catch {
        // gone
      }
    },
  };
  const before = await Promise.race([serves.then(() => undefined), started.exited]);
  if (before) throw new TreeStateError('ECRIU', `criu ${args[0]} exited with ${before.code ?? before.signal} before it served (log ${log})`);
  return server;
}

export interface ReceiveOptions {
  /** Address for the page server (default: the one ssh reached). */
  address?: string;
  criu?: string;
  /** Post-copy: no page server here; the restore fetches pages from the source's (`criu lazy-pages`). */
  lazy?: boolean;
  input?: NodeJS.ReadableStream;
  output?: (line: string) => void;
}

/** Runs the receiving side until the source commits or aborts (or goes away: an abort). Resolves with the exit status. */
export async function receive(options: ReceiveOptions = {}): Promise<number> {
  const say = (e: ReceiverEvent) => (options.output ?? ((l: string) => process.stdout.write(`${l}\n`)))(JSON.stringify(e));
  const address = options.address ?? reachedAddress();
  if (!address) {
    say({ event: 'error', phase: 'page server', code: 'EINVAL', message: 'no address for the page server: not started by ssh (no SSH_CONNECTION), and none given' });
    return 1;
  }
  const base = mkdtempSync(join(tmpdir(), 'treestate-receive-'));
  const imagesDir = join(base, 'images');
  // criu's work directory for lazy-pages and the restore (their socket, their
  // logs): the restore refuses an images directory holding anything but files.
  const workDir = join(base, 'work');
  mkdirSync(imagesDir, { mode: 0o700 });
  mkdirSync(workDir, { mode: 0o700 });
  let restored: CriuResult | undefined;
  let kept = false;
  let pageServer = NO_SERVER;
  try {
    const criu = await locateCriu(options.criu);
    if (options.lazy) {
      say({ event: 'ready', address, client: clientAddress(), imagesDir });
    } else {
      const port = await freePort(address);
      pageServer = await serve(criu.path, ['page-server', '-D', imagesDir, '--address', address, '--port', String(port)], join(imagesDir, 'page-server.log'));
      say({ event: 'ready', address, port, imagesDir });
    }

    const lines = createInterface({ input: options.input ?? process.stdin })[Symbol.asyncIterator]();
    for (;;) {
      const next = await lines.next();
      if (next.done) return 1; // the source went away: an abort
      const command = JSON.parse(next.value) as ReceiverCommand;
      if (command.cmd === 'abort') return 1;
      if (command.cmd === 'file') {
        if (!IMAGE_NAME.test(command.name)) throw new TreeStateError('EIMAGES', `refused an image named ${JSON.stringify(command.name)}`);
        const fd = openSync(join(imagesDir, command.name), constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600);
        try {
          writeSync(fd, Buffer.from(command.data, 'base64'));
        } finally {
          closeSync(fd);
        }
      } else if (command.cmd === 'restore') {
        if (command.lazy) {
          // Started before the restore, which hands it the tree's userfaultfds
          // through a socket in the images directory (criu's work directory).
          pageServer = await serve(criu.path, ['lazy-pages', '--page-server', '--address', command.lazy.address, '--port', String(command.lazy.port), '-D', imagesDir, '-W', workDir], join(workDir, 'lazy-pages.log'));
        } else {
          const served = await pageServer.exited;
          if (served.code !== 0) throw new TreeStateError('ECRIU', `criu page-server exited with ${served.code ?? served.signal} (log ${join(imagesDir, 'page-server.log')})`);
        }
        const pagesBytes = readdirSync(imagesDir)
          .filter((f) => f.startsWith('pages-'))
          .reduce((n, f) => n + statSync(join(imagesDir, f)).size, 0);
        try {
          restored = await restore({
            imagesDir,
            finalState: command.finalState,
            pidNamespace: command.pidNamespace,
            tcpEstablished: command.tcpEstablished,
            shellJob: command.shellJob,
            criu: criu.path,
            ...(command.lazy ? { extraArgs: ['--lazy-pages', '-W', workDir] } : {}),
          });
        } catch (e) {
          const err = e as TreeStateError;
          // A restore that lost its lazy-pages says only "Broken pipe": the daemon's own log says why.
          const lazyLog = command.lazy ? criuErrorLines(readText(join(workDir, 'lazy-pages.log')), 4) : [];
          const why = lazyLog.length ? `\n  criu lazy-pages:\n  ${lazyLog.join('\n  ')}` : '';
          say({ event: 'error', phase: 'restore', code: err.code ?? 'ECRIU', message: `${err.message}${why}` });
          return 1;
        }
        say({ event: 'restored', root: restored.root, pidNamespace: restored.pidNamespace, state: restored.state, pagesBytes, elapsedMs: restored.elapsedMs });
      } else if (command.cmd === 'pages') {
        // The source's criu has ended, so lazy-pages has closed its connection: it exits now, 0 only with every page.
        const { code, signal } = await pageServer.exited;
        say({ event: 'pages', code, signal });
      } else if (command.cmd === 'commit') {
        kept = true;
        say({ event: 'done' });
        return 0;
      }
    }
  } catch (e) {
    const err = e as TreeStateError;
    say({ event: 'error', phase: 'receive', code: err.code ?? 'EIO', message: err.message });
    return 1;
  } finally {
    pageServer.kill();
    await pageServer.exited;
    // Nothing of a migration that did not finish stays here.
    if (restored && !kept) await removeRestored(restored.root, restored.rootStartTime);
    rmSync(base, { recursive: true, force: true });
  }
}

/**
 * Kills a tree this receive restored, and what of it the kill could not
 * reach: a copy whose pages will never come may lose processes to the fault
 * while the kill walks it, and their children go to this host's init. The
 * restored root leads its session as it did where it was dumped (criu
 * restores sessions), and every member of a session descends from its
 * leader, so what is left of the tree is what is left of the session. What
 * cannot be removed is said on stderr (ssh carries it back).
 */
async function removeRestored(root: number, born: number | undefined): Promise<void> {
  const leadsSession = native().sessionOf(root) === root;
  try {
    await killTree(root);
  } catch (e) {
    if (!hasCode(e, 'ESRCH')) process.stderr.write(`treestate receive: removing the restored tree of ${root}: ${(e as Error).message}\n`);
  }
  if (!leadsSession || born === undefined) return;
  try {
    const left = await killSession(root, born);
    if (left.length) process.stderr.write(`treestate receive: ${describePids(left)} of the restored tree of ${root} could not be removed\n`);
  } catch (e) {
    process.stderr.write(`treestate receive: removing what is left of the restored tree of ${root}: ${(e as Error).message}\n`);
  }
}
