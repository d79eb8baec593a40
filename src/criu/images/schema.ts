// The part of CRIU's image format treestate reads, written for treestate from
// CRIU's images/*.proto (field numbers and magics are facts of the format;
// names follow CRIU's). Fields treestate does not use are left out: protobuf
// skips unknown fields, so images carry them unharmed.

/** First u32 of every image but inventory.img (criu/include/magic.h, "Sarov"). */
export const IMG_COMMON_MAGIC = 0x54564319;
/** First u32 of images that are not part of a checkpoint proper (stats, caches: "Zlatoust"). */
export const IMG_SERVICE_MAGIC = 0x55105940;

/** The image kinds treestate reads: each file's own magic and the message each record holds. */
export const IMAGES = {
  inventory: { magic: 0x58313116, message: 'inventory_entry' },
  pstree: { magic: 0x50273030, message: 'pstree_entry' },
  core: { magic: 0x55053847, message: 'core_entry' },
  files: { magic: 0x56303138, message: 'file_entry' },
  'remap-fpath': { magic: 0x59133954, message: 'remap_file_path_entry' },
  /** stats-dump in criu's work directory (criu/stats.c): a service image, so IMG_SERVICE_MAGIC comes first. */
  stats: { magic: 0x57093306, message: 'stats_entry', service: true },
  pagemap: { magic: 0x56084025, message: 'pagemap_entry' },
} as const;

export type ImageKind = keyof typeof IMAGES;

/**
 * task_core_entry.task_state (compel/include/uapi/task-state.h; TASK_HELPER
 * is criu/include/pid.h's COMPEL_TASK_MAX + 1). criu records a zombie of
 * the tree as TASK_DEAD (2), as seen in real dumps; compel's own ZOMBIE (6)
 * is never written.
 */
export const TASK_STATES: Record<number, 'alive' | 'zombie' | 'stopped' | 'helper'> = {
  0x01: 'alive',
  0x02: 'zombie',
  0x03: 'stopped',
  0x80: 'helper',
};

/** file_entry.type for a regular file (images/fdinfo.proto, fd_types). */
export const FD_TYPE_REG = 1;
/** remap_file_path_entry.remap_type of a link_remap.N hard link criu made (images/remap-file-path.proto). */
export const REMAP_LINKED = 0;

export const CRIU_IMAGES_PROTO = `
syntax = "proto2";

message task_kobj_ids_entry {
  required uint32 vm_id = 1;
  required uint32 files_id = 2;
  required uint32 fs_id = 3;
  required uint32 sighand_id = 4;
}

message inventory_entry {
  required uint32 img_version = 1;
  optional bool fdinfo_per_id = 2;
  optional task_kobj_ids_entry root_ids = 3;
  optional bool ns_per_id = 4;
  optional uint64 dump_uptime = 8;
}

message pstree_entry {
  required uint32 pid = 1;
  required uint32 ppid = 2;
  required uint32 pgid = 3;
  required uint32 sid = 4;
  repeated uint32 threads = 5;
}

message task_core_entry {
  required uint32 task_state = 1;
  required uint32 exit_code = 2;
  required uint32 personality = 3;
  required uint32 flags = 4;
  required uint64 blk_sigset = 5;
  required string comm = 6;
  optional uint32 stop_signo = 21;
}

message core_entry {
  required uint32 mtype = 1;
  optional task_core_entry tc = 3;
}

message reg_file_entry {
  required uint32 id = 1;
  required uint32 flags = 2;
  required uint64 pos = 3;
  required string name = 6;
  optional sint32 mnt_id = 7 [default = -1];
  optional uint64 size = 8;
}

message file_entry {
  required uint32 type = 1;
  required uint32 id = 2;
  optional reg_file_entry reg = 3;
}

message remap_file_path_entry {
  required uint32 orig_id = 1;
  required uint32 remap_id = 2;
  optional uint32 remap_type = 3;
}

message dump_stats_entry {
  required uint32 freezing_time = 1;
  required uint32 frozen_time = 2;
  required uint32 memdump_time = 3;
  required uint32 memwrite_time = 4;
  required uint64 pages_scanned = 5;
  required uint64 pages_skipped_parent = 6;
  required uint64 pages_written = 7;
  optional uint32 irmap_resolve = 8;
  required uint64 pages_lazy = 9;
}

message stats_entry {
  optional dump_stats_entry dump = 1;
}

// A pagemap image is one pagemap_head (field 1: pages_id) and then
// pagemap_entry records. criu writes the count in nr_pages (5) and 0 in
// compat_nr_pages (2), required in its schema and optional here, so that
// the head decodes as an entry of no pages.
message pagemap_entry {
  required uint64 vaddr = 1;
  optional uint32 compat_nr_pages = 2;
  optional bool in_parent = 3;
  optional uint32 flags = 4;
  optional uint64 nr_pages = 5;
}
`;
