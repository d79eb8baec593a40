// `preflight`: everything that would make `criu dump` of a tree fail or
// restore badly, found before criu runs, each with the fix. The list is the
// CRIU failures users meet most (criu's own words in quotes): a socket whose
// peer is outside the tree ("External socket is used"), a session or terminal
// that belongs to the shell ("A session leader of … is outside of the tree"),
// or to a process outside the tree's pid namespace,
// established TCP ("Connected TCP socket, consider using --tcp-established"),
// a traced process ("Unseizable non-zombie"), no dirty-memory tracking for
// pre-dump, and the pids a restore on this host would find taken.
import { TreeStateError, describePids } from '../errors.js';
import { native } from '../native.js';
import { checkNotSelf, checkPid, getTreeState } from '../tree.js';
import { hasDirtyTracking, locateCriu } from './locate.js';

export type BlockerKind = 'external-unix-socket' | 'session' | 'terminal' | 'tcp-established' | 'traced' | 'no-dirty-tracking' | 'pids-taken';

export interface Blocker {
  kind: BlockerKind;
  /** Which operation it stops: a plain dump, a pre-dump, or a restore on this host while the tree lives. */
  blocks: 'dump' | 'pre-dump' | 'restore';
  /** The tree's processes it concerns. */
  pids: number[];
  message: string;
  /** What makes it go away (an option of treestate's, or what to change). */
  fix: string;
  /** External peers, tracers …: the processes outside the tree involved. */
  outside?: number[];
  /** criu arguments that make the dump pass it (`extraArgs`), where the fix is one. */
  extraArgs?: string[];
}

export interface PreflightResult {
  root: number;
  /** No blocker for a plain dump. */
  ok: boolean;
  blockers: Blocker[];
}

const TCP_LISTEN = 10;
const TCP_CLOSE = 7;

