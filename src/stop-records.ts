// What treestate stopped, remembered per tree: a continue undoes treestate's
// own stop and leaves the application's own stops (job control, a supervisor
// holding a worker) as the application had them. One small file per tree,
// `<root pid>-<root start time>.json`, in the private state directory
// (src/state-dir.ts): a second treestate process (the `cont` after a `stop`)
// finds it there. A record names processes by pid and start time, and counts
// only while its root is that very process, in this boot: a record of a tree
// that is gone, or whose root pid names another process now, is stale,
// ignored and removed when seen; past 64 records, a lookup removes every
// stale one it can tell is stale (see pruneGone).
import type { Identity } from './native.js';
import { readStatFields } from './proc-stat.js';
import { bootId, readStateFile, removeStateFile, stateDir, stateFiles, writeStateFile } from './state-dir.js';

export interface StopRecord {
  version: 1;
  boot: string;
  root: Identity;
  /**
   * `stopped`: treestate (or criu at its request) stopped the tree; `running`:
   * treestate left it running but for `kept`.
   */
  state: 'stopped' | 'running';
  /** The application's own stops: stopped before treestate acted, kept stopped by a continue. */
  kept: Identity[];
  /** `stopped` records: the processes treestate stopped. */
  stopped: Identity[];
  /** What wrote it: stop, dump, restore, continue. */
  by: string;
}

/** The records' directory; undefined when this process has none it may use (see state-dir.ts). */
export function recordsDir(): string | undefined {
  return stateDir('stops', { forUsers: true });
}

function fileName(root: Identity): string {
  return `${root.pid}-${root.startTime}.json`;
}

function isIdentity(v: unknown): v is Identity {
  const o = v as Identity;
  return typeof o === 'object' && o !== null && Number.isSafeInteger(o.pid) && o.pid > 0 && Number.isSafeInteger(o.startTime) && o.startTime >= 0;
}

/** Why `text` is not a record of `root`, or the record. */
function parse(text: string, root: Identity): StopRecord | string {
  let v: StopRecord;
  try {
    v = JSON.parse(text) as StopRecord;
  } catch (e) {
    return `not JSON (${(e as Error).message})`;
  }
  if (typeof v !== 'object' || v === null || v.version !== 1) return 'not a version 1 record';
  if (!isIdentity(v.root) || v.root.pid !== root.pid || v.root.startTime !== root.startTime) return 'its root is not the one its name says';
  if (v.state !== 'stopped' && v.state !== 'running') return `unknown state ${JSON.stringify(v.state)}`;
  if (!Array.isArray(v.kept) || !v.kept.every(isIdentity) || !Array.isArray(v.stopped) || !v.stopped.every(isIdentity)) return 'its process lists are malformed';
  return v;
}

export interface RecordLookup {
  /** The records of that pid, newest root first (the others are of earlier processes that had the pid, hence stale). */
  records: StopRecord[];
  /** Records that could not be read: removed, each said here. */
  warnings: string[];
}

/**
 * Past this many records, a lookup also removes the records of other pids
 * whose root is gone: a tree stopped and then killed by other means (or that
 * exited) leaves its record behind, and every lookup lists the directory.
 */
const PRUNE_PAST = 64;

/** Whether `root` is gone: no process has its pid, or the one that has it started at another time. Unknown (EACCES …) is not gone. */
function rootGone(root: Identity): boolean {
  let fields: string[];
  try {
    fields = readStatFields(`/proc/${root.pid}/stat`);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    return code === 'ENOENT' || code === 'ESRCH';
  }
  // Field 22, the start time, is the 20th after the command.
  return Number(fields[19]) !== root.startTime;
}

/** Removes the records, of any pid but `pid`, whose root is gone; returns the names left. */
function pruneGone(dir: string, names: string[], pid: number): string[] {
  return names.filter((name) => {
    const m = /^(\d+)-(\d+)\.json$/.exec(name);
    if (!m || Number(m[1]) === pid || !rootGone({ pid: Number(m[1]), startTime: Number(m[2]) })) return true;
    removeStateFile(dir, name);
    return false;
  });
}

/** Every record kept for root pid `pid`. Unreadable ones, and ones of another boot, are removed (and, past PRUNE_PAST records, those of any root that is gone). */
export function recordsFor(pid: number): RecordLookup {
  const dir = recordsDir();
  const out: RecordLookup = { records: [], warnings: [] };
  if (!dir) return out;
  const boot = bootId();
  let names = stateFiles(dir);
  if (names.length > PRUNE_PAST) names = pruneGone(dir, names, pid);
  for (const name of names) {
    const m = /^(\d+)-(\d+)\.json$/.exec(name);
    if (!m || Number(m[1]) !== pid) continue;
    const root = { pid, startTime: Number(m[2]) };
    const text = readStateFile(dir, name);
    const parsed = text === undefined ? 'it cannot be read' : parse(text, root);
    if (typeof parsed === 'string' || parsed.boot !== boot) {
      removeStateFile(dir, name);
      if (typeof parsed === 'string') out.warnings.push(`ignored and removed an unreadable record of what treestate stopped in the tree of ${pid} (${dir}/${name}: ${parsed}); it keeps nothing stopped`);
      continue;
    }
    out.records.push(parsed);
  }
  out.records.sort((a, b) => b.root.startTime - a.root.startTime);
  return out;
}

