// `treestate migrate`: move a tree to another host without ever losing it.
// The source is dumped with --leave-stopped, its memory pages streamed to a
// criu page server on the destination and the other images sent over the
// ssh connection that runs `treestate receive` there; the destination
// restores and verifies, and only then is the source killed. Any failure
// before that resumes the source and has the destination remove what it made.
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { dump } from '../criu/checkpoint.js';
import { TreeStateError, hasCode } from '../errors.js';
import { checkNotSelf, checkPid, getTreeState } from '../tree.js';
import { continueTree, killTree } from '../transitions.js';
import { IMAGE_NAME, type ReceiverCommand, type ReceiverEvent } from './protocol.js';

export type MigratePhase = 'connect' | 'dump' | 'send' | 'restore' | 'kill source' | 'commit';

export interface MigrateOptions {
  /** ssh://[USER@]HOST[:PORT] */
  to: string;
  /** ssh identity file (-i). */
  identity?: string;
  /** ssh -o options, each "Key=Value". */
  sshOptions?: string[];
  /** How the tree ends on the destination (default running). */
  finalState?: 'running' | 'stopped';
  /** Restore into a new pid namespace on the destination. */
  pidNamespace?: 'host' | 'new';
  tcpEstablished?: boolean;
  shellJob?: boolean;
  /** The command that runs treestate on the destination (default `npx treestate`). */
  remoteTreestate?: string;
  criu?: string;
  /** The whole migration's limit (default 300 000 ms). */
  timeoutMs?: number;
  onProgress?: (p: { phase: MigratePhase; elapsedMs: number }) => void;
}

export interface MigrateResult {
  /** The destination, as given. */
  to: string;
  /** The source root, now dead. */
  source: number;
  /** The restored root on the destination (its pid there), and inside its namespace with pidNamespace new. */
  root: number;
  pidNamespace?: { pid: number; init: number };
  /** The state verified on each side. */
  state: { source: 'dead'; destination: string };
  /** Memory sent through the page server. */
  pages: number;
  pagesBytes: number;
  /** Milliseconds per phase. */
  phases: Partial<Record<MigratePhase, number>>;
  elapsedMs: number;
}

export function parseDestination(to: string): { user?: string; host: string; port?: number } {
  const m = /^ssh:\/\/(?:([^@/\s]+)@)?(\[[^\]]+\]|[^:/@\s]+)(?::(\d+))?\/?$/.exec(to);
  if (!m) throw new TreeStateError('EINVAL', `--to must be ssh://[USER@]HOST[:PORT], not ${JSON.stringify(to)}`);
  return { user: m[1], host: m[2]!.replace(/^\[|\]$/g, ''), port: m[3] ? Number(m[3]) : undefined };
}

class Receiver {
  private readonly lines: AsyncIterator<string>;
  private stderr = '';
  readonly exited: Promise<number | null>;

  constructor(private readonly child: ReturnType<typeof spawn>) {
    this.lines = createInterface({ input: child.stdout! })[Symbol.asyncIterator]();
    child.stderr!.on('data', (d) => (this.stderr = (this.stderr + String(d)).slice(-4000)));
    child.stdin!.on('error', () => {}); // a dead ssh is seen through its exit
    this.exited = new Promise((resolve) => child.once('exit', (code) => resolve(code)));
  }

  send(c: ReceiverCommand): void {
    this.child.stdin!.write(`${JSON.stringify(c)}\n`);
  }

  /** The next event; an error event, or ssh's end, rejects naming the phase. */
  async next(phase: MigratePhase): Promise<ReceiverEvent> {
    const line = await this.lines.next();
    if (line.done) {
      const code = await this.exited;
      const why = this.stderr.trim().split('\n').slice(-3).join('; ');
      throw new TreeStateError('EMIGRATE', `${phase}: the connection to the destination ended (ssh exited with ${code})${why ? `: ${why}` : ''}`, { details: { phase } });
    }
    let event: ReceiverEvent;
    try {
      event = JSON.parse(line.value) as ReceiverEvent;
    } catch {
      return this.next(phase); // a login banner or the like
    }
    if (event.event === 'error') throw new TreeStateError('EMIGRATE', `${phase}: the destination failed (${event.code}): ${event.message}`, { details: { phase, remote: event } });
    return event;
  }

  close(): void {
    this.child.stdin!.end();
  }

  kill(): void {
    this.child.kill('SIGKILL');
  }
}

