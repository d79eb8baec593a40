// The CRIU commands: dump, restore, predump, check.
import { dump, preDump, restore, type CriuProgress, type CriuResult } from '../criu/checkpoint.js';
import { hasDirtyTracking, locateCriu } from '../criu/locate.js';
import { checkSockets } from '../criu/sockets-check.js';
import { preflight } from '../criu/preflight.js';
import { summarizeStats } from '../criu/rpc/stats.js';
import { programHooks, type CriuHooks } from '../criu/rpc/hooks.js';
import { UsageError, parseChoice, parseMs, parsePid, type FlagSpec, type Parsed } from './args.js';
import type { Command, Io } from './main.js';
import { printable, printableLines } from './render.js';

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

/** For the verbs that write images: dump and pre-dump. */
const shareable: Record<string, FlagSpec> = { '--allow-shared-dir': {} };

function imagesDir(args: Parsed, verb: string): string {
  const dir = args.flags.get('--images-dir');
  if (typeof dir !== 'string' || dir === '') throw new UsageError(`${verb} needs -D DIR (the images directory)`);
  return dir;
}

/** Phase and elapsed time on the progress line, only on a terminal. */
function progress(io: Io): ((p: CriuProgress) => void) | undefined {
  const line = io.tty ? io.progress : undefined;
  return line && ((p) => line(`${p.verb}: ${p.phase} … ${(p.elapsedMs / 1000).toFixed(1)} s`));
}

function clearProgress(io: Io): void {
  if (io.tty) io.progress?.('');
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
    allowSharedDir: args.flags.has('--allow-shared-dir'),
    hooks: hooksOf(args),
    onProgress: progress(io),
    extraArgs: args.extra,
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
    for (const warning of r.warnings) io.err(`treestate: warning: ${printable(warning)}`);
    io.out(
      args.flags.has('--json')
        ? JSON.stringify(r, null, 2)
        : `criu ${r.verb}: the tree of ${r.root} is ${r.state}${r.verified ? `; the images restore (verified: ${r.verified.processes} processes, ${r.verified.threads} threads, in ${r.verified.elapsedMs} ms)` : ''}${r.cgroup ? ` in ${printable(r.cgroup)}` : ''}${r.pidNamespace ? ` (pid ${r.pidNamespace.pid} in a new pid namespace, whose init is ${r.pidNamespace.init})` : ''} (images in ${printable(r.imagesDir)}, ${r.elapsedMs} ms${r.stats ? `, ${summarizeStats(r.stats)}` : ''}, log ${printable(r.logFile)})${linkRemapNote(r)}`,
    );
    return 0;
  } catch (e) {
    clearProgress(io);
    throw e;
  }
}

export const criuCommands: Record<string, Command> = {
  dump: {
    usage: 'dump PID -D DIR [--final-state dead|running|stopped] [--verify] [--prev DIR] [--allow-shared-dir] [--keep-link-remaps] [--shell-job] [--tcp-established] [--network-lock M] [--hook NAME=PROGRAM]… [--timeout MS] [--criu PATH] [--json] [-- CRIU-ARGS]',
    summary: 'criu dump, leaving the tree dead (default), running or stopped, verified',
    flags: { ...shared, ...shareable, '--final-state': { value: true }, '--prev': { value: true }, '--verify': {}, '--keep-link-remaps': {} },
    extra: true,
    async run(args, io) {
      const pid = parsePid(args.positionals, 'dump');
      const finalState = parseChoice('--final-state', args.flags.get('--final-state'), ['dead', 'running', 'stopped'] as const);
      const prev = args.flags.get('--prev') as string | undefined;
      return report(io, args, dump(pid, { ...common(args, io, 'dump'), finalState, prevImagesDir: prev, verify: args.flags.has('--verify'), keepLinkRemaps: args.flags.has('--keep-link-remaps') }));
    },
  },
  restore: {
    usage: 'restore -D DIR [--final-state running|stopped] [--pid-ns new] [--cgroup [--name N]] [--shell-job] [--tcp-established] [--network-lock M] [--hook NAME=PROGRAM]… [--timeout MS] [--criu PATH] [--json] [-- CRIU-ARGS]',
    summary: 'criu restore, leaving the tree running (default) or stopped, verified; --cgroup: into a cgroup of its own, as a run tree',
    flags: { ...shared, '--final-state': { value: true }, '--pid-ns': { value: true }, '--cgroup': {}, '--name': { value: true } },
    extra: true,
    async run(args, io) {
      if (args.positionals.length) throw new UsageError('restore takes no PID: the images say which processes come back');
      const finalState = parseChoice('--final-state', args.flags.get('--final-state'), ['running', 'stopped'] as const);
      const pidNamespace = parseChoice('--pid-ns', args.flags.get('--pid-ns'), ['host', 'new'] as const);
      const name = args.flags.get('--name');
      if (name !== undefined && !args.flags.has('--cgroup')) throw new UsageError('--name goes with --cgroup');
      const cgroup = typeof name === 'string' ? name : args.flags.has('--cgroup');
      return report(io, args, restore({ ...common(args, io, 'restore'), finalState, pidNamespace, cgroup }));
    },
  },
  predump: {
    usage: 'predump PID -D DIR [--prev DIR] [--allow-shared-dir] [--shell-job] [--tcp-established] [--network-lock M] [--hook NAME=PROGRAM]… [--timeout MS] [--criu PATH] [--json] [-- CRIU-ARGS]',
    summary: 'criu pre-dump (the tree keeps running); needs dirty-memory tracking',
    flags: { ...shared, ...shareable, '--prev': { value: true } },
    extra: true,
    async run(args, io) {
      const pid = parsePid(args.positionals, 'predump');
      return report(io, args, preDump(pid, { ...common(args, io, 'predump'), prevImagesDir: args.flags.get('--prev') as string | undefined }));
    },
  },
  preflight: {
    usage: 'preflight PID [--criu PATH] [--json]',
    summary: 'what would stop criu dump of the tree (or a pre-dump, or a restore here), each with its fix',
    flags: { '--json': {}, '--criu': { value: true } },
    async run(args, io) {
      const pid = parsePid(args.positionals, 'preflight');
      const r = await preflight(pid, { criu: args.flags.get('--criu') as string | undefined });
      if (args.flags.has('--json')) {
        io.out(JSON.stringify(r, null, 2));
      } else {
        const lines = r.blockers.map((b) => `${b.blocks === 'dump' ? 'blocks dump' : `note (${b.blocks})`}: ${b.message}\n  fix: ${b.fix}`);
        io.out([`the tree of ${r.root}: ${r.ok ? 'nothing blocks a dump' : 'criu dump would fail'}`, ...lines].join('\n'));
      }
      return r.ok ? 0 : 1;
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
              `criu: ${printable(info.path)} (${info.source})`,
              `version: ${info.version}`,
              `criu check: ${printableLines(info.check)}${cached(info.cached)}`,
              ...sockets.map((c) => `dump of ${c.held}: ${c.ok ? `ok${cached(sockets.cached)}` : `FAILED\n  ${printableLines(c.error ?? '').split('\n').join('\n  ')}`}`),
              `dirty-memory tracking (pre-dump): ${dirtyTracking ? 'yes' : 'no'}`,
            ].join('\n'),
      );
      return ok ? 0 : 1;
    },
  },
};
