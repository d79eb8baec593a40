// The part of CRIU's RPC protocol (images/rpc.proto) treestate speaks, and of
// its stats image (images/stats.proto), written for this project: field
// numbers and enum values are facts of the protocol and must match CRIU's.
// proto2, as CRIU's: `required` fields must be sent.
import { createRequire } from 'node:module';
import type { Type } from 'protobufjs';

const SCHEMA = `
syntax = "proto2";

message criu_page_server_info {
  optional string address = 1;
  optional int32  port    = 2;
  optional int32  pid     = 3;
  optional int32  fd      = 4;
}

enum criu_network_lock_method {
  IPTABLES = 1;
  NFTABLES = 2;
  SKIP     = 3;
}

message criu_opts {
  required int32  images_dir_fd     = 1 [default = -1];
  optional int32  pid               = 2;
  optional bool   leave_running     = 3;
  optional bool   ext_unix_sk       = 4;
  optional bool   tcp_established   = 5;
  optional bool   shell_job         = 7;
  optional int32  log_level         = 9 [default = 2];
  optional string log_file          = 10;
  optional bool   notify_scripts    = 12;
  optional string parent_img        = 14;
  optional bool   track_mem         = 15;
  optional int32  work_dir_fd       = 17;
  repeated string external          = 37;
  optional bool   orphan_pts_master = 50;
  optional criu_network_lock_method network_lock = 64 [default = IPTABLES];
  optional bool   leave_stopped     = 69;
  optional bool   display_stats     = 70;
}

message criu_dump_resp {
  optional bool restored = 1;
}

message criu_restore_resp {
  required int32 pid = 1;
}

message criu_notify {
  optional string script = 1;
  optional int32  pid    = 2;
}

enum criu_req_type {
  EMPTY            = 0;
  DUMP             = 1;
  RESTORE          = 2;
  CHECK            = 3;
  PRE_DUMP         = 4;
  PAGE_SERVER      = 5;
  NOTIFY           = 6;
  CPUINFO_DUMP     = 7;
  CPUINFO_CHECK    = 8;
  FEATURE_CHECK    = 9;
  VERSION          = 10;
  WAIT_PID         = 11;
  PAGE_SERVER_CHLD = 12;
  SINGLE_PRE_DUMP  = 13;
}

message criu_features {
  optional bool mem_track   = 1;
  optional bool lazy_pages  = 2;
  optional bool pidfd_store = 3;
}

message criu_req {
  required criu_req_type type           = 1;
  optional criu_opts     opts           = 2;
  optional bool          notify_success = 3;
  optional bool          keep_open      = 4;
  optional criu_features features       = 5;
  optional uint32        pid            = 6;
}

message criu_version {
  required int32  major_number = 1;
  required int32  minor_number = 2;
  optional string gitid        = 3;
  optional int32  sublevel     = 4;
  optional int32  extra        = 5;
  optional string name         = 6;
}

message criu_resp {
  required criu_req_type         type      = 1;
  required bool                  success   = 2;
  optional criu_dump_resp        dump      = 3;
  optional criu_restore_resp     restore   = 4;
  optional criu_notify           notify    = 5;
  optional criu_page_server_info ps        = 6;
  optional int32                 cr_errno  = 7;
  optional criu_features         features  = 8;
  optional string                cr_errmsg = 9;
  optional criu_version          version   = 10;
  optional int32                 status    = 11;
}

`;

let types: { req: Type; resp: Type } | undefined;

// Parsed on first use: `require('treestate')` and the commands that never
// speak to criu do not load protobufjs (it costs a cold start milliseconds).
function messages(): { req: Type; resp: Type } {
  if (!types) {
    const protobuf = createRequire(import.meta.url)('protobufjs') as typeof import('protobufjs');
    const root = protobuf.parse(SCHEMA, { keepCase: true }).root;
    types = { req: root.lookupType('criu_req'), resp: root.lookupType('criu_resp') };
  }
  return types;
}

/** criu_req_type, by name. */
export const ReqType = {
  EMPTY: 0,
  DUMP: 1,
  RESTORE: 2,
  CHECK: 3,
  PRE_DUMP: 4,
  NOTIFY: 6,
  FEATURE_CHECK: 9,
  VERSION: 10,
  SINGLE_PRE_DUMP: 13,
} as const;

export const NetworkLockMethod = { iptables: 1, nftables: 2, skip: 3 } as const;

export interface CriuOptsMessage {
  images_dir_fd: number;
  pid?: number;
  leave_running?: boolean;
  leave_stopped?: boolean;
  ext_unix_sk?: boolean;
  tcp_established?: boolean;
  shell_job?: boolean;
  log_level?: number;
  log_file?: string;
  notify_scripts?: boolean;
  parent_img?: string;
  track_mem?: boolean;
  work_dir_fd?: number;
  external?: string[];
  orphan_pts_master?: boolean;
  network_lock?: number;
  display_stats?: boolean;
}

export interface CriuReqMessage {
  type: number;
  opts?: CriuOptsMessage;
  notify_success?: boolean;
  keep_open?: boolean;
  features?: { mem_track?: boolean; lazy_pages?: boolean; pidfd_store?: boolean };
}

export interface CriuRespMessage {
  type: number;
  success: boolean;
  dump?: { restored?: boolean };
  restore?: { pid: number };
  notify?: { script?: string; pid?: number };
  cr_errno?: number;
  cr_errmsg?: string;
  features?: { mem_track?: boolean; lazy_pages?: boolean; pidfd_store?: boolean };
  version?: { major_number: number; minor_number: number; gitid?: string; sublevel?: number; extra?: number; name?: string };
}

export function encodeReq(req: CriuReqMessage): Buffer {
  const { req: CriuReq } = messages();
  const message = CriuReq.fromObject(req);
  const invalid = CriuReq.verify(message);
  if (invalid) throw new Error(`criu_req: ${invalid}`);
  return Buffer.from(CriuReq.encode(message).finish());
}

export function decodeResp(data: Buffer): CriuRespMessage {
  // Only fields CRIU set are present (no defaults filled in): an absent
  // cr_errno is not "errno 0".
  const { resp: CriuResp } = messages();
  return CriuResp.toObject(CriuResp.decode(data), { longs: Number, enums: Number }) as CriuRespMessage;
}
