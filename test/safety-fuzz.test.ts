// Safety 6: bad input. Random malformed, missing, huge and hostile argument
// vectors for every command: the CLI answers with exit 2 and a usage message,
// or exit 1 and a `treestate: ` error, never a stack trace, and never sends a
// signal. Every generated case carries at least one defect the CLI must
// detect before acting, so it may name a real pid (the sentinel tree's) and
// still must not touch it.
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect } from 'chai';
import { main } from '../src/cli/main.js';
import { observePasses, spawnTree, type TreeFixture } from '../src/testing/index.js';
import { cli } from './helpers.js';

const CASES = 5000;
const PROCESS_RUNS = 36;

/** mulberry32: a small seeded PRNG, so a failing case can be replayed. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Pids above the system's pid_max cannot name a process: well-formed, harmless operands. */
const PID_MAX = Number(readFileSync('/proc/sys/kernel/pid_max', 'utf8'));

const SEED = Number(process.env.TREESTATE_FUZZ_SEED ?? 0x5afe7);

class Gen {
  constructor(
    private readonly rand: () => number,
    private readonly sentinel: number,
  ) {}
  int(n: number): number {
    return Math.floor(this.rand() * n);
  }
  pick<T>(items: readonly T[]): T {
    return items[this.int(items.length)]!;
  }
  chance(p: number): boolean {
    return this.rand() < p;
  }
  garbage(): string {
    const alphabets = ['0123456789', 'abcXYZ-_=./ ', '\n\t\r\0\x1b', '€ü𝟘１２٣', '$;|&`()<>*?~"\'\\'];
    const len = this.chance(0.05) ? 50_000 + this.int(200_000) : this.int(24);
    const alphabet = this.pick(alphabets) + this.pick(alphabets);
    let s = '';
    for (let i = 0; i < Math.min(len, 64); i++) s += alphabet[this.int(alphabet.length)];
    return len > 64 ? s.repeat(Math.ceil(len / Math.max(1, s.length))).slice(0, len) : s;
  }
  /** A pid operand that is not a usable pid: never names a process that could exist. */
  badPid(): string {
    return this.pick([
      '',
      '0',
      '00',
      '-1',
      '-0',
      '+5',
      ' 12',
      '12 ',
      '1e3',
      '0x10',
      '1.5',
      'NaN',
      'Infinity',
      '１２',
      '٣',
      '4194305',
      '9999999999',
      '99999999999999999999',
      String(2 ** 53),
      '12abc',
      '$(id)',
      '; kill -9 1',
      '../../proc/1',
      '%d%n',
      this.garbage().replace(/^\d*$/, (digits) => `${digits}x`), // never a plain number: it could be a live pid
    ]);
  }
  /** Pid operands that are well-formed: pid 1, ourselves, a pid above pid_max, the sentinel's root. */
  anyPid(): string {
    return this.pick(['1', String(process.pid), String(process.ppid), String(PID_MAX + 1 + this.int(4_194_304 - PID_MAX)), String(this.sentinel), this.badPid()]);
  }
}

type Case = string[];

const commands = ['status', 'tree', 'stop', 'cont', 'kill', 'wait', 'dump', 'restore', 'predump', 'check', 'demo'] as const;
const pidCommands = new Set(['status', 'tree', 'stop', 'cont', 'kill', 'wait', 'dump', 'predump']);
const flagsOf: Record<string, string[]> = {
  status: ['--json', '--scan'],
  tree: ['--json', '--scan'],
  stop: ['--json', '--scan', '--timeout'],
  cont: ['--json', '--scan', '--timeout'],
  kill: ['--json', '--scan', '--timeout'],
  wait: ['--json', '--scan', '--timeout', '--state'],
  dump: ['--images-dir', '-D', '--json', '--timeout', '--criu', '--shell-job', '--tcp-established', '--network-lock', '--final-state', '--prev'],
  restore: ['--images-dir', '-D', '--json', '--timeout', '--criu', '--shell-job', '--tcp-established', '--network-lock', '--final-state'],
  predump: ['--images-dir', '-D', '--json', '--timeout', '--criu', '--shell-job', '--tcp-established', '--network-lock', '--prev'],
  check: ['--json', '--criu'],
  demo: [],
};
const valued = new Set(['--timeout', '--state', '--images-dir', '-D', '--criu', '--final-state', '--prev', '--network-lock']);

