// treestate's dump and restore beside a plain `criu dump` / `criu restore` of
// the same small tree, alternating run by run. treestate's time includes
// locating criu (its kept verdict), the RPC round trip and the verification of
// the final state; criu's is its command line, start to exit.
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { dump, killTree, locateCriu, restore, snapshot } from '../../src/index.ts';
import { spawnTree, type TreeFixture } from '../../src/testing/index.ts';

export interface CriuCase {
  op: 'criu dump' | 'criu restore';
  processes: number;
  tool: 'criu' | 'treestate-lib';
  medianMs: number;
  minMs: number;
  maxMs: number;
  runs: number;
}

function run(file: string, args: string[]): Promise<void> {
  return new Promise((resolve, reject) => execFile(file, args, (e, _out, err) => (e ? reject(new Error(`${file} ${args[0]}: ${e.message} ${err}`)) : resolve())));
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

/** Until the restored processes are gone and reaped, so the next restore finds their pids free. */
async function killRestored(tree: TreeFixture, root: number): Promise<void> {
  await killTree(root);
  const pids = new Set(tree.pids());
  for (let i = 0; i < 400; i++) {
    const s = await snapshot(tree.supervisor.pid);
    if (!s.processes.some((p) => pids.has(p.pid))) return;
    await new Promise((r) => setTimeout(r, 5));
  }
  throw new Error('the restored tree did not go away');
}

export async function measureCriu(runs: number, warmup: number, log: (s: string) => void): Promise<CriuCase[]> {
  const criu = (await locateCriu()).path;
  const samples = new Map<string, number[]>();
  const add = (key: string, r: number, ms: number) => r >= warmup && samples.set(key, [...(samples.get(key) ?? []), ms]);
  const dirs: string[] = [];
  const dir = () => {
    const d = mkdtempSync(join(tmpdir(), 'treestate-bench-criu-'));
    dirs.push(d);
    return d;
  };
  await using tree = await spawnTree({ depth: 1, fanout: 6, threads: 3, intervalMs: 250 });
  const processes = tree.size;
  log(`criu: a tree of ${processes} processes x 3 threads (root ${tree.root})`);
  try {
    for (let r = 0; r < warmup + runs; r++) {
      // Dump, leaving the tree running, each tool in turn (order alternating).
      for (const tool of r % 2 ? ['treestate-lib', 'criu'] : ['criu', 'treestate-lib']) {
        const d = dir();
        const t0 = performance.now();
        if (tool === 'criu') await run(criu, ['dump', '-t', String(tree.root), '-D', d, '--leave-running', '-o', join(d, 'dump.log'), '-v4']);
        else await dump(tree.root, { imagesDir: d, finalState: 'running', criu });
        add(`criu dump\0${tool}`, r, performance.now() - t0);
      }
      // Restore from the images of a dump that killed the tree, under the tree's reaper.
      const images = dir();
      await dump(tree.root, { imagesDir: images, criu });
      for (const tool of r % 2 ? ['treestate-lib', 'criu'] : ['criu', 'treestate-lib']) {
        const t0 = performance.now();
        if (tool === 'criu') {
          const started = await tree.supervisor.run(criu, ['restore', '-D', images, '--restore-detached', '-o', join(images, `restore-${r}.log`), '-v4'], { out: join(images, 'restore.out') });
          const exit = await started.exited;
          if (exit.code !== 0) throw new Error(`criu restore exited with ${exit.code}`);
        } else {
          await restore({ imagesDir: images, criu, runner: tree.supervisor, logFile: join(images, `restore-ts-${r}.log`) });
        }
        add(`criu restore\0${tool}`, r, performance.now() - t0);
        await killRestored(tree, tree.root);
      }
      // The next run dumps the tree again: bring it back once more.
      await restore({ imagesDir: images, criu, runner: tree.supervisor, logFile: join(images, 'restore-again.log') });
      await tree.waitProgress();
      log(`  criu run ${r + 1}/${warmup + runs}${r < warmup ? ' (warm-up)' : ''} done`);
    }
  } finally {
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  }
  return [...samples].map(([key, xs]) => {
    const [op, tool] = key.split('\0') as [CriuCase['op'], CriuCase['tool']];
    const round = (x: number) => Math.round(x * 10) / 10;
    return { op, processes, tool, medianMs: round(median(xs)), minMs: round(Math.min(...xs)), maxMs: round(Math.max(...xs)), runs: xs.length };
  });
}

export function criuTable(cases: CriuCase[]): string {
  const lines = ['### criu dump / restore (7 processes; treestate includes verification)', '', '| op | criu | treestate-lib |', '|---|---:|---:|'];
  for (const op of ['criu dump', 'criu restore'] as const) {
    const plain = cases.find((c) => c.op === op && c.tool === 'criu');
    const ours = cases.find((c) => c.op === op && c.tool === 'treestate-lib');
    if (!plain || !ours) continue;
    lines.push(`| ${op.slice(5)} | ${plain.medianMs} ms | ${ours.medianMs} ms (${(ours.medianMs / plain.medianMs).toFixed(2)}×) |`);
  }
  return lines.join('\n') + '\n';
}
