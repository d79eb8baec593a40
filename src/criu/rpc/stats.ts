// Dump statistics: criu writes them to `stats-dump` in its work directory
// (criu/stats.c, write_stats) as a service image: IMG_SERVICE_MAGIC,
// STATS_MAGIC, then one length-prefixed stats_entry (little-endian u32s).
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { StatsEntry } from './proto.js';

const IMG_SERVICE_MAGIC = 0x55105940;
const STATS_MAGIC = 0x57093306;

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
export function readDumpStats(workDir: string): DumpStats | undefined {
  let data: Buffer;
  try {
    data = readFileSync(join(workDir, 'stats-dump'));
  } catch {
    return undefined;
  }
  if (data.length < 12 || data.readUInt32LE(0) !== IMG_SERVICE_MAGIC || data.readUInt32LE(4) !== STATS_MAGIC) return undefined;
  const size = data.readUInt32LE(8);
  if (12 + size > data.length) return undefined;
  const entry = StatsEntry.toObject(StatsEntry.decode(data.subarray(12, 12 + size)), { longs: Number }) as {
    dump?: Record<string, number>;
  };
  const d = entry.dump;
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
