// The treestate command: a thin shell over the library. Every command is one
// library call plus printing; --json prints exactly what the library returned.
import { fstatSync, readFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { TreeStateError, plural } from '../errors.js';
import { native, packageRoot } from '../native.js';
import { getTreeState } from '../tree.js';
import { continueTree, killTree, stopTree, waitForState, type ContinueOptions, type TransitionResult } from '../transitions.js';
import { UsageError, optionsPart, parseArgs, parseChoice, parseMs, parsePid, quote, type FlagSpec, type Parsed } from './args.js';
import { drawTree, printable, printableLines, summary } from './render.js';

export interface Io {
  out: (text: string) => void;
  err: (text: string) => void;
  /** Colour and progress lines: only on a terminal, and never with NO_COLOR. */
  tty: boolean;
  /** Rewrites one progress line in place ('' clears it); absent when stderr is not a terminal. */
  progress?: (line: string) => void;
}

export interface Command {
  usage: string;
  summary: string;
  flags: Record<string, FlagSpec>;
  /** Takes arguments after `--` (handed to criu). */
  extra?: boolean;
  run(args: Parsed, io: Io): Promise<number>;
}

const json: Record<string, FlagSpec> = { '--json': {} };
const timeout: Record<string, FlagSpec> = { '--timeout': { value: true } };
const scan: Record<string, FlagSpec> = { '--scan': {} };

function print(io: Io, args: Parsed, value: unknown, text: () => string): void {
  io.out(args.flags.has('--json') ? JSON.stringify(value, null, 2) : text());
}

function transitionText(verb: string, r: TransitionResult): string {
  // A kill reports every process it killed as exited too: only the others exited on their own.
  const killed = verb === 'killed' ? new Set(r.signalled) : undefined;
  const exited = killed ? r.exited.filter((pid) => !killed.has(pid)) : r.exited;
  const count = killed ? r.signalled.length : r.processes.length || r.signalled.length;
  const meanwhile = exited.length ? `, ${exited.length} exited meanwhile` : '';
  const again = r.settle?.resumedAgain.length ? `, ${plural(r.settle.resumedAgain.length, 'process')} resumed again after stopping itself` : '';
  const lines = [`${verb} the tree of ${r.root}: ${plural(count, 'process')}${meanwhile}${again} (${plural(r.passes, 'pass')}, ${r.elapsedMs.toFixed(1)} ms)`];
  if (r.alreadyStopped?.length) lines.push(`already stopped by the application (a continue keeps them stopped): ${r.alreadyStopped.join(', ')}`);
  if (r.keptStopped?.length) lines.push(`kept stopped (stopped by the application before treestate's stop): ${r.keptStopped.join(', ')}; --all continues them`);
  return lines.join('\n');
}

function transition(verb: string, past: string, op: (pid: number, options: ContinueOptions) => Promise<TransitionResult>, cont = false): Command {
  return {
    usage: `${verb} PID [--timeout MS]${cont ? ' [--settle MS] [--all]' : ''} [--json] [--scan]`,
    summary: '',
    flags: { ...json, ...timeout, ...scan, ...(cont ? { '--settle': { value: true }, '--all': {} } : {}) },
    async run(args, io) {
      const pid = parsePid(args.positionals, verb);
      const result = await op(pid, {
        timeoutMs: parseMs('--timeout', args.flags.get('--timeout')),
        scan: args.flags.has('--scan'),
        settleMs: parseMs('--settle', args.flags.get('--settle')),
        all: args.flags.has('--all'),
      });
      for (const warning of result.warnings ?? []) io.err(`treestate: warning: ${printable(warning)}`);
      print(io, args, result, () => transitionText(past, result));
      return 0;
    },
  };
}

/** The tree commands: their code is the engine's, loaded with the CLI. */
const core: Record<string, Command> = {
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
  cont: { ...transition('cont', 'continued', continueTree, true), summary: 'Stopped → Running: SIGCONT to every thread, children first' },
  kill: { ...transition('kill', 'killed', killTree), summary: '→ Dead: stop, then SIGKILL every process, and wait until all are gone' },
  wait: {
    usage: 'wait PID --state running|stopped|dead|mixed|frozen [--timeout MS] [--json] [--scan]',
    summary: 'wait until the tree is in a state',
    flags: { ...json, ...timeout, ...scan, '--state': { value: true } },
    async run(args, io) {
      const pid = parsePid(args.positionals, 'wait');
      const state = parseChoice('--state', args.flags.get('--state'), ['running', 'stopped', 'dead', 'mixed', 'frozen'] as const);
      if (!state) throw new UsageError('wait needs --state running|stopped|dead|mixed|frozen');
      const status = await waitForState(pid, state, { timeoutMs: parseMs('--timeout', args.flags.get('--timeout')), scan: args.flags.has('--scan') });
      print(io, args, status, () => summary(status, io.tty));
      return 0;
    },
  },
};

/**
 * The other commands, by group: a group's module (and what it imports:
 * protobufjs, child_process, net …) is loaded only when one of its commands
 * runs, so a cold `treestate status` loads the tree engine and nothing else.
 * The names are listed here so that finding a command loads one group only;
 * `loadCommands` checks them against what the modules define.
 */
const groups: Array<{ names: readonly string[]; load: () => Promise<Record<string, Command>> }> = [
  { names: ['run', 'freeze', 'thaw'], load: () => import('./cgroup.js').then((m) => m.cgroupCommands) },
  { names: ['dump', 'restore', 'predump', 'preflight', 'check'], load: () => import('./criu.js').then((m) => m.criuCommands) },
  { names: ['migrate', 'receive'], load: () => import('./migrate.js').then((m) => m.migrateCommands) },
  { names: ['demo'], load: () => import('./demo.js').then((m) => m.demoCommands) },
];

/** Every command's name, in --help's order, without loading any command's code. */
export function commandNames(): string[] {
  return [...Object.keys(core), ...groups.flatMap((g) => g.names)];
}

/** The command called `name` (loading its group), or undefined. */
async function findCommand(name: string): Promise<Command | undefined> {
  if (Object.hasOwn(core, name)) return core[name];
  const group = groups.find((g) => g.names.includes(name));
  return group && (await group.load())[name];
}

/** Every command, each group loaded: for --help and the tests. */
export async function loadCommands(): Promise<Record<string, Command>> {
  const all: Record<string, Command> = { ...core };
  for (const group of groups) {
    const loaded = await group.load();
    const names = Object.keys(loaded);
    if (names.join() !== group.names.join()) throw new Error(`treestate: the CLI lists ${group.names.join(', ')} but the module defines ${names.join(', ')}`);
    Object.assign(all, loaded);
  }
  return all;
}

/** Options as --help explains them: every flag a command accepts must be here. */
const optionHelp: Array<[string, string]> = [
  ['--json', 'print the library result as JSON; errors too, as {"error": {"code", "message", …}} on stdout'],
  ['--timeout MS', 'how long the operation may take (default 10000; for dump, restore and predump 120000)'],
  ['--scan', 'walk /proc/*/stat instead of the children files'],
  ['--settle MS', 'cont: how long to watch for processes that stop themselves again once resumed, and resume them (default 20; 0: no watch)'],
  ['--all', "cont: continue the application's own stops too (kept by default), and forget them"],
  ['--state STATE', 'wait: running, stopped, dead or mixed'],
  ['-D, --images-dir DIR', 'the CRIU images directory'],
  ['--final-state STATE', 'dump: dead (default), running or stopped; restore, migrate: running (default) or stopped'],
  ['--prev DIR', 'the images of an earlier pre-dump (iterative dump)'],
  ['--shell-job', "criu --shell-job: the tree shares a terminal or session with others"],
  ['--tcp-established', 'criu --tcp-established: checkpoint established TCP connections'],
  ['--verify', 'dump: restore the images once in throwaway namespaces, left stopped, to prove they restore'],
  ['--allow-shared-dir', 'dump, predump: use an images directory others can read (a warning; images hold memory)'],
  ['--network-lock M', 'with --tcp-established: iptables (criu\'s default), nftables (picked when iptables is missing) or skip'],
  ['--pid-ns new', 'restore, migrate: into a new pid namespace, where the images\' pids are free'],
  ['--to URL', 'migrate: the destination, ssh://[USER@]HOST[:PORT]'],
  ['-i KEY', 'migrate: ssh identity file'],
  ['-o OPT', 'migrate: an ssh -o option (repeatable)'],
  ['--remote-treestate CMD', 'migrate: how to run treestate on the destination (default: npx treestate)'],
  ['--address ADDR', 'receive: the page server\'s address (default: the one ssh reached)'],
  ['--criu PATH', 'the criu executable to use'],
  ['-- CRIU-ARGS', 'dump, restore, predump: more arguments, handed to criu as they are'],
  ['-V, --version', "treestate's version"],
  ['-h, --help', 'this help; COMMAND --help: that command'],
];

const WIDTH = 80;

/** Words wrapped to WIDTH columns, each line after the first indented by `indent`; a usage's `[…]` groups stay whole. */
function wrap(text: string, first: string, indent: string): string[] {
  const lines: string[] = [];
  let line = first;
  for (const word of text.match(/\[[^\]]*\]|\S+/g) ?? []) {
    const bare = line === first || line === indent;
    if (!bare && line.length + 1 + word.length > WIDTH) {
      lines.push(line);
      line = indent + word;
    } else {
      line += bare ? word : ` ${word}`;
    }
  }
  lines.push(line);
  return lines;
}

