// Dump statistics: criu writes them to `stats-dump` in its work directory
// (criu/stats.c, write_stats) as a service image, read like every other
// image (src/criu/images/).
import { join } from 'node:path';
import { readImage } from '../images/read.js';

export interface DumpStats {
  /** Time to freeze the tree (µs → ms, as criu's --display-stats). */
  freezingMs: number;
  /** How long the tree stayed frozen. */
  frozenMs: number;
  memdumpMs: number;
  memwriteMs: number;
  pagesScanned: number;
  /** Pages left out because the previous images hold them (pre-dump, --prev). */
  pagesSkippedParent: number;
  pagesWritten: number;
  /** pagesWritten × the page size. */
  bytesWritten: number;
}

const PAGE_SIZE = 4096;

/** The stats of the last dump in `workDir`; undefined when criu wrote none or they cannot be read. */
export async function readDumpStats(workDir: string): Promise<DumpStats | undefined> {
  let records: Record<string, unknown>[];
  try {
    records = await readImage(join(workDir, 'stats-dump'), 'stats');
  } catch {
    return undefined; // none written, or not readable: the dump itself succeeded
  }
  const d = records[0]?.dump as Record<string, number> | undefined;
  if (!d) return undefined;
  const ms = (us: number | undefined) => Math.round((us ?? 0) / 100) / 10;
  return {
    freezingMs: ms(d.freezing_time),
    frozenMs: ms(d.frozen_time),
    memdumpMs: ms(d.memdump_time),
    memwriteMs: ms(d.memwrite_time),
    pagesScanned: d.pages_scanned ?? 0,
    pagesSkippedParent: d.pages_skipped_parent ?? 0,
    pagesWritten: d.pages_written ?? 0,
    bytesWritten: (d.pages_written ?? 0) * PAGE_SIZE,
  };
}

/** "frozen 12 ms, 3.1 MB written": for a terminal. */
export function summarizeStats(s: DumpStats): string {
  const mb = s.bytesWritten / 1e6;
  const size = mb >= 0.1 ? `${mb.toFixed(1)} MB` : `${Math.round(s.bytesWritten / 1e3)} kB`;
  return `frozen ${s.frozenMs} ms, ${size} written`;
}
