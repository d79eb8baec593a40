// What criu leaves on the tree's file systems after a dump that left the tree
// alive. For an open file whose path was unlinked while another hard link
// keeps it (nlink > 0), `--link-remap` makes criu link it back as
// DIR/link_remap.ID, next to the lost path, so a restore can reopen it.
// criu deletes those links itself after `--leave-running`, but not after
// `--leave-stopped` (criu/cr-dump.c, cr_dump_finish): they stay beside the
// program's files, and the next dump of the same tree fails on them ("Can't
// link remap … File exists"). The images say exactly which they are.
import { unlinkSync } from 'node:fs';
import { basename, join } from 'node:path';
import { readLinkRemaps } from './images/read.js';

export interface LinkRemapCleanup {
  /** link_remap files removed, as criu named them (from the root of the tree's mount namespace). */
  removed: string[];
  /** Those that could not be removed, with why. */
  left: Array<{ path: string; error: string }>;
}

/** Removes the link_remap files the dump in `imagesDir` made for the live tree of `root`. */
export async function removeLinkRemaps(imagesDir: string, root: number): Promise<LinkRemapCleanup> {
  const out: LinkRemapCleanup = { removed: [], left: [] };
  let names: string[];
  try {
    names = await readLinkRemaps(imagesDir);
  } catch (e) {
    // The dump itself succeeded: say what could not be read rather than fail it.
    out.left.push({ path: join(imagesDir, 'remap-fpath.img'), error: (e as Error).message });
    return out;
  }
  for (const name of names) {
    // Only what criu itself names so: the images are input, not a list of files to delete.
    if (!/^link_remap\.\d+$/.test(basename(name))) continue;
    try {
      // criu resolves the name from the root of the tree's mount namespace.
      unlinkSync(join(`/proc/${root}/root`, name));
      out.removed.push(name);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') out.left.push({ path: name, error: (e as Error).message });
    }
  }
  return out;
}
