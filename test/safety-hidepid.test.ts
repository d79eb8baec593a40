// Safety: hidden is not gone. With /proc mounted hidepid=invisible, the
// processes a user may not read answer ENOENT, exactly like processes that
// exited: a stop or kill run by that user used to count root's children as
// exited and report success while they ran on. Each CLI run below happens in
// a private mount namespace over a fresh procfs mounted hidepid=invisible
// (test/helpers.ts, `hidepid`), as nobody; the host's /proc is untouched.
import { expect } from 'chai';
import { existsSync, readFileSync } from 'node:fs';
import { getTreeState } from '../src/index.js';
import { spawnTree, type TreeFixture } from '../src/testing/index.js';
import { cli } from './helpers.js';

const nobody = { uid: 65534, gid: 65534, hidepid: true };

/** Pid, ppid and every thread's state, as root sees them: what "as it was" compares. */
async function picture(tree: TreeFixture): Promise<string[]> {
  const status = await getTreeState(tree.root);
  return status.processes.map((p) => `${p.pid}<${p.ppid} ${p.threads.map((t) => `${t.tid}:${t.state === 'S' || t.state === 'R' ? 'run' : t.state}`).join(',')}`).sort();
}

describe('safety: processes hidden by hidepid', function () {
  this.timeout(60_000);

  it("nobody stops, continues and kills its own tree under hidepid (the namespace and mount work)", async () => {
    await using tree = await spawnTree({ depth: 0, threads: 2, uidDepth: 0, uid: 65534, intervalMs: 20 });
    const stop = await cli(['stop', String(tree.root)], nobody);
    expect(stop.code, stop.stderr).to.equal(0);
    await expect(tree.root).to.be.a.stoppedTree;
    const cont = await cli(['cont', String(tree.root)], nobody);
    expect(cont.code, cont.stderr).to.equal(0);
    await tree.waitProgress();
    const kill = await cli(['kill', String(tree.root)], nobody);
    expect(kill.code, kill.stderr).to.equal(0);
    await expect(tree.root).to.be.a.deadTree;
  });

  it("stop, kill and status by nobody fail EPERM naming root's hidden children, and the tree runs on as it was", async () => {
    // The root drops to nobody after forking; its children stay root's, so
    // /proc hides them from nobody.
    await using tree = await spawnTree({ depth: 1, fanout: 2, threads: 2, uidDepth: 0, uid: 65534, intervalMs: 20 });
    const children = tree.pids().filter((p) => p !== tree.root);
    const before = await picture(tree);
    for (const verb of ['stop', 'kill', 'status']) {
      const run = await cli([verb, String(tree.root)], nobody);
      expect(run.code, `${verb}: ${run.stdout}${run.stderr}`).to.equal(1);
      expect(run.stderr, verb).to.match(/^treestate: cannot read processes /);
      expect(run.stderr, verb).to.include('EPERM');
      expect(run.stderr, verb).to.include('hidepid');
      for (const child of children) expect(run.stderr, verb).to.include(String(child));
      // The stop looks before it signals, and stops nothing of a tree it cannot read whole;
      // a kill stops first, had stopped the root, and resumed it.
      if (verb === 'stop') expect(run.stderr, verb).to.match(/; nothing had been stopped$/m);
      if (verb === 'kill') expect(run.stderr, verb).to.match(/the 1 process it had stopped was resumed$/m);
      expect(await picture(tree), `after ${verb}`).to.deep.equal(before);
      await tree.waitProgress();
    }
    for (const child of children) expect(existsSync(`/proc/${child}`), `child ${child}`).to.equal(true);
  });

  it("a hidden root is EPERM, not 'no such process'; a pid nobody has is still ESRCH", async () => {
    await using tree = await spawnTree({ depth: 1, fanout: 1, intervalMs: 20 });
    for (const verb of ['status', 'stop', 'kill']) {
      const run = await cli([verb, String(tree.root)], nobody);
      expect(run.code, `${verb}: ${run.stderr}`).to.equal(1);
      expect(run.stderr, verb).to.equal(`treestate: cannot read process ${tree.root}: operation not permitted (EPERM): alive, but /proc does not let this user read it (hidepid)\n`);
    }
    await tree.waitProgress();
    const max = Number(readFileSync('/proc/sys/kernel/pid_max', 'utf8'));
    let free = max - 1;
    while (existsSync(`/proc/${free}`)) free--;
    const missing = await cli(['status', String(free)], nobody);
    expect(missing.stderr).to.equal(`treestate: no such process: ${free}\n`);
  });
});
