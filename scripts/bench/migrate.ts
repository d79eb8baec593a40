// npm run bench -- --only migrate [-- --shapes 6x3,1x1:1024] [-- --lazy]
//
// `treestate migrate` timed from host A to host B of scripts/testhosts.sh
// (two hosts on this machine: a network namespace and two sshd), one tree
// per shape: DEPTHxFANOUT[:MEMORY_MB]. 6x3 is 1093 processes; 1x1:1024 is a
// root holding 1 GB and one child. Phase timings come from migrate's result;
// the tree is killed on B afterwards and the hosts taken down.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { killTree, migrate, snapshot, type MigrateResult } from '../../src/index.ts';
import { packageRoot } from '../../src/native.ts';
import { spawnTree } from '../../src/testing/index.ts';

export interface MigrateCase {
  processes: number;
  memoryMb: number;
  lazy: boolean;
  result?: Pick<MigrateResult, 'phases' | 'pages' | 'pagesBytes' | 'elapsedMs'>;
  error?: string;
}

const script = join(packageRoot(), 'scripts', 'testhosts.sh');
const cli = join(packageRoot(), 'bin', 'treestate.cjs');

/** The processes of the tree restored on host B, as this host sees them (B's sshd is its pid namespace's init). */
async function onB(dir: string): Promise<number[]> {
  const holder = Number(readFileSync(join(dir, 'b', 'holder.pid'), 'utf8'));
  const init = Number(readFileSync(`/proc/${holder}/task/${holder}/children`, 'utf8').trim().split(' ')[0]);
  return (await snapshot(init)).processes.filter((p) => p.comm.startsWith('treestate-fixtu')).map((p) => p.pid);
}

export async function measureMigrate(shapes: { depth: number; fanout: number; memoryMb: number }[], lazy: boolean): Promise<MigrateCase[]> {
  const dir = join(mkdtempSync(join(tmpdir(), 'treestate-bench-hosts-')), 'hosts');
  const vars = Object.fromEntries(
    execFileSync('bash', [script, 'up', dir], { encoding: 'utf8' })
      .trim()
      .split('\n')
      .map((l) => l.split('=') as [string, string]),
  );
  // See test/migrate.test.ts: a lazy dump's page server needs a 4 MB pipe.
  const pipeMax = '/proc/sys/fs/pipe-max-size';
  const pipeMaxBefore = readFileSync(pipeMax, 'utf8').trim();
  const cases: MigrateCase[] = [];
  try {
    if (lazy && Number(pipeMaxBefore) < 4 << 20) execFileSync('sh', ['-c', `echo ${4 << 20} > ${pipeMax}`]);
    for (const { depth, fanout, memoryMb } of shapes) {
      await using tree = await spawnTree({ depth, fanout, memoryMb: memoryMb || undefined });
      const one: MigrateCase = { processes: tree.pids().length, memoryMb, lazy };
      try {
        const r = await migrate(tree.root, {
          to: `ssh://root@${vars.B_ADDR}`,
          identity: vars.KEY,
          sshOptions: ['StrictHostKeyChecking=no', 'UserKnownHostsFile=/dev/null', 'LogLevel=ERROR'],
          remoteTreestate: `${process.execPath} ${cli}`,
          lazy,
        });
        one.result = { phases: r.phases, pages: r.pages, pagesBytes: r.pagesBytes, elapsedMs: r.elapsedMs };
      } catch (e) {
        one.error = (e as Error).message;
      }
      for (const pid of await onB(dir)) await killTree(pid).catch(() => undefined);
      cases.push(one);
      console.error(JSON.stringify(one));
    }
  } finally {
    execFileSync('sh', ['-c', `echo ${pipeMaxBefore} > ${pipeMax}`]);
    execFileSync('bash', [script, 'down', dir]);
    rmSync(join(dir, '..'), { recursive: true, force: true });
  }
  return cases;
}

export function migrateTable(cases: MigrateCase[]): string {
  const phases = ['connect', 'dump', 'send', 'restore', 'pages', 'kill source', 'commit'] as const;
  const head = `| processes | memory | mode | ${phases.join(' | ')} | total | pages |`;
  const rows = cases.map((c) => {
    if (!c.result) return `| ${c.processes} | ${c.memoryMb} MB | ${c.lazy ? 'lazy' : 'copy'} | failed: ${c.error?.split('\n')[0]} |`;
    const ms = phases.map((p) => (c.result!.phases[p] === undefined ? '—' : `${c.result!.phases[p]} ms`));
    return `| ${c.processes} | ${c.memoryMb} MB | ${c.lazy ? 'lazy' : 'copy'} | ${ms.join(' | ')} | ${c.result.elapsedMs} ms | ${c.result.pages} |`;
  });
  return [head, `|${' --- |'.repeat(phases.length + 5)}`, ...rows].join('\n');
}