/** The record of the tree whose root is `root`, if one is kept (see recordsFor for what is removed). */
export function recordOf(root: Identity): { record?: StopRecord; warnings: string[] } {
  const { records, warnings } = recordsFor(root.pid);
  return { record: records.find((r) => r.root.startTime === root.startTime), warnings };
}

/** Removes the records of pid `pid` but the one of the root with start time `live` (the others are stale). */
export function removeRecords(pid: number, live?: number): void {
  const dir = recordsDir();
  if (!dir) return;
  for (const name of stateFiles(dir)) {
    const m = /^(\d+)-(\d+)\.json$/.exec(name);
    if (m && Number(m[1]) === pid && Number(m[2]) !== live) removeStateFile(dir, name);
  }
}

const key = (p: Identity) => `${p.pid}:${p.startTime}`;

function write(record: Omit<StopRecord, 'version' | 'boot'>): string | undefined {
  const dir = recordsDir();
  if (!dir) return undefined;
  const name = fileName(record.root);
  return writeStateFile(dir, name, JSON.stringify({ version: 1, boot: bootId(), ...record })) ? `${dir}/${name}` : undefined;
}

/** What a stop recorded: the application's own stops it kept apart, and anything worth saying. */
export interface RecordedStop {
  kept: Identity[];
  warnings: string[];
}

/**
 * Records that treestate stopped the tree of `root`, whose live processes are
 * `present`, of which `foundStopped` were stopped already, not by this call.
 * A tree treestate had stopped before (a `stopped` record) stays treestate's:
 * what it stopped then is not the application's now.
 */
export function recordStop(root: Identity, present: Identity[], foundStopped: Identity[], by: string): RecordedStop {
  const warnings: string[] = [];
  const kept = applicationStops(root, foundStopped, warnings);
  const keptKeys = new Set(kept.map(key));
  const written = write({ root, state: 'stopped', kept, stopped: present.filter((p) => !keptKeys.has(key(p))), by });
  if (!written && kept.length > 0) {
    warnings.push(
      `${kept.length === 1 ? 'process' : 'processes'} ${kept.map((p) => p.pid).join(', ')} ${kept.length === 1 ? 'was' : 'were'} stopped by the application already, but treestate has no private directory to remember it in (as root /run/treestate, otherwise $XDG_RUNTIME_DIR/treestate): a later continue resumes ${kept.length === 1 ? 'it' : 'them'} too`,
    );
  }
  return { kept, warnings };
}

/**
 * Of `foundStopped`, the processes the application stopped: all of them,
 * but those treestate stopped itself as its `stopped` record of the tree says.
 */
export function applicationStops(root: Identity, foundStopped: Identity[], warnings: string[] = []): Identity[] {
  const { record, warnings: unread } = recordOf(root);
  warnings.push(...unread);
  const ours = new Set(record?.state === 'stopped' ? record.stopped.map(key) : []);
  return foundStopped.filter((p) => !ours.has(key(p)));
}

/**
 * After a continue of the tree of `root` that left `kept` stopped (the
 * application's own stops), remembers them, so that status and wait call the
 * tree running and a later continue keeps them too; with none, forgets the tree.
 */
export function recordContinue(root: Identity, kept: Identity[], by: string): void {
  if (kept.length === 0 || !write({ root, state: 'running', kept, stopped: [], by })) removeRecords(root.pid);
  else removeRecords(root.pid, root.startTime);
}

/**
 * Beside a checkpoint's images: the processes (their pids in the images)
 * that were stopped when dumped because treestate had stopped them. criu
 * records every stopped process as stopped; a restore to Running resumes
 * these and keeps the rest, the application's own stops.
 */
const IMAGES_NOTE = 'treestate-stops.json';

export function noteImageStops(imagesDir: string, stoppedByTreestate: number[]): void {
  if (stoppedByTreestate.length > 0) writeStateFile(imagesDir, IMAGES_NOTE, JSON.stringify({ version: 1, stoppedByTreestate }));
}

/** The note of a checkpoint (see noteImageStops): none for images treestate did not stop; a warning for one it cannot read. */
export function readImageStops(imagesDir: string): { stoppedByTreestate: number[]; warning?: string } {
  const text = readStateFile(imagesDir, IMAGES_NOTE);
  if (text === undefined) return { stoppedByTreestate: [] };
  try {
    const v = JSON.parse(text) as { version?: number; stoppedByTreestate?: unknown };
    const list = v.stoppedByTreestate;
    if (v.version === 1 && Array.isArray(list) && list.every((p) => Number.isSafeInteger(p) && p > 0)) return { stoppedByTreestate: list as number[] };
  } catch {
    // said below
  }
  return {
    stoppedByTreestate: [],
    warning: `${imagesDir}/${IMAGES_NOTE} (which processes treestate had stopped when the images were made) cannot be read: every process stopped in the images is taken for the application's own stop and kept stopped`,
  };
}
