// CRIU's notifications (its "action scripts", criu/action-scripts.c) as async
// callbacks. criu waits for each answer; a callback that throws is answered
// "failed", which makes criu abort where the step allows it (see
// docs/criu-rpc.md for every notification and what a failure does).
import { spawn } from 'node:child_process';
import { closeSync } from 'node:fs';
import type { NotifyAnswer, NotifyHandler } from './client.js';

/** What every hook receives. */
export interface HookContext {
  /** The tree's root: the dumped pid; on restore the restored root once criu has told it (from post-restore, or setup-namespaces). */
  pid?: number;
  /** criu's own name for the notification ("post-dump"). */
  notification: string;
}

export type Hook<C = HookContext, R = unknown> = (context: C) => R | Promise<R>;

/**
 * One callback per notification CRIU 4.2 sends over RPC. Any not given is
 * answered at once; with none given criu is not asked to notify at all.
 */
export interface CriuHooks {
  /** Dump and pre-dump, before criu seizes the tree. */
  preDump?: Hook;
  /** Dump, images written, the tree still seized (ptrace-stop). Throwing makes criu resume the tree instead of finishing. */
  postDump?: Hook;
  /** Dump, once criu has collected the tree: return external objects to add (criu's `--external` keys). */
  queryExtFiles?: Hook<HookContext, string[] | void>;
  /** Dump/restore of a tree in its own network namespace: before criu locks its network. */
  networkLock?: Hook;
  /** …and after it unlocks it. */
  networkUnlock?: Hook;
  /** Restore, before anything is created. */
  preRestore?: Hook;
  /** Restore of a tree with namespaces: they exist, the root is forked (pid given). */
  setupNamespaces?: Hook;
  /** Restore of a tree with namespaces: after criu has set them up. */
  postSetupNamespaces?: Hook;
  /** Restore: every process exists and is restored, not yet running. Throwing makes criu kill the restored tree. */
  postRestore?: Hook;
  /** Restore: the tree is about to run (still stopped by criu). criu does not abort here: the restore rejects afterwards. */
  preResume?: Hook;
  /** Restore: the tree runs. As preResume, a failure cannot undo it. */
  postResume?: Hook;
  /** Restore with `--shell-job` of a tree whose terminal is gone: the new pty's master, ours to keep (and close). */
  orphanPtsMaster?: Hook<HookContext & { fd: number }>;
  /** criu is ready (lazy pages, page server): not sent by dump or restore. */
  statusReady?: Hook;
  /** criu's image streamer is about to start: not sent over RPC in CRIU 4.2, listed for completeness. */
  preStream?: Hook;
}

export type HookName = keyof CriuHooks;

/** criu's notification names, as sent in criu_notify.script, and our callbacks. */
export const NOTIFICATIONS: Readonly<Record<string, HookName>> = {
  'pre-dump': 'preDump',
  'post-dump': 'postDump',
  'query-ext-files': 'queryExtFiles',
  'network-lock': 'networkLock',
  'network-unlock': 'networkUnlock',
  'pre-restore': 'preRestore',
  'setup-namespaces': 'setupNamespaces',
  'post-setup-namespaces': 'postSetupNamespaces',
  'post-restore': 'postRestore',
  'pre-resume': 'preResume',
  'post-resume': 'postResume',
  'orphan-pts-master': 'orphanPtsMaster',
  'status-ready': 'statusReady',
  'pre-stream': 'preStream',
};

export const HOOK_NAMES: readonly HookName[] = Object.values(NOTIFICATIONS);

/** The hook for criu's name of a notification; own keys only ("toString" is no notification). */
function notificationHook(script: string): HookName | undefined {
  return Object.hasOwn(NOTIFICATIONS, script) ? NOTIFICATIONS[script] : undefined;
}

export interface HookFailure {
  hook: HookName | string;
  notification: string;
  error: unknown;
}

/** A failure recorded by the handler, and the notifications seen in order. */
export interface HookLog {
  seen: string[];
  failure?: HookFailure;
}

export function hasHooks(hooks: CriuHooks | undefined): boolean {
  return Boolean(hooks) && HOOK_NAMES.some((name) => typeof hooks![name] === 'function');
}

/**
 * The handler for one operation: calls the hook named for each notification
 * with the root pid (given, or learnt from criu's message), answers criu, and
 * keeps the first failure for the operation to report.
 */
export function hookHandler(hooks: CriuHooks, log: HookLog, root?: number): NotifyHandler {
  let pid = root;
  return async ({ script, pid: told, fds }): Promise<NotifyAnswer> => {
    log.seen.push(script);
    if (told && told > 0) pid = told;
    const name = notificationHook(script);
    const hook = name ? (hooks[name] as Hook<HookContext & { fd?: number }, unknown> | undefined) : undefined;
    const [fd, ...extra] = fds;
    for (const f of extra) closeSync(f);
    if (!hook) {
      // Unasked: criu falls back to what it does without a client (for
      // orphan-pts-master, inherit the terminal or fail).
      if (fd !== undefined) closeSync(fd);
      return { ok: name !== 'orphanPtsMaster' };
    }
    try {
      const value = await hook({ pid, notification: script, ...(fd !== undefined ? { fd } : {}) });
      return { ok: true, ...(name === 'queryExtFiles' && Array.isArray(value) ? { external: value.map(String) } : {}) };
    } catch (error) {
      log.failure ??= { hook: name!, notification: script, error };
      return { ok: false };
    }
  };
}

/**
 * A hook that runs `program` (an argument vector of one: no shell, no
 * arguments), as criu runs its action scripts: the notification in
 * CRTOOLS_SCRIPT_ACTION, the root pid (when known) in CRTOOLS_INIT_PID, its
 * output on our stderr, and for orphan-pts-master the pty master as its fd 3.
 * A non-zero exit or a signal is the hook's failure.
 */
export function programHook(program: string): Hook<HookContext & { fd?: number }> {
  return ({ pid, notification, fd }) =>
    new Promise<void>((resolve, reject) => {
      const env = { ...process.env, CRTOOLS_SCRIPT_ACTION: notification, ...(pid ? { CRTOOLS_INIT_PID: String(pid) } : {}) };
      const child = spawn(program, [], { env, stdio: ['ignore', 2, 2, ...(fd !== undefined ? [fd] : [])] });
      if (fd !== undefined) closeSync(fd); // the program has its copy
      child.once('error', (e) => reject(new Error(`cannot run ${program}: ${e.message}`)));
      child.once('exit', (code, signal) => {
        if (code === 0) resolve();
        else reject(new Error(`${program} ${code === null ? `was killed by ${signal}` : `exited with ${code}`}`));
      });
    });
}

/** `NAME=PROGRAM` pairs (NAME as in CriuHooks, or criu's own name such as post-dump) as hooks; throws on an unknown name. */
export function programHooks(specs: string[]): CriuHooks {
  const hooks: CriuHooks = {};
  for (const spec of specs) {
    const eq = spec.indexOf('=');
    const given = eq > 0 ? spec.slice(0, eq) : '';
    const name = (HOOK_NAMES as readonly string[]).includes(given) ? (given as HookName) : notificationHook(given);
    if (!name || eq === spec.length - 1) {
      throw new TypeError(`a hook is NAME=PROGRAM with NAME one of ${HOOK_NAMES.join(', ')} (or criu's name, such as post-dump), not ${JSON.stringify(spec.slice(0, 60))}`);
    }
    if (hooks[name]) throw new TypeError(`the ${name} hook is given twice`);
    (hooks as Record<string, unknown>)[name] = programHook(spec.slice(eq + 1));
  }
  return hooks;
}
