// The native surface, declared once: everything else is typed against it.
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { ErrorCode, SystemErrorCode } from './errors.js';

/** With its pid, a process's start time (clock ticks after boot) names it: a pid taken again names another. */
export interface Identity {
  pid: number;
  startTime: number;
}

/** A thread as a pass read it: the one thread record (ThreadInfo and ThreadRef build on it). */
export interface NativeThread {
  tid: number;
  /**
   * The kernel's state letter: R S D T t Z X I …, or, not kernel letters,
   * '+' for a thread a verifying pass did not read again because the SIGCONT
   * of the pass before it ended its group-stop (`verify`), '?' for one a
   * pass did not read because it signalled the process on its leader's
   * state (a stop's first pass).
   */
  state: string;
  /** Only for threads in ptrace-stop ('t'). */
  tracerPid?: number;
  /** Only for threads in uninterruptible sleep ('D'): it waits in vfork for its child to exec or exit. */
  vfork?: boolean;
}

/** A process as a pass read it: the one process record (ProcessInfo builds on it). */
export interface NativeProcess extends Identity {
  ppid: number;
  comm: string;
  kernelThread: boolean;
  threads: NativeThread[];
  children: number[];
}

export interface NativeFailure {
  /** An errno's name, or one of the walk's own refusals (EREFUSED …). */
  code: SystemErrorCode | ErrorCode;
  errno: number;
  syscall: string;
  pid: number;
  message: string;
  /** strerror's words for errno ("Too many open files"); empty for a policy refusal. */
  description: string;
}

export interface NativeWalkResult {
  root: number;
  walk: 'children' | 'scan';
  /** Threads that read the tree: helpers join the pass on big trees (up to 4, one per core). */
  walkers: number;
  /** Depth first from the root, children in the order their parent lists them. */
  processes: NativeProcess[];
  /** The processes this pass signalled, in the order it signalled them. */
  signalled: number[];
  gone: number[];
  failures: NativeFailure[];
  /** A kill of a tree that may still fork: processes that had begun to exit when their children were listed again (a child forked just before the signal may be missing). */
  unlisted: number[];
  /** The verifying pass (`verify`), when this one found a thread in group-stop and failed nowhere. */
  verifying?: NativeWalkResult;
}

/**
 * What a pass is for; native/walk.cc (PlanPass) derives from it the signal,
 * the order, which processes are signalled and how threads are read:
 * - `look`: read the tree, signal nothing.
 * - `stop`: SIGSTOP to every process with a thread not stopped, parents
 *   first (before they fork). The first pass signals a process whose leader
 *   runs or sleeps (R, S) without reading its other threads ('?').
 * - `continue`: SIGCONT to every thread, children first, once the whole
 *   tree is read; the first pass to every process, later ones to those with
 *   a thread in group-stop.
 * - `kill`: SIGKILL to every process of a tree that may still fork, parents
 *   first; one not stopped when read has its children read again once
 *   signalled (a process sent SIGKILL forks no more), and is signalled even
 *   if reading it failed for want of resources. A child that has since moved
 *   to another parent is followed if it started before it was listed.
 * - `kill-stopped`: SIGKILL to every process of a stopped tree: read whole,
 *   then children first in one burst.
 */
export type PassKind = 'look' | 'stop' | 'continue' | 'kill' | 'kill-stopped';

export interface NativeWalkOptions {
  root: number;
  rootStartTime?: number;
  scan?: boolean;
  /** Default `look`. */
  kind?: PassKind;
  /** Stop and continue: the operation's first signalling pass. */
  first?: boolean;
  /**
   * Continue only: signal, then verify in the same native call, at once,
   * with a later continue pass (the result's `verifying`) when this one
   * found a thread in group-stop and failed nowhere: the verification would
   * otherwise wait for the JS thread while the threads it just woke hold the cores.
   */
  verify?: boolean;
  protect?: number[];
  /** Processes the pass never signals, whatever its kind (matched by pid and start time): the application's own stops, kept by a continue. */
  keep?: Identity[];
  /** Files kept open from the previous passes of the same operation. */
  cache?: NativeWalkCache;
}

/** Opaque: the files a run of passes keeps open (native/walk.h, WalkCache). */
export type NativeWalkCache = { readonly __brand: 'NativeWalkCache' };

