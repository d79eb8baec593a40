// `treestate receive`: the destination half of a migration, started by
// `treestate migrate` over ssh. It starts a criu page server bound to the
// address the ssh client reached (and only for as long as the migration
// lasts), takes the other images from the source, restores and verifies the
// tree, and keeps it only when the source says its own copy is dead.
import { spawn } from 'node:child_process';
import { closeSync, constants, mkdtempSync, openSync, readdirSync, rmSync, statSync, writeSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { restore, type CriuResult } from '../criu/checkpoint.js';
import { locateCriu } from '../criu/locate.js';
import { TreeStateError } from '../errors.js';
import { killTree } from '../transitions.js';
import { IMAGE_NAME, type ReceiverCommand, type ReceiverEvent } from './protocol.js';

function freePort(address: string): Promise<number> {
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

export interface ReceiveOptions {
  /** Address for the page server (default: the one ssh reached). */
  address?: string;
  criu?: string;
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
  const imagesDir = mkdtempSync(join(tmpdir(), 'treestate-receive-'));
  let restored: CriuResult | undefined;
  let kept = false;
  const pageServer = { exited: Promise.resolve({ code: 0 as number | null }), kill: () => {} };
  try {
    const criu = await locateCriu(options.criu);
    const port = await freePort(address);
    // criu writes \0 to --status-fd once it listens.
    const child = spawn(criu.path, ['page-server', '-D', imagesDir, '--address', address, '--port', String(port), '--status-fd', '3', '-o', join(imagesDir, 'page-server.log'), '-v4'], {
      stdio: ['ignore', 'ignore', 'ignore', 'pipe'],
    });
    pageServer.exited = new Promise((resolve) => child.once('exit', (code) => resolve({ code })));
    pageServer.kill = () => child.kill('SIGKILL');
    const status = child.stdio[3] as NodeJS.ReadableStream;
    await new Promise<void>((resolve, reject) => {
      status.once('data', () => resolve());
      child.once('exit', (code) => reject(new TreeStateError('ECRIU', `criu page-server exited with ${code} before it listened (log ${join(imagesDir, 'page-server.log')})`)));
    });
    say({ event: 'ready', address, port, imagesDir });

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
        const served = await pageServer.exited;
        if (served.code !== 0) throw new TreeStateError('ECRIU', `criu page-server exited with ${served.code} (log ${join(imagesDir, 'page-server.log')})`);
        const pagesBytes = readdirSync(imagesDir)
          .filter((f) => f.startsWith('pages-'))
          .reduce((n, f) => n + statSync(join(imagesDir, f)).size, 0);
        try {
          restored = await restore({ imagesDir, finalState: command.finalState, pidNamespace: command.pidNamespace, tcpEstablished: command.tcpEstablished, shellJob: command.shellJob, criu: criu.path });
        } catch (e) {
          const err = e as TreeStateError;
          say({ event: 'error', phase: 'restore', code: err.code ?? 'ECRIU', message: err.message });
          return 1;
        }
        say({ event: 'restored', root: restored.root, pidNamespace: restored.pidNamespace, state: restored.state, pagesBytes, elapsedMs: restored.elapsedMs });
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
    if (restored && !kept) await killTree(restored.root).catch(() => undefined);
    rmSync(imagesDir, { recursive: true, force: true });
  }
}