function help(commands: Record<string, Command>): string {
  const name = Math.max(...optionHelp.map(([n]) => n.length));
  return [
    'usage: treestate <command> [options]',
    '',
    ...wrap('Moves a whole Linux process tree between Running, Stopped and Dead, and drives CRIU so that a tree ends in the state you chose.', '', ''),
    '',
    'commands:',
    ...Object.values(commands).flatMap((c) => [...wrap(c.usage, '  ', '      '), ...wrap(c.summary, '      ', '      ')]),
    '',
    'options:',
    ...optionHelp.flatMap(([n, text]) => wrap(text, `  ${n.padEnd(name)}  `, ' '.repeat(name + 4))),
    '',
    ...wrap('exit status: 0 success, 1 the operation failed or timed out, 2 usage error', '', '  '),
  ].join('\n');
}

export function version(): string {
  return (JSON.parse(readFileSync(join(packageRoot(), 'package.json'), 'utf8')) as { version: string }).version;
}

// By name as well as class: a command group is imported on demand, and a
// loader may give it its own copy of args.ts and errors.ts (tsx running the
// tests as CommonJS imports it as ESM), where instanceof alone would miss.
function isUsageError(e: unknown): e is UsageError {
  return e instanceof UsageError || (e instanceof Error && e.name === 'UsageError');
}