/** A value that the flag's parser rejects. */
function badValue(g: Gen, flag: string): string | undefined {
  switch (flag) {
    case '--timeout':
      return g.pick(['', '-1', '1.5', '1e3', '0x10', 'abc', '1000000000', '99999999999999', ' 5', '5 ', '１', g.garbage()]);
    case '--state':
      return g.pick(['', 'Running', 'STOPPED', 'dead ', 'zombie', 'paused', 'running\n', g.garbage()]);
    case '--final-state':
      return g.pick(['', 'Dead', 'alive', 'frozen', 'mixed', 'running;', g.garbage()]);
    case '--network-lock':
      return g.pick(['', 'iptables;', 'NFTABLES', 'none', g.garbage()]);
    case '--images-dir':
    case '-D':
      return ''; // an empty images directory is a usage error
    default:
      return undefined; // other flags have no value the parser rejects
  }
}

/** One argv with at least one defect that is caught before anything acts (or a hostile but harmless operand). */
function malformed(g: Gen): Case {
  const defect = g.int(9);
  if (defect === 8) {
    // Well-formed, but hostile: pid 1, this process, its parent, or a pid above pid_max.
    const command = g.pick(['status', 'tree', 'stop', 'cont', 'kill', 'wait', 'dump'] as const);
    const self = command === 'status' || command === 'tree' || command === 'wait' ? [] : [String(process.pid), String(process.ppid)]; // looking at ourselves is fine
    const pid = g.pick(['1', ...self, String(PID_MAX + 1 + g.int(4_194_304 - PID_MAX))]);
    return [command, pid, ...(command === 'wait' ? ['--state', g.pick(['running', 'stopped'])] : []), ...(command === 'dump' ? ['-D', '/nonexistent/treestate'] : []), ...(g.chance(0.5) ? ['--json'] : [])];
  }
  if (defect === 0) {
    // an unknown command, or none of ours with odd spelling
    return [g.pick(['', 'STOP', 'stop ', 'sto', 'killall', 'pkill', 'kill-9', '-1', '--kill', 'constructor', '__proto__', 'toString', 'hasOwnProperty', g.garbage()]), g.anyPid(), ...(g.chance(0.5) ? [g.garbage()] : [])];
  }
  const command = g.pick(commands);
  const flags = flagsOf[command]!;
  const argv: string[] = [command];
  // Start from a plausible command line …
  if (pidCommands.has(command)) argv.push(g.anyPid());
  if (command === 'dump' || command === 'predump' || command === 'restore') argv.push('-D', g.pick(['/nonexistent/treestate', '/', '/proc/1', g.garbage() || 'x']));
  if (command === 'wait') argv.push('--state', g.pick(['running', 'stopped', 'mixed']));
  for (let i = g.int(3); i > 0 && flags.length; i--) {
    const f = g.pick(flags.filter((x) => !valued.has(x)).concat(['--json']));
    if (flags.includes(f) && !argv.includes(f)) argv.push(f);
  }
  // … then break it.
  switch (defect) {
    case 1: // an unknown option
      argv.splice(1 + g.int(argv.length), 0, g.pick(['--force', '-f', '--pid', '-9', '--json=1', '--scan=yes', '--timeout', '---', '--x\u0001', '-h1', `--x${g.garbage()}`]));
      if (argv.at(-1) === '--timeout') argv.push('--json'); // `--timeout --json`: a value missing
      if (argv.includes('-9')) argv.splice(argv.indexOf('-9'), 1, '-x'); // -9 is a (bad) operand, not an option
      break;
    case 2: {
      // an option given twice, or a value option without its value
      const f = g.pick(flags.length ? flags : ['--json']);
      if (!flags.includes(f)) argv.push('--nope');
      else if (valued.has(f)) argv.push(...(g.chance(0.5) ? [f] : [f, '--json', f]));
      else argv.push(f, f);
      break;
    }
    case 3: {
      // a value its parser rejects
      const withBad = flags.filter((f) => badValue(g, f) !== undefined);
      if (withBad.length === 0) {
        argv.push('--timeout', '5'); // not an option of this command
        break;
      }
      const f = g.pick(withBad);
      const v = badValue(g, f)!;
      const at = argv.indexOf(f === '-D' ? '-D' : f);
      if (at >= 0) argv.splice(at, 2);
      if (f === '-D' || f === '--images-dir') argv.splice(argv.indexOf('-D'), argv.includes('-D') ? 2 : 0);
      argv.push(...(g.chance(0.5) || v.startsWith('-') ? [`${f}=${v}`] : [f, v]));
      break;
    }
    case 4: // the operand is not a pid (or, for commands without one, is there at all)
      if (pidCommands.has(command)) argv[1] = g.badPid();
      else argv.splice(1, 0, g.anyPid());
      break;
    case 5: // one operand too many, or none
      if (pidCommands.has(command) && g.chance(0.5)) argv.splice(1, 1);
      else argv.splice(1, 0, g.anyPid(), ...(pidCommands.has(command) ? [] : [g.anyPid()]));
      break;
    case 6: // a required option missing
      if (command === 'wait') argv.splice(argv.indexOf('--state'), 2);
      else if (argv.includes('-D')) argv.splice(argv.indexOf('-D'), 2);
      else argv.push('--bogus');
      break;
    default: // everything after `--` is an operand
      argv.push('--', g.pick(['--json', '-h', '1', String(process.pid), g.garbage()]));
      if (!pidCommands.has(command)) break;
      if (argv.length >= 3 && /^\d+$/.test(argv.at(-1)!)) argv.push('2');
  }
  // A help request is a valid command line (exit 0): not what this fuzzer is for.
  return argv.map((a) => (a === '-h' || a === '--help' ? '-H' : a));
}

