// The CRIU commands: dump, restore, predump, check.
import { dump, preDump, restore, type CriuProgress, type CriuResult } from '../criu/checkpoint.js';
import { hasDirtyTracking, locateCriu } from '../criu/locate.js';
import { checkSockets } from '../criu/sockets-check.js';
import { summarizeStats } from '../criu/rpc/stats.js';
import { programHooks, type CriuHooks } from '../criu/rpc/hooks.js';
import { UsageError, parseChoice, parseMs, parsePid, type FlagSpec, type Parsed } from './args.js';
import type { Command, Io } from './main.js';

const shared: Record<string, FlagSpec> = {
  '--images-dir': { value: true, alias: '-D' },
  '--json': {},
  '--timeout': { value: true },
  '--criu': { value: true },
  '--shell-job': {},
  '--tcp-established': {},
  '--network-lock': { value: true },
  '--hook': { value: true, repeat: true },
};

function imagesDir(args: Parsed, verb: string): string {
  const dir = args.flags.get('--images-dir');
  if (typeof dir !== 'string' || dir === '') throw new UsageError(`${verb} needs -D DIR (the images directory)`);
  return dir;
}

/** Phase and elapsed time on one rewritten stderr line, only on a terminal. */
function progress(io: Io): ((p: CriuProgress) => void) | undefined {
  if (!io.tty || !process.stderr.isTTY) return undefined;
  return (p) => process.stderr.write(`\r\x1b[K${p.verb}: ${p.phase} … ${(p.elapsedMs / 1000).toFixed(1)} s`);
}

function clearProgress(io: Io): void {
  if (io.tty && process.stderr.isTTY) process.stderr.write('\r\x1b[K');
}

/** --hook NAME=PROGRAM, repeatable: programs run at criu's notifications, as its action scripts. */
function hooksOf(args: Parsed): CriuHooks | undefined {
  const specs = args.lists.get('--hook');
  if (!specs?.length) return undefined;
  try {
    return programHooks(specs);
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
}

function common(args: Parsed, io: Io, verb: string) {
  return {
    imagesDir: imagesDir(args, verb),
    criu: args.flags.get('--criu') as string | undefined,
    timeoutMs: parseMs('--timeout', args.flags.get('--timeout')),
    shellJob: args.flags.has('--shell-job'),
    tcpEstablished: args.flags.has('--tcp-established'),
    networkLock: parseChoice('--network-lock', args.flags.get('--network-lock'), ['iptables', 'nftables', 'skip'] as const),
    hooks: hooksOf(args),
    onProgress: progress(io),
  };
}

async function report(io: Io, args: Parsed, work: Promise<CriuResult>): Promise<number> {
  try {
    const r = await work;
    clearProgress(io);
    io.out(
      args.flags.has('--json')
        ? JSON.stringify(r, null, 2)
        : `criu ${r.verb}: the tree of ${r.root} is ${r.state} (images in ${r.imagesDir}, ${r.elapsedMs} ms${r.stats ? `, ${summarizeStats(r.stats)}` : ''}, log ${r.logFile})`,
    );
    return 0;
  } catch (e) {
    clearProgress(io);
    throw e;
  }
}

export const criuCommands: Record<string, Command> = {
  dump: {
    usage: 'dump PID -D DIR [--final-state dead|running|stopped] [--prev DIR] [--shell-job] [--tcp-established [--network-lock iptables|nftables|skip]] [--hook NAME=PROGRAM]… [--timeout MS] [--json]',
    summary: 'criu dump, leaving the tree dead (default), running or stopped, verified',
    flags: { ...shared, '--final-state': { value: true }, '--prev': { value: true } },
    async run(args, io) {
      const pid = parsePid(args.positionals, 'dump');
      const finalState = parseChoice('--final-state', args.flags.get('--final-state'), ['dead', 'running', 'stopped'] as const);
      const prev = args.flags.get('--prev') as string | undefined;
      return report(io, args, dump(pid, { ...common(args, io, 'dump'), finalState, prevImagesDir: prev }));
    },
  },
  restore: {
    usage: 'restore -D DIR [--final-state running|stopped] [--shell-job] [--tcp-established [--network-lock iptables|nftables|skip]] [--hook NAME=PROGRAM]… [--timeout MS] [--json]',
    summary: 'criu restore, leaving the tree running (default) or stopped, verified',
    flags: { ...shared, '--final-state': { value: true } },
    async run(args, io) {
      if (args.positionals.length) throw new UsageError('restore takes no PID: the images say which processes come back');
      const finalState = parseChoice('--final-state', args.flags.get('--final-state'), ['running', 'stopped'] as const);
      return report(io, args, restore({ ...common(args, io, 'restore'), finalState }));
    },
  },
  predump: {
    usage: 'predump PID -D DIR [--prev DIR] [--hook NAME=PROGRAM]… [--timeout MS] [--json]',
    summary: 'criu pre-dump (the tree keeps running); needs dirty-memory tracking',
    flags: { ...shared, '--prev': { value: true } },
    async run(args, io) {
      const pid = parsePid(args.positionals, 'predump');
      return report(io, args, preDump(pid, { ...common(args, io, 'predump'), prevImagesDir: args.flags.get('--prev') as string | undefined }));
    },
  },
  check: {
    usage: 'check [--criu PATH] [--json]',
    summary: "which criu treestate uses, its version, `criu check`'s verdict, and a real dump of sockets",
    flags: { '--json': {}, '--criu': { value: true } },
    async run(args, io) {
      if (args.positionals.length) throw new UsageError('check takes no operands');
      const info = await locateCriu(args.flags.get('--criu') as string | undefined);
      const dirtyTracking = await hasDirtyTracking(info);
      const sockets = await checkSockets(info);
      const ok = sockets.every((c) => c.ok);
      const value = { ...info, dirtyTracking, sockets: [...sockets], ok };
      const cached = (yes: boolean | undefined) => (yes ? ' (kept from an earlier check)' : '');
      io.out(
        args.flags.has('--json')
          ? JSON.stringify(value, null, 2)
          : [
              `criu: ${info.path} (${info.source})`,
              `version: ${info.version}`,
              `criu check: ${info.check}${cached(info.cached)}`,
              ...sockets.map((c) => `dump of ${c.held}: ${c.ok ? `ok${cached(sockets.cached)}` : `FAILED\n  ${c.error?.split('\n').join('\n  ')}`}`),
              `dirty-memory tracking (pre-dump): ${dirtyTracking ? 'yes' : 'no'}`,
            ].join('\n'),
      );
      return ok ? 0 : 1;
    },
  },
};
