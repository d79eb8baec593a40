// The treestate command: a thin shell over the library. Every command is one
// library call plus printing; --json prints exactly what the library returned.
import { TreeStateError } from '../errors.js';
import { getTreeState } from '../tree.js';
import { continueTree, killTree, stopTree, waitForState, type TransitionResult } from '../transitions.js';
import { UsageError, parseArgs, parseChoice, parseMs, parsePid, quote, type FlagSpec, type Parsed } from './args.js';
import { cgroupCommands } from './cgroup.js';
import { criuCommands } from './criu.js';
import { demo } from './demo.js';
import { drawTree, summary } from './render.js';

export interface Io {
  out: (text: string) => void;
  err: (text: string) => void;
  /** Colour and progress lines: only on a terminal, and never with NO_COLOR. */
  tty: boolean;
}

export interface Command {
  usage: string;
  summary: string;
  flags: Record<string, FlagSpec>;
  run(args: Parsed, io: Io): Promise<number>;
}

const json: Record<string, FlagSpec> = { '--json': {} };
const timeout: Record<string, FlagSpec> = { '--timeout': { value: true } };
const scan: Record<string, FlagSpec> = { '--scan': {} };

function print(io: Io, args: Parsed, value: unknown, text: () => string): void {
  io.out(args.flags.has('--json') ? JSON.stringify(value, null, 2) : text());
}

function transitionText(verb: string, r: TransitionResult): string {
  const exited = r.exited.length ? `, ${r.exited.length} exited meanwhile` : '';
  return `${verb} the tree of ${r.root}: ${r.processes.length || r.signalled.length} processes${exited} (${r.passes} passes, ${r.elapsedMs.toFixed(1)} ms)`;
}

function transition(verb: string, past: string, op: typeof stopTree): Command {
  return {
    usage: `${verb} PID [--timeout MS] [--json] [--scan]`,
    summary: '',
    flags: { ...json, ...timeout, ...scan },
    async run(args, io) {
      const pid = parsePid(args.positionals, verb);
      const result = await op(pid, { timeoutMs: parseMs('--timeout', args.flags.get('--timeout')), scan: args.flags.has('--scan') });
      print(io, args, result, () => transitionText(past, result));
      return 0;
    },
  };
}

export const commands: Record<string, Command> = {
  status: {
    usage: 'status PID [--json] [--scan]',
    summary: "the tree's state: running, stopped, dead or mixed (naming what differs)",
    flags: { ...json, ...scan },
    async run(args, io) {
      const status = await getTreeState(parsePid(args.positionals, 'status'), { scan: args.flags.has('--scan') });
      print(io, args, status, () => {
        const lines = [summary(status, io.tty)];
        for (const t of status.differing.slice(0, 20)) lines.push(`  pid ${t.pid} thread ${t.tid}: ${t.state}${t.tracerPid ? ` (traced by ${t.tracerPid})` : ''}`);
        if (status.differing.length > 20) lines.push(`  … and ${status.differing.length - 20} more`);
        return lines.join('\n');
      });
      return 0;
    },
  },
  tree: {
    usage: 'tree PID [--json] [--scan]',
    summary: 'draw the tree, each process with its state',
    flags: { ...json, ...scan },
    async run(args, io) {
      const status = await getTreeState(parsePid(args.positionals, 'tree'), { scan: args.flags.has('--scan') });
      print(io, args, status, () => drawTree(status, io.tty));
      return 0;
    },
  },
  stop: { ...transition('stop', 'stopped', stopTree), summary: 'Running → Stopped: SIGSTOP, parents first, until every thread shows T' },
  cont: { ...transition('cont', 'continued', continueTree), summary: 'Stopped → Running: SIGCONT to every thread, children first' },
  kill: { ...transition('kill', 'killed', killTree), summary: '→ Dead: stop, then SIGKILL every process, and wait until all are gone' },
  wait: {
    usage: 'wait PID --state running|stopped|dead|frozen [--timeout MS] [--json]',
    summary: 'wait until the tree is in a state',
    flags: { ...json, ...timeout, ...scan, '--state': { value: true } },
    async run(args, io) {
      const pid = parsePid(args.positionals, 'wait');
      const state = parseChoice('--state', args.flags.get('--state'), ['running', 'stopped', 'dead', 'mixed', 'frozen'] as const);
      if (!state) throw new UsageError('wait needs --state running|stopped|dead|frozen');
      const status = await waitForState(pid, state, { timeoutMs: parseMs('--timeout', args.flags.get('--timeout')), scan: args.flags.has('--scan') });
      print(io, args, status, () => summary(status, io.tty));
      return 0;
    },
  },
  ...cgroupCommands,
  ...criuCommands,
  demo: {
    usage: 'demo',
    summary: 'spawn a fixture tree and walk it through every state (and a checkpoint, with criu)',
    flags: {},
    async run(args, io) {
      if (args.positionals.length) throw new UsageError('demo takes no operands');
      return demo(io);
    },
  },
};

function help(): string {
  const width = Math.max(...Object.values(commands).map((c) => c.usage.length));
  return [
    'usage: treestate <command> [options]',
    '',
    'Moves a whole Linux process tree between Running, Stopped and Dead, and drives CRIU',
    'so that a tree ends in the state you chose.',
    '',
    'commands:',
    ...Object.values(commands).map((c) => `  ${c.usage.padEnd(width)}  ${c.summary}`),
    '',
    'options:',
    '  --json        print the library result as JSON',
    '  --timeout MS  how long the tree may take (default 10000)',
    '  --scan        walk /proc/*/stat instead of the children files',
    '  -h, --help    this help',
    '',
    'exit status: 0 success, 1 the operation failed or timed out, 2 usage error',
  ].join('\n');
}

export async function main(argv: string[], io?: Partial<Io>): Promise<number> {
  const stdoutTty = process.stdout.isTTY === true && !process.env.NO_COLOR;
  const out: Io = {
    out: io?.out ?? ((t) => process.stdout.write(`${t}\n`)),
    err: io?.err ?? ((t) => process.stderr.write(`${t}\n`)),
    tty: io?.tty ?? stdoutTty,
  };
  const [name, ...rest] = argv;
  if (name === undefined || name === '-h' || name === '--help' || name === 'help') {
    (name === undefined ? out.err : out.out)(help());
    return name === undefined ? 2 : 0;
  }
  const command = Object.hasOwn(commands, name) ? commands[name] : undefined;
  try {
    if (!command) throw new UsageError(`unknown command ${quote(name)}`);
    if (rest.includes('-h') || rest.includes('--help')) {
      out.out(`usage: treestate ${command.usage}\n\n${command.summary}`);
      return 0;
    }
    return await command.run(parseArgs(rest, command.flags), out);
  } catch (e) {
    if (e instanceof UsageError) {
      out.err(`treestate: ${e.message}\nusage: treestate ${command?.usage ?? '<command> [options]'} (see treestate --help)`);
      return 2;
    }
    if (e instanceof TreeStateError) {
      out.err(`treestate: ${e.message}`);
      return e.code === 'EINVAL_PID' ? 2 : 1;
    }
    const detail = process.env.TREESTATE_DEBUG && e instanceof Error ? `\n${e.stack}` : '';
    out.err(`treestate: unexpected error: ${e instanceof Error ? e.message : String(e)}${detail}`);
    return 1;
  }
}
