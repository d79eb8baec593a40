// What criu's log says went wrong, in words that name the cause. criu's own
// error lines stay in every message; a cause is added where the log shows
// one treestate can explain: privileges, a traced process, another user's
// process when root lacks CAP_SYS_RESOURCE.
import { statSync } from 'node:fs';
import { native } from '../native.js';
import { snapshot } from '../tree.js';

/** A criu log line at level Error (or a BUG), with or without the timestamp and the restore's pid prefix. */
const ERROR_LINE = /^(?:\(\s*[\d.]+\)\s+)?(?:\d+:\s+)?(?:[\w-]+:\s+)?(?:Error|BUG)\b/;

/**
 * The error lines criu logged: the first (usually the cause) and the last
 * ones, each once. Not the RLIMIT_NOFILE one it always logs and survives,
 * nor debug lines that merely contain the word (criu's "Handling VMA" lines
 * quote mapped paths such as libgpg-error.so).
 */
export function criuErrorLines(text: string, limit = 6): string[] {
  const seen = new Set<string>();
  const lines = text
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => ERROR_LINE.test(l) && !/RLIMIT_NOFILE/.test(l))
    // criu repeats a line as it retries (a seize, five times): once is enough, whatever its timestamp, and
    // whatever state the process was caught in at each try (S, then R on a busy host).
    .filter((l) => {
      const what = l.replace(/^\(\s*[\d.]+\)\s+/, '').replace(/(Unseizable non-zombie \d+ found), state \S+, err \S+$/, '$1');
      return !seen.has(what) && Boolean(seen.add(what));
    });
  return lines.length <= limit ? lines : [lines[0]!, ...lines.slice(-(limit - 1))];
}

/** Why `criu check` failed, when it is privileges; undefined otherwise. */
export function privilegeCause(checkOutput: string): string | undefined {
  const said = checkOutput.split('\n').find((l) => /CAP_SYS_ADMIN|CAP_CHECKPOINT_RESTORE/.test(l));
  if (!said) return undefined;
  const uid = process.getuid?.();
  return (
    `criu needs root, or CAP_CHECKPOINT_RESTORE and CAP_SYS_PTRACE (CAP_SYS_ADMIN before Linux 5.9), and this process (uid ${uid}) has neither ` +
    `(criu check: "${said.trim()}"); run treestate as root, or give criu those capabilities (setcap cap_checkpoint_restore,cap_sys_ptrace+eip CRIU)`
  );
}

async function describeProcess(pid: number): Promise<string> {
  try {
    return `${pid} ("${(await snapshot(pid)).processes[0]!.comm}")`;
  } catch {
    return String(pid);
  }
}

function uidOf(pid: number): number | undefined {
  try {
    return statSync(`/proc/${pid}`).uid;
  } catch {
    return undefined;
  }
}

/** A sentence naming the cause of a failed criu run, from its error lines, when it is one treestate knows. */
export async function diagnoseCriuFailure(lines: string[]): Promise<string | undefined> {
  const text = lines.join('\n');
  const unseizable = /Unseizable non-zombie (\d+) found/.exec(text);
  if (unseizable) {
    const pid = Number(unseizable[1]);
    const tracer = native().tracerOf(pid);
    const by = tracer > 0 ? `is traced by ${await describeProcess(tracer)}` : 'could not be seized (traced, or exiting)';
    return `pid ${pid} ${by}, and criu must ptrace every process it dumps while a process can have one tracer only: detach the tracer (a debugger, strace) and try again`;
  }
  const rlimit = /Can't get rlimit \d+: Operation not permitted/.test(text) ? /Dump core \(pid: (\d+)\) failed/.exec(text) : null;
  if (rlimit) {
    const pid = Number(rlimit[1]);
    const uid = uidOf(pid);
    return (
      `criu cannot read the resource limits of pid ${pid}${uid === undefined ? '' : ` (uid ${uid})`}, a process of another user: that needs CAP_SYS_RESOURCE, ` +
      'which this root lacks (a container, or a capability bounding set without it); dump from where root has CAP_SYS_RESOURCE, or trees whose processes all run as one user'
    );
  }
  // criu/page-xfer.c page_server_serve ignores pipe_read_dest_init's
  // failure, and its F_SETPIPE_SZ of 4 MB fails over fs.pipe-max-size
  // without CAP_SYS_RESOURCE: the sink it splices into stays -1.
  if (/page-pipe: splice: .*Bad file descriptor/.test(text) && /Lazy pages transfer FAILED/.test(text)) {
    return (
      "criu's lazy page server could not send pages: it asks the kernel for a 4 MB pipe, over fs.pipe-max-size, which needs CAP_SYS_RESOURCE, and this root lacks it (a container, or a capability bounding set without it), and criu does not stop there; " +
      'raise fs.pipe-max-size to 4194304 (sysctl -w fs.pipe-max-size=4194304) on the source, or run criu where root has CAP_SYS_RESOURCE'
    );
  }
  return undefined;
}
