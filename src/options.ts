// Numeric options are checked before anything runs: NaN compares false with
// every deadline (a `timeoutMs: NaN` waited forever), and setTimeout fires at
// once for a delay it cannot hold (above 2^31 - 1 ms).
import { TreeStateError } from './errors.js';

export interface NumberRule {
  min: number;
  max: number;
  integer: boolean;
}

const TIMER_MAX = 2_147_483_647;

/** A duration in milliseconds, as setTimeout can hold it. */
export const DURATION: NumberRule = { min: 0, max: TIMER_MAX, integer: false };

export function wholeNumber(min: number, max: number): NumberRule {
  return { min, max, integer: true };
}

function describeRule(rule: NumberRule): string {
  return `${rule.integer ? 'a whole number' : 'a number'} from ${rule.min} to ${rule.max}`;
}

function describeValue(value: unknown): string {
  if (typeof value === 'number') return String(value);
  if (typeof value === 'string') return JSON.stringify(value.length > 40 ? `${value.slice(0, 40)}…` : value);
  return value === null ? 'null' : typeof value;
}

/** Rejects (EINVAL) any option named in `rules` that is given and is not a finite number within its rule. */
export function checkNumbers<T extends object>(options: T | undefined, rules: { [K in keyof T]?: NumberRule }): void {
  for (const [name, rule] of Object.entries(rules) as Array<[string, NumberRule]>) {
    const value = (options as Record<string, unknown> | undefined)?.[name];
    if (value === undefined) continue;
    if (typeof value !== 'number' || !Number.isFinite(value) || value < rule.min || value > rule.max || (rule.integer && !Number.isInteger(value))) {
      throw new TreeStateError('EINVAL', `${name} must be ${describeRule(rule)}, not ${describeValue(value)}`);
    }
  }
}