function isTreeStateError(e: unknown): e is TreeStateError {
  return e instanceof TreeStateError || (e instanceof Error && e.name === 'TreeStateError' && typeof (e as { code?: unknown }).code === 'string');
}

/** An error as `--json` prints it: the code, the message and whatever else the error carries. */
function errorJson(e: unknown): string {
  let error: Record<string, unknown>;
  if (isUsageError(e)) error = { code: 'EUSAGE', message: e.message };
  else if (isTreeStateError(e)) {
    const { code, message, pid, pids, threads, errno, syscall, details } = e;
    error = { code, message, pid, pids, threads, errno, syscall, details };
  } else {
    const code = typeof (e as { code?: unknown })?.code === 'string' ? (e as { code: string }).code : 'EUNEXPECTED';
    error = { code, message: e instanceof Error ? e.message : String(e) };
  }
  return JSON.stringify({ error }, null, 2);
}

/**
 * Writes to standard output or error without process.stdout / stderr: a
 * command writes once or a few times, and creating those streams loads net
 * and tty (~2.5 ms of a ~40 ms command). Written whole and in order; a
 * descriptor that answers EAGAIN (left non-blocking by whoever opened it)
 * gets this write's rest and every later one through the stream, so nothing
 * overtakes what the stream still holds. A reader that went away (EPIPE)
 * gets nothing more.
 */
