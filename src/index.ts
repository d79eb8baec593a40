// treestate: move a whole Linux process tree between Running, Stopped and
// Dead, and drive CRIU so the tree ends in the state you chose.
export { TreeStateError, type ErrorCode, type ThreadRef } from './errors.js';
export {
  snapshot,
  getTreeState,
  type ProcessInfo,
  type ProcessState,
  type ThreadInfo,
  type TreeSnapshot,
  type TreeState,
  type TreeStatus,
  type WalkOptions,
} from './tree.js';
export {
  stopTree,
  continueTree,
  killTree,
  waitForState,
  type StopOptions,
  type TransitionOptions,
  type TransitionResult,
  type WaitOptions,
} from './transitions.js';
export { dump, preDump, restore, type CriuOptions, type CriuProgress, type CriuResult, type CriuVerb, type DumpOptions, type PreDumpOptions, type RestoreOptions } from './criu/checkpoint.js';
export type { DumpFinalState, RestoreFinalState } from './criu/args.js';
export { locateCriu, hasDirtyTracking, type CriuInfo } from './criu/locate.js';
export type { CommandRunner, RunningCommand, CommandExit, RunOptions } from './criu/runner.js';
export { programHook, type CriuHooks, type Hook, type HookContext, type HookName } from './criu/rpc/hooks.js';
export type { DumpStats } from './criu/rpc/stats.js';
