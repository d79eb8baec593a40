// Creating an images directory and its missing parents. Not mkdirSync's
// `recursive`: libuv's mkdir -p retries for as long as a component answers
// ENOENT, and some never stop answering it (`/proc/self/x`: procfs refuses
// the mkdir with ENOENT although the parent exists), a 100% CPU spin.
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';

/** mkdir -p that fails at once where a directory cannot be made in a parent that exists. */
export function makeDirs(dir: string, mode?: number): void {
  try {
    mkdirSync(dir, mode);
    return;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'EEXIST') return;
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT' || dirname(dir) === dir) throw e;
  }
  makeDirs(dirname(dir), mode);
  mkdirSync(dir, mode); // the parent exists now: ENOENT again is final
}