function writer(fd: 1 | 2): (text: string) => void {
  let stream: NodeJS.WriteStream | undefined;
  let closed = false;
  return (text) => {
    if (closed) return;
    if (stream) {
      stream.write(text);
      return;
    }
    const buf = Buffer.from(text);
    let off = 0;
    while (off < buf.length) {
      try {
        off += writeSync(fd, buf, off);
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        if (code === 'EPIPE') {
          closed = true;
          return;
        }
        if (code !== 'EAGAIN') throw e;
        stream = fd === 1 ? process.stdout : process.stderr;
        stream.write(buf.subarray(off));
        return;
      }
    }
  };
}

/** Whether `fd` is a terminal: only a character device is asked, by the addon (node:tty loads net). */
function isTerminal(fd: number): boolean {
  try {
    if (!fstatSync(fd).isCharacterDevice()) return false;
  } catch {
    return false;
  }
  return native().isTerminal(fd);
}

export async function main(argv: string[], io?: Partial<Io>): Promise<number> {
  const stdout = io?.out ? undefined : writer(1);
  const stderr = io?.err ? undefined : writer(2);
  const out: Io = {
    out: io?.out ?? ((t) => stdout!(`${t}\n`)),
    err: io?.err ?? ((t) => stderr!(`${t}\n`)),
    tty: io?.tty ?? (isTerminal(1) && !process.env.NO_COLOR),
    progress: io?.progress ?? (isTerminal(2) ? (line) => stderr!(`\r\x1b[K${line}`) : undefined),
  };
  const [name, ...rest] = argv;
  if (name === undefined || name === '-h' || name === '--help' || name === 'help') {
    (name === undefined ? out.err : out.out)(help(await loadCommands()));
    return name === undefined ? 2 : 0;
  }
  if (name === '-V' || name === '--version') {
    out.out(version());
    return 0;
  }
  const options = optionsPart(rest);
  const json = options.includes('--json');
  const fail = (e: unknown, text: string, code: number): number => {
    if (json) out.out(errorJson(e));
    else out.err(text);
    return code;
  };
  let command: Command | undefined;
  try {
    command = await findCommand(name);
    if (!command) throw new UsageError(`unknown command ${quote(name)}`);
    if (options.includes('-h') || options.includes('--help')) {
      out.out([...wrap(command.usage, 'usage: treestate ', '    '), '', ...wrap(command.summary, '', '')].join('\n'));
      return 0;
    }
    const args = parseArgs(rest, command.flags);
    if (args.extra.length > 0 && !command.extra) throw new UsageError(`${name} takes nothing after --`);
    return await command.run(args, out);
  } catch (e) {
    if (isUsageError(e)) {
      return fail(e, `treestate: ${e.message}\nusage: treestate ${command?.usage ?? '<command> [options]'} (see treestate --help)`, 2);
    }
    if (isTreeStateError(e)) {
      return fail(e, `treestate: ${printableLines(e.message)}`, e.code === 'EINVAL_PID' ? 2 : 1);
    }
    const detail = process.env.TREESTATE_DEBUG && e instanceof Error ? `\n${e.stack}` : '';
    return fail(e, `treestate: unexpected error: ${printableLines(e instanceof Error ? e.message : String(e))}${detail}`, 1);
  }
}
