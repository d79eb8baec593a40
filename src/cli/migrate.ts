// `treestate migrate` and its other half, `treestate receive`.
import { migrate, type MigrateProgress, type MigrateResult } from '../migrate/migrate.js';
import { receive } from '../migrate/receive.js';
import { UsageError, parseChoice, parseMs, parsePid, repeated } from './args.js';
import type { Command } from './main.js';

/** "12345 pages (50.6 MB) at 210.3 MB/s": the rate over the time the pages took (the dump, or with --lazy the pages phase). */
function rate(p: NonNullable<MigrateProgress['pages']>): string {
  const mb = p.bytes / 1e6;
  return `${p.count} pages (${mb.toFixed(1)} MB)${p.ms > 0 ? ` at ${(mb / (p.ms / 1000)).toFixed(1)} MB/s` : ''}`;
}

/** One terminal line, rewritten: the phase, the pages once counted, the time so far. */
function progressLine(p: MigrateProgress): string {
  return `migrate: ${p.phase}${p.pages ? `; ${rate(p.pages)}` : ''} … ${(p.elapsedMs / 1000).toFixed(1)} s`;
}

function text(r: MigrateResult): string {
  const where = r.pidNamespace ? ` (pid ${r.pidNamespace.pid} in its own pid namespace)` : '';
  const mb = r.pagesBytes / 1e6;
  const phases = Object.entries(r.phases)
    .map(([p, ms]) => `${p} ${ms} ms`)
    .join(', ');
  const how = r.lazy ? "served by the source's page server after the restore (post-copy)" : 'through the page server';
  return `migrated the tree of ${r.source} to ${r.to}: it is ${r.state.destination} there as ${r.root}${where}; the source is dead\n  ${r.pages} pages (${mb.toFixed(1)} MB) ${how}; ${phases}; ${r.elapsedMs} ms in all`;
}

export const migrateCommands: Record<string, Command> = {
  migrate: {
    usage: 'migrate PID --to ssh://[USER@]HOST[:PORT] [-i KEY] [-o OPT]… [--final-state running|stopped] [--pid-ns new] [--lazy] [--tcp-established] [--shell-job] [--remote-treestate CMD] [--criu PATH] [--timeout MS] [--json]',
    summary: 'move a tree to another host (criu page server, ssh); the source dies only once the copy runs',
    flags: {
      '--to': { value: true },
      '-i': { value: true },
      '-o': { value: true, repeat: true },
      '--final-state': { value: true },
      '--pid-ns': { value: true },
      '--lazy': {},
      '--tcp-established': {},
      '--shell-job': {},
      '--remote-treestate': { value: true },
      '--criu': { value: true },
      '--timeout': { value: true },
      '--json': {},
    },
    async run(args, io) {
      const pid = parsePid(args.positionals, 'migrate');
      const to = args.flags.get('--to');
      if (typeof to !== 'string') throw new UsageError('migrate needs --to ssh://[USER@]HOST[:PORT]');
      // The phase and the time so far, rewritten each 250 ms while a phase lasts.
      let last: MigrateProgress | undefined;
      const line = io.tty ? io.progress : undefined;
      const show = line && ((p: MigrateProgress) => line(progressLine(p)));
      const started = performance.now();
      const tick = show ? setInterval(() => last && show({ ...last, elapsedMs: performance.now() - started }), 250) : undefined;
      const progress = show ? (p: MigrateProgress) => show((last = p)) : undefined;
      const r = await migrate(pid, {
        to,
        identity: args.flags.get('-i') as string | undefined,
        sshOptions: repeated(args, '-o'),
        finalState: parseChoice('--final-state', args.flags.get('--final-state'), ['running', 'stopped'] as const),
        pidNamespace: parseChoice('--pid-ns', args.flags.get('--pid-ns'), ['host', 'new'] as const),
        lazy: args.flags.has('--lazy'),
        tcpEstablished: args.flags.has('--tcp-established'),
        shellJob: args.flags.has('--shell-job'),
        remoteTreestate: args.flags.get('--remote-treestate') as string | undefined,
        criu: args.flags.get('--criu') as string | undefined,
        timeoutMs: parseMs('--timeout', args.flags.get('--timeout')),
        onProgress: progress,
      }).finally(() => {
        clearInterval(tick);
        line?.('');
      });
      io.out(args.flags.has('--json') ? JSON.stringify(r, null, 2) : text(r));
      return 0;
    },
  },
  receive: {
    usage: 'receive [--address ADDR] [--lazy] [--criu PATH]',
    summary: "the destination's half of migrate, run by it over ssh (JSON lines on stdin and stdout)",
    flags: { '--address': { value: true }, '--lazy': {}, '--criu': { value: true } },
    async run(args, io) {
      if (args.positionals.length) throw new UsageError('receive takes no operands');
      // Its events go out the way the CLI's own output does, in one order.
      return receive({ address: args.flags.get('--address') as string | undefined, lazy: args.flags.has('--lazy'), criu: args.flags.get('--criu') as string | undefined, output: io.out });
    },
  },
};
