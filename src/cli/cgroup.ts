// The cgroup commands: run, freeze, thaw.
import { run, type ForegroundRun } from '../cgroup/run.js';
import { freezeTree, thawTree, type FreezeResult } from '../cgroup/tree.js';
import { UsageError, parseMs, parsePid, type FlagSpec } from './args.js';
import type { Command } from './main.js';

function freezeCommand(verb: 'freeze' | 'thaw', past: string, op: typeof freezeTree): Command {
  return {
    usage: `${verb} PID [--timeout MS] [--json]`,
    summary: verb === 'freeze' ? 'Running → Frozen: the cgroup freezer holds a `run` tree in one step' : 'Frozen → Running',
    flags: { '--json': {}, '--timeout': { value: true } },
    async run(args, io) {
      const result: FreezeResult = await op(parsePid(args.positionals, verb), { timeoutMs: parseMs('--timeout', args.flags.get('--timeout')) });
      io.out(args.flags.has('--json') ? JSON.stringify(result, null, 2) : `${past} the tree of ${result.root}: ${result.processes.length} processes in ${result.cgroup} (${result.elapsedMs.toFixed(1)} ms)`);
      return 0;
    },
  };
}

const runFlags: Record<string, FlagSpec> = { '--name': { value: true }, '--detach': {}, '--json': {}, '--out': { value: true } };

export const cgroupCommands: Record<string, Command> = {
  run: {
    usage: 'run [--name N] [--detach [--json]] [--out FILE] -- CMD [ARGS…]',
    summary: 'start CMD in a cgroup of its own (freeze, thaw, and a kill nothing escapes); relays its exit status',
    flags: runFlags,
    // The program and its arguments come after `--`, never read as ours.
    extra: true,
    async run(args, io) {
      if (args.positionals.length) throw new UsageError('run takes the program after -- (treestate run -- CMD [ARGS…])');
      const [file, ...rest] = args.extra;
      if (file === undefined) throw new UsageError('run needs a command (treestate run -- CMD [ARGS…])');
      const name = args.flags.get('--name');
      const out = args.flags.get('--out');
      const options = { name: typeof name === 'string' ? name : undefined, out: typeof out === 'string' ? out : undefined };
      if (args.flags.has('--detach')) {
        const tree = await run(file, rest, { ...options, detach: true });
        io.out(args.flags.has('--json') ? JSON.stringify(tree, null, 2) : `${tree.root} ${tree.cgroup}`);
        return 0;
      }
      if (args.flags.has('--json')) throw new UsageError('--json goes with --detach (in the foreground the program has the terminal)');
      // The terminal's own SIGINT reaches the program directly (same process
      // group); these forward what is sent to treestate alone. Installed
      // first: a signal that comes while the program starts waits for it.
      let tree: ForegroundRun | undefined;
      const pending: NodeJS.Signals[] = [];
      const forward = (signal: NodeJS.Signals) => (tree ? tree.signal(signal) : pending.push(signal));
      const signals: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP'];
      for (const s of signals) process.on(s, forward);
      try {
        tree = await run(file, rest, options);
        for (const s of pending) tree.signal(s);
        return (await tree.exited).status;
      } finally {
        for (const s of signals) process.off(s, forward);
      }
    },
  },
  freeze: freezeCommand('freeze', 'froze', freezeTree),
  thaw: freezeCommand('thaw', 'thawed', thawTree),
};