/** What would stop `criu dump` of the tree of `pid` (and a pre-dump, and a restore on this host), with fixes. */
export async function preflight(pid: number, options: { criu?: string } = {}): Promise<PreflightResult> {
  const root = checkPid(pid);
  checkNotSelf(root);
  const status = await getTreeState(root);
  const live = status.processes.filter((p) => p.state !== 'dead');
  if (live.length === 0) throw new TreeStateError('ESRCH', `the tree of ${root} has no live process`, { pid: root });
  const pids = live.map((p) => p.pid);
  const inTree = new Set(pids);
  const facts = await native().inspect(pids);
  const present = facts.processes.filter((f) => !f.error);
  const blockers: Blocker[] = [];

  // Sockets: which of the tree's unix sockets have a peer it does not hold.
  const treeSockets = new Map<number, number[]>();
  for (const f of present) for (const inode of f.sockets) treeSockets.set(inode, [...(treeSockets.get(inode) ?? []), f.pid]);
  const unix = new Map(facts.unix.map((s) => [s.inode, s]));
  const external = [...treeSockets.keys()].map((i) => unix.get(i)).filter((s) => s && s.peer !== 0 && !treeSockets.has(s.peer)) as Array<{ inode: number; peer: number }>;
  if (external.length) {
    const holders = await native().socketHolders(external.map((s) => s.peer));
    const outside = [...new Set(holders.map((h) => h.pid).filter((p) => !inTree.has(p)))];
    const held = [...new Set(external.flatMap((s) => treeSockets.get(s.inode) ?? []))];
    blockers.push({
      kind: 'external-unix-socket',
      blocks: 'dump',
      pids: held,
      outside,
      message: `${describePids(held)} ${held.length === 1 ? 'holds' : 'hold'} ${external.length} unix socket(s) connected to ${outside.length ? `process(es) ${describePids(outside)} outside the tree` : 'a peer outside the tree'} (criu: "External socket is used")`,
      // A stream socket is dumped half only when named: a bare
      // --ext-unix-sk is refused with "Can't dump half of stream unix connection".
      fix: `give the tree files or /dev/null instead of sockets (Node: not stdio "pipe"), or dump with --ext-unix-sk=${external.map((s) => s.inode).join(',')} (extraArgs), which saves the tree's end only: a peer must be there again at restore`,
      extraArgs: [`--ext-unix-sk=${external.map((s) => s.inode).join(',')}`],
    });
  }
  const established = facts.tcp.filter((t) => treeSockets.has(t.inode) && t.state !== TCP_LISTEN && t.state !== TCP_CLOSE);
  if (established.length) {
    const held = [...new Set(established.flatMap((t) => treeSockets.get(t.inode) ?? []))];
    blockers.push({
      kind: 'tcp-established',
      blocks: 'dump',
      pids: held,
      message: `${describePids(held)} ${held.length === 1 ? 'has' : 'have'} ${established.length} connected TCP socket(s) (${established.slice(0, 3).map((t) => `${t.local} → ${t.remote}`).join(', ')}) (criu: "Connected TCP socket, consider using --tcp-established")`,
      fix: '--tcp-established (tcpEstablished: true) on dump and restore; criu then locks the network around the connections (iptables, or --network-lock nftables)',
    });
  }

  // The shell's session and terminal.
  const rootFacts = present.find((f) => f.pid === root);
  // Session 0 as the tree's own pid namespace sees it: a session led from
  // outside the namespace (a tree started by `docker exec`, `unshare -p` or
  // `nsenter` without setsid), or none at all (an init that never called
  // setsid, whose children all share its session 0). criu refuses it
  // whatever the options.
  const outsideNs = present.filter((f) => f.sidOutsideNs || f.pgidOutsideNs).map((f) => f.pid);
  const outsideNsSet = new Set(outsideNs);
  if (outsideNs.length) {
    blockers.push({
      kind: 'session',
      blocks: 'dump',
      pids: outsideNs,
      message: `${describePids(outsideNs)} ${outsideNs.length === 1 ? 'belongs' : 'belong'} to session 0 as ${outsideNs.length === 1 ? 'its' : 'their'} pid namespace sees it: a session led from outside the namespace, or by no process at all (an init that never called setsid); --shell-job cannot help (criu: "A session leader of … is outside of its pid namespace")`,
      fix: 'start the tree in a session of its own (setsid, or treestate run --detach)',
    });
  }
  const outsideLeaders = [...new Set(present.filter((f) => !outsideNsSet.has(f.pid)).flatMap((f) => [f.sid, f.pgid]).filter((l) => l !== 0 && !inTree.has(l)))];
  if (outsideLeaders.length) {
    const who = present.filter((f) => !outsideNsSet.has(f.pid) && (!inTree.has(f.sid) || !inTree.has(f.pgid))).map((f) => f.pid);
    blockers.push({
      kind: 'session',
      blocks: 'dump',
      pids: who,
      outside: outsideLeaders,
      message: `${describePids(who)} ${who.length === 1 ? 'belongs' : 'belong'} to a session or process group led by ${describePids(outsideLeaders)}, outside the tree (criu: "A session leader of … is outside of the tree")`,
      fix: '--shell-job (shellJob: true), or start the tree in a session of its own (setsid)',
    });
  }
  const withTty = present.filter((f) => f.ttyNr !== 0).map((f) => f.pid);
  if (withTty.length) {
    blockers.push({
      kind: 'terminal',
      blocks: 'dump',
      pids: withTty,
      message: `${describePids(withTty)} ${withTty.length === 1 ? 'has' : 'have'} a controlling terminal${rootFacts && rootFacts.sid !== root ? " (the shell's)" : ''}`,
      fix: '--shell-job (shellJob: true), or start the tree without a terminal (setsid, stdin from /dev/null)',
    });
  }

  // Tracers: criu must seize every thread itself.
  const traced = present.filter((f) => f.tracer !== 0);
  if (traced.length) {
    const tracers = [...new Set(traced.map((f) => f.tracer))];
    blockers.push({
      kind: 'traced',
      blocks: 'dump',
      pids: traced.map((f) => f.pid),
      outside: tracers.filter((t) => !inTree.has(t)),
      message: `${describePids(traced.map((f) => f.pid))} ${traced.length === 1 ? 'is' : 'are'} traced by ${describePids(tracers)} (strace, gdb …) (criu: "Unseizable non-zombie")`,
      fix: 'detach the tracer (quit strace or gdb) before the dump',
    });
  }

  try {
    if (!(await hasDirtyTracking(await locateCriu(options.criu)))) {
      blockers.push({
        kind: 'no-dirty-tracking',
        blocks: 'pre-dump',
        pids: [],
        message: 'this kernel does not track dirty memory (soft-dirty): a pre-dump cannot run',
        fix: 'use a plain dump; or a kernel with CONFIG_MEM_SOFT_DIRTY',
      });
    }
  } catch {
    // No working criu: the dump itself will say so (ENOCRIU).
  }

  blockers.push({
    kind: 'pids-taken',
    blocks: 'restore',
    pids,
    message: `a restore on this host needs pids ${describePids(pids)} free, and this tree holds them while it lives (a dump with --final-state running or stopped)`,
    fix: 'restore with --pid-ns new (pidNamespace: "new"), or kill the tree before restoring',
  });

  return { root, ok: !blockers.some((b) => b.blocks === 'dump'), blockers };
}