export interface NativeSignalListResult {
  signalled: number[];
  gone: number[];
  failures: NativeFailure[];
}

export interface NativeProcessFacts {
  pid: number;
  pgid: number;
  sid: number;
  /** Controlling terminal (device number); 0: none. */
  ttyNr: number;
  /** Its session is led from outside its own pid namespace (NSsid ends in 0). */
  sidOutsideNs: boolean;
  /** Its process group is led from outside its own pid namespace (NSpgid ends in 0). */
  pgidOutsideNs: boolean;
  /** Tracer of any of its threads; 0: none. */
  tracer: number;
  /** Inodes of the sockets it holds. */
  sockets: number[];
  error?: { code: string; errno: number };
}

export interface NativeInspection {
  processes: NativeProcessFacts[];
  /** `path`: "" unnamed, "@name" abstract, else the bound path; `peer` 0: not connected. */
  unix: Array<{ inode: number; peer: number; path: string }>;
  /** `state` as in include/net/tcp_states.h (1 established … 10 listen). */
  tcp: Array<{ inode: number; state: number; local: string; remote: string }>;
}

/** One whole SEQPACKET message and the descriptors that came with it (close-on-exec, now ours). */
export interface NativeMessage {
  data: Buffer;
  fds: number[];
}

export interface NativeAddon {
  /** One pass over the tree: discover, read every thread's state, and signal as its kind says. */
  walk(options: NativeWalkOptions): Promise<NativeWalkResult>;
  /** Files to keep open between the passes of one operation (at most `maxFiles`, default 8192); one pass at a time. */
  createWalkCache(maxFiles?: number): NativeWalkCache;
  /** Closes the cache's files (off the JS thread), resolving once they are closed; the cache is then unusable. */
  releaseWalkCache(cache: NativeWalkCache): Promise<void>;
  /** Signal processes known from an earlier pass, re-checking each start time. */
  signalList(targets: Identity[], signal: number, perThread: boolean, protect: number[]): Promise<NativeSignalListResult>;
  /** The state letter of each target's leader thread, one per target in order; '-' for one gone (or whose pid names another process now). */
  leaderStates(targets: Identity[]): Promise<string>;
  /** Resolves to the targets still alive when all others exited or the timeout passed. */
  waitExit(targets: Identity[], timeoutMs: number): Promise<number[]>;
  /** Sessions, terminals, tracers and sockets of `pids`, and the host's unix and TCP socket tables (native/inspect.cc). */
  inspect(pids: number[]): Promise<NativeInspection>;
  /** Every process holding one of these socket inodes. */
  socketHolders(inodes: number[]): Promise<Array<{ inode: number; pid: number }>>;
  /** An AF_UNIX SOCK_SEQPACKET socket pair, both ends close-on-exec (native/rpc.h). */
  seqpacketPair(): [number, number];
  /** Sends one whole message, with `fds` as SCM_RIGHTS. */
  sendMessage(fd: number, data: Buffer, fds?: number[]): Promise<void>;
  /** The next whole message, or null once the peer has closed its end. */
  receiveMessage(fd: number): Promise<NativeMessage | null>;
  /** shutdown(2) both ways: a receive blocked on the socket returns null. */
  shutdownSocket(fd: number): void;
  selfAndAncestors(): number[];
  /** The first cgroup2 mount of /proc/self/mountinfo (`root`: the hierarchy path mounted there), or null. */
  cgroup2Mount(): { path: string; root: string } | null;
  /** The process's cgroup v2 path relative to the hierarchy's root, null without a v2 line; throws ESRCH when it is gone. */
  cgroupOf(pid: number): string | null;
  /** The session of a process (its stat line), -1 when it cannot be read. */
  sessionOf(pid: number): number;
  /** Every live process of session `sid` (a scan of /proc; zombies left out). */
  sessionMembers(sid: number): Promise<Identity[]>;
  /** TracerPid of a process or thread (0: not traced, or gone). */
  tracerOf(pid: number): number;
  /** Whether a process has a handler for signal `signo` (false when gone). */
  catchesSignal(pid: number, signo: number): boolean;
  /** isatty(3) of one of this process's descriptors. */
  isTerminal(fd: number): boolean;
  childrenFilesSupported(): boolean;
  signals: { SIGSTOP: number; SIGCONT: number; SIGKILL: number };
}

const here = dirname(fileURLToPath(import.meta.url));

