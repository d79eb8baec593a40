// `treestate migrate` and its other half, `treestate receive`.
import { migrate, type MigrateResult } from '../migrate/migrate.js';
import { receive } from '../migrate/receive.js';
import { UsageError, parseChoice, parseMs, parsePid, repeated } from './args.js';
import type { Command } from './main.js';

function text(r: MigrateResult): string {
  const where = r.pidNamespace ? ` (pid ${r.pidNamespace.pid} in its own pid namespace)` : '';
  const mb = r.pagesBytes / 1e6;
  const phases = Object.entries(r.phases)
    .map(([p, ms]) => `${p} ${ms} ms`)
    .join(', ');
  return `migrated the tree of ${r.source} to ${r.to}: it is ${r.state.destination} there as ${r.root}${where}; the source is dead\n  ${r.pages} pages (${mb.toFixed(1)} MB) through the page server; ${phases}; ${r.elapsedMs} ms in all`;
}

export const migrateCommands: Record<string, Command> = {
  migrate: {
    usage: 'migrate PID --to ssh://[USER@]HOST[:PORT] [-i KEY] [-o OPT]… [--final-state running|stopped] [--pid-ns new] [--tcp-established] [--shell-job] [--remote-treestate CMD] [--criu PATH] [--timeout MS] [--json]',
    summary: 'move a tree to another host (criu page server, ssh); the source dies only once the copy runs',
    flags: {
      '--to': { value: true },
      '-i': { value: true },
      '-o': { value: true, repeat: true },
      '--final-state': { value: true },
      '--pid-ns': { value: true },
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
      const progress = io.tty && process.stderr.isTTY ? (p: { phase: string; elapsedMs: number }) => process.stderr.write(`\r\x1b[Kmigrate: ${p.phase} … ${(p.elapsedMs / 1000).toFixed(1)} s`) : undefined;
      const r = await migrate(pid, {
        to,
        identity: args.flags.get('-i') as string | undefined,
        sshOptions: repeated(args, '-o'),
        finalState: parseChoice('--final-state', args.flags.get('--final-state'), ['running', 'stopped'] as const),
        pidNamespace: parseChoice('--pid-ns', args.flags.get('--pid-ns'), ['host', 'new'] as const),
        tcpEstablished: args.flags.has('--tcp-established'),
        shellJob: args.flags.has('--shell-job'),
        remoteTreestate: args.flags.get('--remote-treestate') as string | undefined,
        criu: args.flags.get('--criu') as string | undefined,
        timeoutMs: parseMs('--timeout', args.flags.get('--timeout')),
        onProgress: progress,
      }).finally(() => progress && process.stderr.write('\r\x1b[K'));
      io.out(args.flags.has('--json') ? JSON.stringify(r, null, 2) : text(r));
      return 0;
    },
  },
  receive: {
    usage: 'receive [--address ADDR] [--criu PATH]',
    summary: "the destination's half of migrate, run by it over ssh (JSON lines on stdin and stdout)",
    flags: { '--address': { value: true }, '--criu': { value: true } },
    async run(args) {
      if (args.positionals.length) throw new UsageError('receive takes no operands');
      return receive({ address: args.flags.get('--address') as string | undefined, criu: args.flags.get('--criu') as string | undefined });
    },
  },
};