/** Moves the tree of `pid` to the destination; resolves once it runs (or is stopped) there and the source is dead. */
export async function migrate(pid: number, options: MigrateOptions): Promise<MigrateResult> {
  const root = checkPid(pid);
  checkNotSelf(root);
  const dest = parseDestination(options?.to ?? '');
  const started = performance.now();
  const phases: MigrateResult['phases'] = {};
  let phase: MigratePhase = 'connect';
  let mark = started;
  const enter = (next: MigratePhase) => {
    const now = performance.now();
    phases[phase] = Math.round(now - mark);
    phase = next;
    mark = now;
    options.onProgress?.({ phase, elapsedMs: now - started });
  };
  await getTreeState(root); // ESRCH before anything starts

  const ssh = [
    '-T',
    '-o', 'BatchMode=yes',
    ...(dest.port ? ['-p', String(dest.port)] : []),
    ...(options.identity ? ['-i', options.identity] : []),
    ...(options.sshOptions ?? []).flatMap((o) => ['-o', o]),
    dest.user ? `${dest.user}@${dest.host}` : dest.host,
    '--',
    ...(options.remoteTreestate ?? 'npx treestate').split(/\s+/).filter(Boolean),
    'receive',
  ];
  const receiver = new Receiver(spawn('ssh', ssh, { stdio: ['pipe', 'pipe', 'pipe'] }));
  const localDir = mkdtempSync(join(tmpdir(), 'treestate-migrate-'));
  const timer = setTimeout(() => receiver.kill(), options.timeoutMs ?? 300_000);
  let sourceStopped = false;
  try {
    options.onProgress?.({ phase, elapsedMs: 0 });
    const ready = await receiver.next('connect');
    if (ready.event !== 'ready') throw new TreeStateError('EMIGRATE', `connect: the destination said ${ready.event}, not ready`);

    enter('dump');
    const dumped = await dump(root, {
      imagesDir: join(localDir, 'images'),
      finalState: 'stopped',
      criu: options.criu,
      tcpEstablished: options.tcpEstablished,
      shellJob: options.shellJob,
      extraArgs: ['--page-server', '--address', ready.address, '--port', String(ready.port)],
    });
    sourceStopped = true;

    enter('send');
    for (const name of readdirSync(dumped.imagesDir).filter((f) => IMAGE_NAME.test(f))) {
      receiver.send({ cmd: 'file', name, data: readFileSync(join(dumped.imagesDir, name)).toString('base64') });
    }

    enter('restore');
    receiver.send({ cmd: 'restore', finalState: options.finalState ?? 'running', pidNamespace: options.pidNamespace ?? 'host', tcpEstablished: Boolean(options.tcpEstablished), shellJob: Boolean(options.shellJob) });
    const restored = await receiver.next('restore');
    if (restored.event !== 'restored') throw new TreeStateError('EMIGRATE', `restore: the destination said ${restored.event}`);

    // Only now, with the copy verified on the destination, is the source let go.
    enter('kill source');
    await killTree(root);
    sourceStopped = false;

    enter('commit');
    receiver.send({ cmd: 'commit' });
    const done = await receiver.next('commit');
    if (done.event !== 'done') throw new TreeStateError('EMIGRATE', `commit: the destination said ${done.event}`);
    phases.commit = Math.round(performance.now() - mark);
    return {
      to: options.to,
      source: root,
      root: restored.root,
      ...(restored.pidNamespace ? { pidNamespace: restored.pidNamespace } : {}),
      state: { source: 'dead', destination: restored.state },
      pages: Math.ceil(restored.pagesBytes / 4096),
      pagesBytes: restored.pagesBytes,
      phases,
      elapsedMs: Math.round(performance.now() - started),
    };
  } catch (e) {
    // Before the source was killed nothing is lost: tell the destination to
    // drop what it has and give the source back its run.
    const failedIn = phase;
    receiver.send({ cmd: 'abort' });
    if (sourceStopped) {
      try {
        await continueTree(root);
      } catch (resume) {
        if (!hasCode(resume, 'ESRCH')) throw new TreeStateError('EMIGRATE', `${failedIn}: ${(e as Error).message}; and the source could not be resumed: ${(resume as Error).message}`, { cause: e });
      }
    }
    const message = e instanceof TreeStateError && e.code === 'EMIGRATE' ? e.message : `${failedIn}: ${(e as Error).message}`;
    throw new TreeStateError('EMIGRATE', `${message}${sourceStopped ? '; the source was resumed' : ''}; the destination removes what it had made`, { pid: root, cause: e, details: { phase: failedIn } });
  } finally {
    clearTimeout(timer);
    receiver.close();
    await receiver.exited;
    rmSync(localDir, { recursive: true, force: true });
  }
}