/** The package's root: the nearest folder above this file with our package.json. */
export function packageRoot(): string {
  for (let dir = here; ; dir = dirname(dir)) {
    const manifest = join(dir, 'package.json');
    if (existsSync(manifest)) {
      let text: string | undefined;
      try {
        text = readFileSync(manifest, 'utf8');
      } catch (e) {
        // Gone since existsSync: keep looking. Anything else (EMFILE, EACCES) is the caller's to see.
        if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
      }
      try {
        if (text !== undefined && JSON.parse(text).name === 'treestate') return dir;
      } catch {
        // not valid JSON: not ours, keep looking
      }
    }
    if (dirname(dir) === dir) throw new Error(`treestate: cannot find the package root above ${here}`);
  }
}

const buildDirs = ['build/Release', 'build/Debug'];

/** Path of one of the executables binding.gyp builds (treestate-reaper, treestate-fixture). */
export function nativeExecutable(name: string): string {
  const root = packageRoot();
  const tried = buildDirs.map((d) => join(root, d, name));
  const found = tried.find((p) => existsSync(p));
  if (!found) {
    throw new Error(`treestate: ${name} is not built; looked in:\n  ${tried.join('\n  ')}\nRun \`npm install\` (or \`npx node-gyp rebuild\`) in ${root}.`);
  }
  return found;
}

let addon: NativeAddon | undefined;

/** What the addon's walk resolves with: the processes packed (native/workers.cc, Pack). */
interface PackedWalkResult extends Omit<NativeWalkResult, 'processes' | 'verifying'> {
  verifying?: PackedWalkResult;
  count: number;
  packed: Float64Array;
  comms: string;
}

/** One string per state letter. */
const letters: string[] = Array.from({ length: 128 }, (_, i) => String.fromCharCode(i));

function unpack(raw: PackedWalkResult): NativeWalkResult {
  const { count, packed, comms, verifying, ...rest } = raw;
  const names = comms.split('\0');
  const processes: NativeProcess[] = new Array(count);
  let k = 0;
  for (let i = 0; i < count; i++) {
    const pid = packed[k]!;
    const ppid = packed[k + 1]!;
    const startTime = packed[k + 2]!;
    const kernelThread = packed[k + 3] === 1;
    const threadCount = packed[k + 4]!;
    const childCount = packed[k + 5]!;
    k += 6;
    const threads: NativeThread[] = new Array(threadCount);
    for (let j = 0; j < threadCount; j++, k += 3) {
      const tid = packed[k]!;
      const code = packed[k + 1]!;
      const state = letters[code & 0x7f]!;
      const tracer = packed[k + 2]!;
      threads[j] = tracer ? { tid, state, tracerPid: tracer } : code & 0x100 ? { tid, state, vfork: true } : { tid, state };
    }
    const children: number[] = new Array(childCount);
    for (let j = 0; j < childCount; j++) children[j] = packed[k++]!;
    processes[i] = { pid, ppid, startTime, comm: names[i]!, kernelThread, threads, children };
  }
  const result: NativeWalkResult = { ...rest, processes };
  if (verifying) result.verifying = unpack(verifying);
  return result;
}

export function native(): NativeAddon {
  if (addon) return addon;
  const root = packageRoot();
  const require = createRequire(import.meta.url);
  let raw: Omit<NativeAddon, 'walk'> & { walk(options: NativeWalkOptions): Promise<PackedWalkResult> };
  try {
    // Where node-gyp puts it, looked up as the helper programs are: loading
    // `bindings` and its search costs a cold command ~1.5 ms of CPU.
    const built = buildDirs.map((d) => join(root, d, 'treestate.node')).find((p) => existsSync(p));
    // bindings knows every other place node-gyp may have put the addon.
    const bindings = () => (require('bindings') as (o: { bindings: string; module_root: string }) => unknown)({ bindings: 'treestate.node', module_root: root });
    raw = (built ? require(built) : bindings()) as typeof raw;
  } catch (error) {
    const detail = error instanceof Error ? error.message : String(error);
    throw new Error(`treestate: cannot load the native addon (run \`npm install\` or \`npx node-gyp rebuild\` in ${root}).\n${detail}`);
  }
  // The walk's processes come packed; everything else is the addon's own.
  addon = { ...raw, walk: (options) => raw.walk(options).then(unpack) };
  return addon;
}
