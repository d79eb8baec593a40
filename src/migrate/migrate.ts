// `treestate migrate`: move a tree to another host without ever losing it.
// The source is dumped with --leave-stopped, its memory pages streamed to a
// criu page server on the destination and the other images sent over the
// ssh connection that runs `treestate receive` there; the destination
// restores and verifies, and only then is the source killed. Any failure
// before that resumes the source and has the destination remove what it made.
// With `lazy` (post-copy) the pages go the other way and later: the source's
// criu dump stays, the tree frozen, as a page server for the destination's
// `criu lazy-pages`, the copy runs before its pages are all there, and the
// source is killed once criu dump has ended and lazy-pages says it has every
// page.
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { dump, type CriuResult } from '../criu/checkpoint.js';
import { countPages } from '../criu/images/read.js';
import { stopCriu } from '../criu/interrupt.js';
import { statusPipeRunner, type RunningCommand } from '../criu/runner.js';
import { TreeStateError, hasCode } from '../errors.js';
import { checkNotSelf, checkPid, getTreeState } from '../tree.js';
import { continueTree, killTree } from '../transitions.js';
import { freePort } from './receive.js';
import { IMAGE_NAME, type ReceiverCommand, type ReceiverEvent } from './protocol.js';

/** `pages`: with `lazy`, the copy runs and the source's page server sends it the pages it has not yet. */
export type MigratePhase = 'connect' | 'dump' | 'send' | 'restore' | 'pages' | 'kill source' | 'commit';

export interface MigrateProgress {
  phase: MigratePhase;
  elapsedMs: number;
  /** Once the dump's pages are counted: how many, and over how long they went (ms). */
  pages?: { count: number; bytes: number; ms: number };
}

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
  /**
   * Post-copy: restore before the pages arrive. The source's criu serves them
   * (bound to the source's address the destination saw the ssh connection
   * come from, until the destination has them all), the tree runs on the
   * destination meanwhile, and the source dies when the last page is there.
   */
  lazy?: boolean;
  tcpEstablished?: boolean;
  shellJob?: boolean;
  /** The command that runs treestate on the destination (default `npx treestate`). */
  remoteTreestate?: string;
  criu?: string;
  /** The whole migration's limit (default 300 000 ms). */
  timeoutMs?: number;
  onProgress?: (p: MigrateProgress) => void;
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
  /** Memory sent through the page server (with `lazy`: served by the source's, after the restore). */
  pages: number;
  pagesBytes: number;
  /** Post-copy (`lazy`). */
  lazy?: boolean;
  /** Milliseconds per phase. */
  phases: Partial<Record<MigratePhase, number>>;
  elapsedMs: number;
}

