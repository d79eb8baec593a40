// CRIU's images, decoded with protobufjs over treestate's own schema subset
// (./schema.ts). The framing (criu/image.c): a u32 magic pair — the common
// magic then the image's own, or the inventory's magic alone — then records,
// each a little-endian u32 size followed by one protobuf message of that size.
// A file that breaks the framing or a record that does not decode is EIMAGES
// naming the file and the offset: images are input, never trusted to parse.
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import type { Root, Type } from 'protobufjs';
import { TreeStateError, hasCode } from '../../errors.js';
import { CRIU_IMAGES_PROTO, FD_TYPE_REG, IMAGES, IMG_COMMON_MAGIC, IMG_SERVICE_MAGIC, REMAP_LINKED, TASK_STATES, type ImageKind } from './schema.js';

export type TaskState = (typeof TASK_STATES)[number] | 'unknown';

/** One process of a checkpoint, as pstree.img and its core image say. */
export interface ImageProcess {
  pid: number;
  ppid: number;
  pgid: number;
  sid: number;
  /** Every thread id, the leader's (= pid) included; a zombie's is its pid alone. */
  threads: number[];
  /** task_core_entry.task_state: what criu found the process in at dump time (`zombie`: criu's TASK_DEAD). */
  state: TaskState;
  comm: string;
}

export interface Checkpoint {
  imgVersion: number;
  /** Depth first, as criu lists them: the root first. */
  processes: ImageProcess[];
}

let root: Promise<Root> | undefined;

// Loaded on first use: most commands never read an image, and the CLI starts cold.
function schema(): Promise<Root> {
  root ??= import('protobufjs').then((m) => {
    const parsed = (m.default ?? m).parse(CRIU_IMAGES_PROTO, { keepCase: true }).root;
    // Resolving sets each field's presence: without it `required` is not enforced.
    parsed.resolveAll();
    return parsed;
  });
  return root;
}

const hex = (n: number) => `0x${n.toString(16).padStart(8, '0')}`;

function decodeRecords(path: string, buf: Buffer, kind: ImageKind, type: Type): Record<string, unknown>[] {
  const fail = (why: string) => new TreeStateError('EIMAGES', `${path} is not a readable CRIU ${kind} image: ${why}`, { details: { path } });
  const { magic } = IMAGES[kind];
  let off = 0;
  const service = 'service' in IMAGES[kind];
  const magics = kind === 'inventory' ? [magic] : [service ? IMG_SERVICE_MAGIC : IMG_COMMON_MAGIC, magic];
  for (const want of magics) {
    if (buf.length < off + 4) throw fail(`truncated: ${buf.length} bytes, too short for its magic`);
    const got = buf.readUInt32LE(off);
    if (got !== want) throw fail(`magic ${hex(got)} at offset ${off}, expected ${hex(want)}`);
    off += 4;
  }
  const records: Record<string, unknown>[] = [];
  while (off < buf.length) {
    if (buf.length - off < 4) throw fail(`truncated: ${buf.length - off} byte(s) at offset ${off} cannot hold a record's size`);
    const size = buf.readUInt32LE(off);
    if (size > buf.length - off - 4) throw fail(`truncated: the record at offset ${off} needs ${size} bytes, ${buf.length - off - 4} are left`);
    try {
      records.push(type.toObject(type.decode(buf.subarray(off + 4, off + 4 + size)), { longs: Number, defaults: true }));
    } catch (e) {
      throw fail(`the record at offset ${off} does not decode as ${type.name}: ${(e as Error).message}`);
    }
    off += 4 + size;
  }
  return records;
}

/** Every record of one image file; EIMAGES when it is missing, truncated or not of this kind. */
export async function readImage(path: string, kind: ImageKind): Promise<Record<string, unknown>[]> {
  let buf: Buffer;
  try {
    buf = readFileSync(path);
  } catch (e) {
    throw new TreeStateError('EIMAGES', `cannot read the CRIU image ${path}: ${(e as Error).message}`, { cause: e, details: { path } });
  }
  const type = (await schema()).lookupType(IMAGES[kind].message);
  return decodeRecords(path, buf, kind, type);
}

/** The processes and threads of the checkpoint in `dir`, each with the state criu recorded. */
export async function readCheckpoint(dir: string): Promise<Checkpoint> {
  const inventory = await readImage(join(dir, 'inventory.img'), 'inventory');
  if (inventory.length !== 1) throw new TreeStateError('EIMAGES', `${join(dir, 'inventory.img')} holds ${inventory.length} records, not 1`);
  const entries = await readImage(join(dir, 'pstree.img'), 'pstree');
  if (entries.length === 0) throw new TreeStateError('EIMAGES', `${join(dir, 'pstree.img')} lists no process`);
  const processes: ImageProcess[] = [];
  for (const e of entries) {
    const pid = e.pid as number;
    const core = await readImage(join(dir, `core-${pid}.img`), 'core');
    const tc = core[0]?.tc as { task_state: number; comm: string } | undefined;
    const state = tc ? (TASK_STATES[tc.task_state] ?? 'unknown') : 'unknown';
    processes.push({
      pid,
      ppid: e.ppid as number,
      pgid: e.pgid as number,
      sid: e.sid as number,
      // criu fills no thread ids for a zombie (the field holds whatever its
      // unfilled array held, as real dumps show): a zombie is its pid alone.
      threads: state === 'zombie' ? [pid] : (e.threads as number[]),
      state,
      comm: tc?.comm ?? '',
    });
  }
  return { imgVersion: inventory[0]!.img_version as number, processes };
}

/**
 * The link_remap.N files criu made for the checkpoint in `dir`: hard links to
 * open files that had been unlinked (`--link-remap`), which criu leaves in
 * place for the restore. As criu wrote them — relative to the root of the
 * file's mount (criu strips the leading '/').
 */
export async function readLinkRemaps(dir: string): Promise<string[]> {
  let remaps: Record<string, unknown>[];
  try {
    remaps = await readImage(join(dir, 'remap-fpath.img'), 'remap-fpath');
  } catch (e) {
    // criu writes no remap image when no file needed one.
    if (hasCode(e, 'EIMAGES') && hasCode((e as TreeStateError).cause, 'ENOENT')) return [];
    throw e;
  }
  const linked = new Set(remaps.filter((r) => r.remap_type === REMAP_LINKED).map((r) => r.remap_id as number));
  if (linked.size === 0) return [];
  const files = await readImage(join(dir, 'files.img'), 'files');
  return files
    .filter((f) => f.type === FD_TYPE_REG && linked.has(f.id as number))
    .map((f) => (f.reg as { name: string }).name);
}

/** How many memory pages the checkpoint in `dir` records (its pagemap images: pages written, lazy or in a parent alike). */
export async function countPages(dir: string): Promise<number> {
  let pages = 0;
  for (const name of readdirSync(dir).filter((f) => /^pagemap-\d+\.img$/.test(f))) {
    for (const entry of await readImage(join(dir, name), 'pagemap')) pages += Number(entry.nr_pages || entry.compat_nr_pages || 0);
  }
  return pages;
}
