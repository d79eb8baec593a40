// /proc/PID/stat and /proc/PID/task/TID/stat, read in JavaScript where the
// addon's walk is not at hand (a record's root, a test's diagnostics).
import { readFileSync } from 'node:fs';

/**
 * The fields of a stat file after the command: [state, ppid, …] (the
 * command, in parentheses, may itself hold spaces and parentheses). Throws
 * (ENOENT, ESRCH) once the process is gone.
 */
export function readStatFields(path: string): string[] {
  const stat = readFileSync(path, 'utf8');
  return stat.slice(stat.lastIndexOf(')') + 2).split(' ');
}
