// A small, strict argv parser: every command declares its flags, anything
// else is a usage error (exit 2), never a guess.

export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UsageError';
  }
}

export interface FlagSpec {
  /** Takes a value (`--timeout 500`, `--timeout=500`). */
  value?: boolean;
  /** May be given more than once (`--hook A=x --hook B=y`): its values go to `lists`. */
  repeat?: boolean;
  alias?: string;
}

export interface Parsed {
  positionals: string[];
  flags: Map<string, string | true>;
  /** What came after `--`: passed on untouched (criu's own arguments). */
  extra: string[];
  /** The values of repeatable flags, in order. */
  lists: Map<string, string[]>;
}

export function parseArgs(argv: string[], spec: Record<string, FlagSpec>): Parsed {
  const positionals: string[] = [];
  const flags = new Map<string, string | true>();
  const extra: string[] = [];
  const lists = new Map<string, string[]>();
  const byAlias = new Map(Object.entries(spec).flatMap(([name, s]) => (s.alias ? [[s.alias, name] as const] : [])));
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === '--') {
      extra.push(...argv.slice(i + 1));
      break;
    }
    if (!arg.startsWith('-') || arg === '-' || /^-\d/.test(arg)) {
      positionals.push(arg);
      continue;
    }
    const eq = arg.indexOf('=');
    let name = eq > 0 ? arg.slice(0, eq) : arg;
    name = byAlias.get(name) ?? name;
    const flag = spec[name];
    if (!flag) throw new UsageError(`unknown option ${quote(eq > 0 ? arg.slice(0, eq) : arg)}`);
    if (flags.has(name) && !flag.repeat) throw new UsageError(`${name} given twice`);
    if (flag.value) {
      const value = eq > 0 ? arg.slice(eq + 1) : argv[++i];
      if (value === undefined || (eq < 0 && value.startsWith('--'))) throw new UsageError(`${name} needs a value`);
      if (flag.repeat) {
        lists.set(name, [...(lists.get(name) ?? []), value]);
        continue;
      }
      flags.set(name, value);
    } else {
      if (eq > 0) throw new UsageError(`${name} takes no value`);
      flags.set(name, true);
    }
  }
  return { positionals, flags, extra, lists };
}

/** The options part of argv: what comes before `--`. */
export function optionsPart(argv: string[]): string[] {
  const end = argv.indexOf('--');
  return end < 0 ? argv : argv.slice(0, end);
}

/** Every value of a `repeat` flag, in order. */
export function repeated(args: Parsed, name: string): string[] {
  return args.lists.get(name) ?? [];
}

/** A value as a message may quote it: hostile input can be megabytes long. */
export function quote(value: string): string {
  return JSON.stringify(value.length > 40 ? `${value.slice(0, 40)}…` : value);
}

/** A non-negative integer number of milliseconds. */
export function parseMs(name: string, value: string | true | undefined): number | undefined {
  if (value === undefined) return undefined;
  if (value === true || !/^\d{1,9}$/.test(value)) throw new UsageError(`${name} takes a whole number of milliseconds (0 to 999999999), not ${value === true ? 'nothing' : quote(value)}`);
  return Number(value);
}

export function parseChoice<T extends string>(name: string, value: string | true | undefined, choices: readonly T[]): T | undefined {
  if (value === undefined) return undefined;
  if (value === true || !choices.includes(value as T)) throw new UsageError(`${name} must be one of ${choices.join(', ')}, not ${value === true ? 'nothing' : quote(value)}`);
  return value as T;
}

/** A pid operand: decimal digits only; range and meaning are the library's to judge. */
export function parsePid(positionals: string[], command: string): number {
  if (positionals.length === 0) throw new UsageError(`${command} needs a PID`);
  if (positionals.length > 1) throw new UsageError(`${command} takes one PID, got ${positionals.length} operands`);
  const text = positionals[0]!;
  if (!/^\d{1,10}$/.test(text)) throw new UsageError(`not a process id: ${quote(text)}`);
  return Number(text);
}
