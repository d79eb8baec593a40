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
  type ContinueOptions,
  type StopOptions,
  type TransitionOptions,
  type TransitionResult,
  type WaitOptions,
} from './transitions.js';
export { dump, preDump, restore, type CriuOptions, type CriuProgress, type CriuResult, type CriuVerb, type DumpOptions, type PreDumpOptions, type RestoreOptions } from './criu/checkpoint.js';
export type { DumpFinalState, NetworkLock, RestoreFinalState } from './criu/args.js';
export { migrate, type MigrateOptions, type MigratePhase, type MigrateProgress, type MigrateResult } from './migrate/migrate.js';
export { receive, type ReceiveOptions } from './migrate/receive.js';
export { preflight, type Blocker, type BlockerKind, type PreflightResult } from './criu/preflight.js';
export { verifyImages, type ImageVerification, type VerifyOptions } from './criu/verify.js';
export type { PidNamespaceInfo } from './criu/pidns.js';
export type { LinkRemapCleanup } from './criu/leftovers.js';
export { locateCriu, hasDirtyTracking, type CriuInfo } from './criu/locate.js';
export type { CommandRunner, RunningCommand, CommandExit, RunOptions as CommandRunOptions } from './criu/runner.js';
export { run, type RunOptions, type RunTree, type ForegroundRun, type RunExit } from './cgroup/run.js';
export { freezeTree, thawTree, type FreezeOptions, type FreezeResult } from './cgroup/tree.js';
export { programHook, type CriuHooks, type Hook, type HookContext, type HookName } from './criu/rpc/hooks.js';
export type { DumpStats } from './criu/rpc/stats.js';