interface Counters {
  signalled: number;
  calls: string[];
}

/**
 * Observes every native call that can send a signal (observePasses) and records
 * each signal it reports delivered (a pass over a pid that does not exist delivers none).
 */
function countSignals(): { counters: Counters; restore: () => void } {
  const counters: Counters = { signalled: 0, calls: [] };
  const restore = observePasses({
    afterPass: (result, options) => {
      for (const pid of result.signalled) {
        counters.signalled++;
        counters.calls.push(`${options.kind} signal to ${pid} (${result.processes.find((p) => p.pid === pid)?.comm}) by walk ${JSON.stringify(options)}`);
      }
    },
    afterSignalList: (result, { signal }) => {
      for (const pid of result.signalled) {
        counters.signalled++;
        counters.calls.push(`signal ${signal} to ${pid} by signalList`);
      }
    },
  });
  return { counters, restore };
}

function checkAnswer(argv: string[], code: number, out: string, err: string): void {
  const shown = JSON.stringify(argv.map((a) => (a.length > 80 ? `${a.slice(0, 80)}…(${a.length})` : a)));
  expect(code, `${shown}\n${err.slice(0, 400)}`).to.be.oneOf([1, 2]);
  // After a command, --json (before any --) asks for the error as JSON on stdout.
  const options = argv.slice(1);
  const json = argv.length > 0 && (options.includes('--') ? options.slice(0, options.indexOf('--')) : options).includes('--json');
  if (json) {
    const { error } = JSON.parse(out) as { error: { code: string; message: string } };
    expect(error.code, shown).to.match(/^E[A-Z_]+$/);
    expect(error.message, shown).to.match(/^\S/);
    expect(err, shown).to.equal('');
    return;
  }
  // An error line, or (no command at all) the usage text; nothing on stdout.
  expect(err, shown).to.match(argv.length === 0 ? /^usage: treestate / : /^treestate: \S/);
  expect(out, shown).to.equal('');
  expect(err, shown).to.not.include('unexpected error');
  expect(`${out}\n${err}`, shown).to.not.match(/\n\s+at |TypeError|RangeError|ReferenceError/);
}

