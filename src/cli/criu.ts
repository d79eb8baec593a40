// The CRIU commands: dump, restore, predump, check.
import { dump, preDump, restore, type CriuProgress, type CriuResult } from '../criu/checkpoint.js';
import { hasDirtyTracking, locateCriu } from '../criu/locate.js';
import { UsageError, parseChoice, parseMs, parsePid, type FlagSpec, type Parsed } from './args.js';
import type { Command, Io } from './main.js';

const shared: Record<string, FlagSpec> = {
  '--images-dir': { value: true, alias: '-D' },
  '--json': {},
  '--timeout': { value: true },
  '--criu': { value: true },
  '--shell-job': {},
  '--tcp-established': {},
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

function common(args: Parsed, io: Io, verb: string) {
  return {
    imagesDir: imagesDir(args, verb),
    criu: args.flags.get('--criu') as string | undefined,
    timeoutMs: parseMs('--timeout', args.flags.get('--timeout')),
    shellJob: args.flags.has('--shell-job'),
    tcpEstablished: args.flags.has('--tcp-established'),
    onProgress: progress(io),
  };
}

function linkRemapNote(r: CriuResult): string {
  const removed = r.linkRemaps?.removed ?? [];
  const left = r.linkRemaps?.left ?? [];
  return (
    (removed.length ? `\nremoved criu's link_remap files: ${removed.join(', ')}` : '') +
    (left.length ? `\ncould not remove criu's link_remap files: ${left.map((l) => `${l.path} (${l.error})`).join(', ')}` : '')
  );
}

async function report(io: Io, args: Parsed, work: Promise<CriuResult>): Promise<number> {
  try {
    const r = await work;
    clearProgress(io);
    io.out(
      args.flags.has('--json')
        ? JSON.stringify(r, null, 2)
        : `criu ${r.verb}: the tree of ${r.root} is ${r.state} (images in ${r.imagesDir}, ${r.elapsedMs} ms, log ${r.logFile})${linkRemapNote(r)}`,
    );
    return 0;
  } catch (e) {
    clearProgress(io);
    throw e;
  }
}

export const criuCommands: Record<string, Command> = {
  dump: {
    usage: 'dump PID -D DIR [--final-state dead|running|stopped] [--prev DIR] [--keep-link-remaps] [--shell-job] [--tcp-established] [--timeout MS] [--json]',
    summary: 'criu dump, leaving the tree dead (default), running or stopped, verified',
    flags: { ...shared, '--final-state': { value: true }, '--prev': { value: true }, '--keep-link-remaps': {} },
    async run(args, io) {
      const pid = parsePid(args.positionals, 'dump');
      const finalState = parseChoice('--final-state', args.flags.get('--final-state'), ['dead', 'running', 'stopped'] as const);
      const prev = args.flags.get('--prev') as string | undefined;
      return report(io, args, dump(pid, { ...common(args, io, 'dump'), finalState, prevImagesDir: prev, keepLinkRemaps: args.flags.has('--keep-link-remaps') }));
    },
  },
  restore: {
    usage: 'restore -D DIR [--final-state running|stopped] [--shell-job] [--tcp-established] [--timeout MS] [--json]',
    summary: 'criu restore, leaving the tree running (default) or stopped, verified',
    flags: { ...shared, '--final-state': { value: true } },
    async run(args, io) {
      if (args.positionals.length) throw new UsageError('restore takes no PID: the images say which processes come back');
      const finalState = parseChoice('--final-state', args.flags.get('--final-state'), ['running', 'stopped'] as const);
      return report(io, args, restore({ ...common(args, io, 'restore'), finalState }));
    },
  },
  predump: {
    usage: 'predump PID -D DIR [--prev DIR] [--timeout MS] [--json]',
    summary: 'criu pre-dump (the tree keeps running); needs dirty-memory tracking',
    flags: { ...shared, '--prev': { value: true } },
    async run(args, io) {
      const pid = parsePid(args.positionals, 'predump');
      return report(io, args, preDump(pid, { ...common(args, io, 'predump'), prevImagesDir: args.flags.get('--prev') as string | undefined }));
    },
  },
  check: {
    usage: 'check [--criu PATH] [--json]',
    summary: "which criu treestate uses, its version, and `criu check`'s verdict",
    flags: { '--json': {}, '--criu': { value: true } },
    async run(args, io) {
      if (args.positionals.length) throw new UsageError('check takes no operands');
      const info = await locateCriu(args.flags.get('--criu') as string | undefined);
      const dirtyTracking = await hasDirtyTracking(info);
      const value = { ...info, dirtyTracking };
      io.out(
        args.flags.has('--json')
          ? JSON.stringify(value, null, 2)
          : [`criu: ${info.path} (${info.source})`, `version: ${info.version}`, `criu check: ${info.check}`, `dirty-memory tracking (pre-dump): ${dirtyTracking ? 'yes' : 'no'}`].join('\n'),
      );
      return 0;
    },
  },
};
