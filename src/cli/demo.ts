// `treestate demo`: a fixture tree walked through every final state, and,
// when a working criu is here, the checkpoint story.
import { spawnSync } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { dump, restore } from '../criu/checkpoint.js';
import { PINNED_CRIU, locateCriu } from '../criu/locate.js';
import { TreeStateError, hasCode } from '../errors.js';
import { packageRoot } from '../native.js';
import { spawnTree, type TreeFixture } from '../testing/fixture.js';
import { getTreeState } from '../tree.js';
import { continueTree, killTree, stopTree } from '../transitions.js';
import { UsageError } from './args.js';
import type { Command, Io } from './main.js';
import { drawTree } from './render.js';

async function show(io: Io, title: string, pid: number): Promise<void> {
  io.out(`\n== ${title}`);
  try {
    io.out(drawTree(await getTreeState(pid), io.tty));
  } catch (e) {
    if (!(e instanceof TreeStateError && e.code === 'ESRCH')) throw e;
    io.out(`${pid}: gone`);
  }
}

function beat(tree: TreeFixture): number {
  return tree.heartbeats()[0]!.counter;
}

/**
 * A working criu for the checkpoint part: the one treestate finds, or, on a
 * fresh machine and as root, one that scripts/setup-criu.sh provides (the
 * same script `npm test` runs). Not as root, it says what to run.
 */
async function criuForDemo(io: Io): Promise<string | undefined> {
  let why: string;
  try {
    return (await locateCriu()).path;
  } catch (e) {
    if (!hasCode(e, 'ENOCRIU')) throw e;
    why = (e as Error).message;
  }
  const script = join(packageRoot(), 'scripts', 'setup-criu.sh');
  if (process.geteuid?.() !== 0) {
    io.out(`\n(no checkpoint part: ${why}\n To provide one, run as root: bash ${script}\n then run the demo as root: CRIU needs root.)`);
    return undefined;
  }
  io.out(`\n== no working criu (${why.split('. ')[0]});\n   providing one: ${script} fetches CRIU ${PINNED_CRIU} and its libraries from Debian's packages\n   into ${join(packageRoot(), '.criu')} (a private prefix: the system's packages are not touched)`);
  const run = spawnSync('bash', [script, '--quiet'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  const path = run.stdout.trim().split('\n').pop();
  if (run.status !== 0 || !path) {
    io.out(`(no checkpoint part: ${script} failed: ${run.stderr.trim().split('\n').slice(-3).join(' ')})`);
    return undefined;
  }
  return (await locateCriu(path)).path;
}

async function checkpointStory(io: Io, tree: TreeFixture): Promise<void> {
  const criu = await criuForDemo(io);
  if (!criu) return;
  const imagesDir = mkdtempSync(join(tmpdir(), 'treestate-demo-'));
  io.out(`\n== checkpoint: criu dump --final-state stopped into ${imagesDir}`);
  const dumped = await dump(tree.root, { imagesDir, finalState: 'stopped', criu });
  const atDump = beat(tree);
  io.out(`criu dump took ${dumped.elapsedMs} ms; heartbeat of the root at the dump: ${atDump}`);
  await show(io, 'after the dump: stopped, as asked', tree.root);
  await killTree(tree.root);
  await show(io, 'killed', tree.root);
  const restored = await restore({ imagesDir, finalState: 'stopped', runner: tree.supervisor, criu });
  await show(io, `restored stopped (criu restore took ${restored.elapsedMs} ms)`, restored.root);
  await continueTree(restored.root);
  await tree.waitProgress();
  io.out(`\n== continued: the heartbeat goes on from where it was dumped: ${atDump} → ${beat(tree)}`);
  await show(io, 'running again', restored.root);
  io.out(`\n(images kept in ${imagesDir}: treestate never deletes images)`);
}

export async function demo(io: Io): Promise<number> {
  const tree = await spawnTree({ depth: 2, fanout: 2, threads: 2, forkFromThreads: true });
  try {
    io.out(`a fixture tree: ${tree.size} processes, 2 threads each, children forked by the non-leader thread`);
    await show(io, 'running', tree.root);
    const stopped = await stopTree(tree.root);
    await tree.assertNoProgress();
    await show(io, `stopped in ${stopped.elapsedMs.toFixed(1)} ms; the heartbeats are frozen`, tree.root);
    const continued = await continueTree(tree.root);
    await tree.waitProgress();
    await show(io, `continued in ${continued.elapsedMs.toFixed(1)} ms; every heartbeat advances`, tree.root);
    await checkpointStory(io, tree);
    const killed = await killTree(tree.root);
    await show(io, `killed in ${killed.elapsedMs.toFixed(1)} ms`, tree.root);
    return 0;
  } finally {
    await tree.dispose();
  }
}

export const demoCommands: Record<string, Command> = {
  demo: {
    usage: 'demo',
    summary: 'spawn a fixture tree and walk it through every state (and a checkpoint, with criu)',
    flags: {},
    async run(args, io) {
      if (args.positionals.length) throw new UsageError('demo takes no operands');
      return demo(io);
    },
  },
};