describe('safety: bad input', function () {
  this.timeout(300_000);
  let sentinel: TreeFixture;
  // Garbage images directories are relative paths: they must land in a
  // directory of the test's own (removed after), never in the checkout.
  const home = process.cwd();
  let scratch = '';
  before(() => {
    scratch = mkdtempSync(join(tmpdir(), 'treestate-fuzz-'));
    process.chdir(scratch);
  });
  after(() => {
    process.chdir(home);
    rmSync(scratch, { recursive: true, force: true });
  });

  beforeEach(async () => {
    sentinel = await spawnTree({ depth: 1, fanout: 2, intervalMs: 20 });
  });

  afterEach(async () => {
    // The sentinel was never stopped: it is running and its heartbeats advance.
    try {
      await expect(sentinel.root).to.be.a.runningTree;
      await sentinel.waitProgress();
    } finally {
      await sentinel.dispose();
    }
  });

  it(`answers ${CASES} random malformed command lines (in process) with exit 1 or 2 and a message, sending no signal`, async () => {
    const g = new Gen(prng(SEED), sentinel.root);
    const { counters, restore } = countSignals();
    const tally = new Map<number, number>();
    try {
      for (let i = 0; i < CASES; i++) {
        const argv = malformed(g);
        let out = '';
        let err = '';
        const code = await main(argv, { out: (t) => (out += `${t}\n`), err: (t) => (err += `${t}\n`), tty: false });
        checkAnswer(argv, code, out, err);
        expect(counters.calls, `case ${i} (seed ${SEED}) sent a signal: ${JSON.stringify(argv).slice(0, 300)}`).to.deep.equal([]);
        tally.set(code, (tally.get(code) ?? 0) + 1);
        if (i % 250 === 0) await sentinel.waitProgress();
      }
    } finally {
      restore();
    }
    expect(counters.signalled).to.equal(0);
    // Both kinds of answer were exercised (usage errors, and refusals/ESRCH).
    expect(tally.get(2) ?? 0).to.be.greaterThan(CASES / 2);
    expect(tally.get(1) ?? 0).to.be.greaterThan(0);
  });

  it('the signal counter sees a real, valid stop (control for the test above)', async () => {
    await using other = await spawnTree({ depth: 0 });
    const { counters, restore } = countSignals();
    try {
      expect(await main(['stop', String(other.root)], { out: () => undefined, err: () => undefined, tty: false })).to.equal(0);
    } finally {
      restore();
    }
    expect(counters.signalled).to.be.greaterThan(0);
  });

  it(`answers ${PROCESS_RUNS} malformed command lines run as real CLI processes the same way`, async () => {
    const g = new Gen(prng(SEED ^ 0x1234), sentinel.root);
    const cases: string[][] = [
      [],
      ['stop'],
      ['stop', ''],
      ['stop', '1'],
      ['kill', '1'],
      ['kill', String(process.pid)],
      ['stop', String(process.ppid)],
      ['kill', String(sentinel.root), '--timeout', 'soon'],
      ['stop', String(sentinel.root), String(sentinel.root)],
      ['cont', String(sentinel.root), '--scan=1'],
      ['dump', String(sentinel.root)],
      ['restore', String(sentinel.root), '-D', '/'],
      ['stop', 'x'.repeat(100_000)],
      ['x'.repeat(100_000)],
    ];
    while (cases.length < PROCESS_RUNS) cases.push(malformed(g).map((a) => a.replace(/\0/g, '0').slice(0, 10_000))); // argv cannot carry NUL
    for (let i = 0; i < cases.length; i += 4) {
      const runs = await Promise.all(cases.slice(i, i + 4).map((argv) => cli(argv).then((run) => ({ argv, run }))));
      for (const { argv, run } of runs) checkAnswer(argv, run.code, run.stdout, run.stderr);
      await sentinel.waitProgress();
    }
  });
});