const PAGE_SIZE = 4096;

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
  const lazy = options.lazy === true;
  const started = performance.now();
  const phases: MigrateResult['phases'] = {};
  let phase: MigratePhase = 'connect';
  let mark = started;
  let pages: MigrateProgress['pages'];
  const enter = (next: MigratePhase) => {
    const now = performance.now();
    phases[phase] = Math.round(now - mark);
    phase = next;
    mark = now;
    options.onProgress?.({ phase, elapsedMs: now - started, ...(pages ? { pages } : {}) });
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
    ...(lazy ? ['--lazy'] : []),
  ];
  const receiver = new Receiver(spawn('ssh', ssh, { stdio: ['pipe', 'pipe', 'pipe'] }));
  const localDir = mkdtempSync(join(tmpdir(), 'treestate-migrate-'));
  const imagesDir = join(localDir, 'images');
  const timeoutMs = options.timeoutMs ?? 300_000;
  const timer = setTimeout(() => receiver.kill(), timeoutMs);
  let sourceStopped = false;
  // With `lazy`: the source's criu dump while it runs (it serves the pages), and its end.
  let serving: RunningCommand | undefined;
  let dumping: Promise<CriuResult> | undefined;
  try {
    options.onProgress?.({ phase, elapsedMs: 0 });
    const ready = await receiver.next('connect');
    if (ready.event !== 'ready') throw new TreeStateError('EMIGRATE', `connect: the destination said ${ready.event}, not ready`);

    enter('dump');
    const dumpOptions = { imagesDir, finalState: 'stopped' as const, criu: options.criu, tcpEstablished: options.tcpEstablished, shellJob: options.shellJob };
    let lazyServer: { address: string; port: number } | undefined;
    if (lazy) {
      if (!ready.client) throw new TreeStateError('EMIGRATE', 'connect: the destination could not tell the address the ssh connection came from (no SSH_CONNECTION there), which the source\'s page server would bind');
      lazyServer = { address: ready.client, port: await freePort(ready.client) };
      let listening = () => {};
      const serves = new Promise<void>((resolve) => (listening = resolve));
      // A command line, not RPC: over RPC criu answers a dump only when it
      // ends, which with --lazy-pages is after the last page was served; on
      // a command line --status-fd says when the images are written and the
      // page server listens, and the pid lets an abort interrupt it.
      dumping = dump(root, {
        ...dumpOptions,
        timeoutMs,
        runner: statusPipeRunner(listening, (running) => {
          serving = running;
          void running.exited.then(() => (serving = undefined));
        }),
        extraArgs: ['--lazy-pages', '--address', lazyServer.address, '--port', String(lazyServer.port), '--status-fd', '3'],
      });
      dumping.catch(() => {}); // awaited in the pages phase, or on the way out
      await Promise.race([serves, dumping]);
    } else {
      const dumped = await dump(root, { ...dumpOptions, extraArgs: ['--page-server', '--address', ready.address, '--port', String(ready.port)] });
      if (dumped.stats) pages = { count: dumped.stats.pagesWritten, bytes: dumped.stats.bytesWritten, ms: Math.round(performance.now() - mark) };
    }
    sourceStopped = true;

    enter('send');
    for (const name of readdirSync(imagesDir).filter((f) => IMAGE_NAME.test(f))) {
      receiver.send({ cmd: 'file', name, data: readFileSync(join(imagesDir, name)).toString('base64') });
    }

    enter('restore');
    receiver.send({
      cmd: 'restore',
      finalState: options.finalState ?? 'running',
      pidNamespace: options.pidNamespace ?? 'host',
      tcpEstablished: Boolean(options.tcpEstablished),
      shellJob: Boolean(options.shellJob),
      ...(lazyServer ? { lazy: lazyServer } : {}),
    });
    const restored = await receiver.next('restore');
    if (restored.event !== 'restored') throw new TreeStateError('EMIGRATE', `restore: the destination said ${restored.event}`);

    let pagesBytes = restored.pagesBytes;
    if (dumping) {
      // The copy runs; criu dump ends once lazy-pages on the destination has
      // fetched every page, leaving the source stopped (verified by dump).
      enter('pages');
      const dumped = await dumping;
      // criu dump takes a connection closed early for the end of the work:
      // only lazy-pages itself knows it has every page.
      receiver.send({ cmd: 'pages' });
      const fetched = await receiver.next('pages');
      if (fetched.event !== 'pages') throw new TreeStateError('EMIGRATE', `pages: the destination said ${fetched.event}`);
      if (fetched.code !== 0) throw new TreeStateError('EMIGRATE', `pages: criu lazy-pages on the destination ended with ${fetched.code ?? fetched.signal}, not with every page`);
      // criu's stats-dump after a lazy dump counts nothing (4.2): the pagemaps say what was there.
      const count = await countPages(dumped.imagesDir);
      pagesBytes = count * PAGE_SIZE;
      pages = { count, bytes: pagesBytes, ms: Math.round(performance.now() - mark) };
    }

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
      pages: Math.ceil(pagesBytes / PAGE_SIZE),
      pagesBytes,
      ...(lazy ? { lazy } : {}),
      phases,
      elapsedMs: Math.round(performance.now() - started),
    };
  } catch (e) {
    // Before the source was killed nothing is lost: tell the destination to
    // drop what it has and give the source back its run.
    const failedIn = phase;
    receiver.send({ cmd: 'abort' });
    // A lazy dump still serving: SIGALRM makes criu give up, and on its way
    // out it resumes the tree (see criu/interrupt.ts).
    if (serving) await stopCriu('dump', serving);
    const served = await dumping?.then(
      () => undefined,
      (x: unknown) => x,
    );
    // The destination's error says what it saw (a page server gone); the source's criu may know why.
    const sourceCause = served instanceof TreeStateError && typeof served.details?.cause === 'string' ? `; the source's criu: ${served.details.cause}` : '';
    if (sourceStopped) {
      try {
        await continueTree(root);
      } catch (resume) {
        if (!hasCode(resume, 'ESRCH')) throw new TreeStateError('EMIGRATE', `${failedIn}: ${(e as Error).message}; and the source could not be resumed: ${(resume as Error).message}`, { cause: e });
      }
    }
    const message = e instanceof TreeStateError && e.code === 'EMIGRATE' ? e.message : `${failedIn}: ${(e as Error).message}`;
    throw new TreeStateError('EMIGRATE', `${message}${sourceCause}${sourceStopped ? '; the source was resumed' : ''}; the destination removes what it had made`, { pid: root, cause: e, details: { phase: failedIn } });
  } finally {
    clearTimeout(timer);
    receiver.close();
    await receiver.exited;
    rmSync(localDir, { recursive: true, force: true });
  }
}
