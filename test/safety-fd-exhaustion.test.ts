// Safety: running out of file descriptors. A walk needs a few descriptors per
// process (and the walk cache keeps some); when open() fails with EMFILE the
// process is still there, so it must never be reported as exited, nor a
// partly read tree as the tree. Each CLI run below gets a smaller fd limit,
// from comfortable down to one the walk cannot live with.
import { expect } from 'chai';
import { continueTree, getTreeState, stopTree } from '../src/index.js';
import { spawnTree } from '../src/testing/index.js';
import { cli, hasExited } from './helpers.js';

describe('safety: descriptor exhaustion', function () {
  this.timeout(120_000);

  it('says EMFILE, never a wrong state, and a stop that hits it leaves the tree running', async () => {
    await using tree = await spawnTree({ depth: 2, fanout: 3, threads: 3 });
    let midTree = 0;
    for (let limit = 40; limit >= 18; limit--) {
      const status = await cli(['status', String(tree.root), '--json'], { fdLimit: limit });
      if (status.code === 0) {
        const seen = JSON.parse(status.stdout) as { state: string; processes: { threads: unknown[] }[] };
        expect(seen.state, `status with ${limit} fds`).to.equal('running');
        expect(seen.processes, `status with ${limit} fds`).to.have.length(13);
        expect(seen.processes.flatMap((p) => p.threads), `status with ${limit} fds`).to.have.length(39);
      } else {
        // Below about 20, Node itself runs out before the walk does.
        // With --json the error is JSON on stdout; Node running out itself writes to stderr.
        expect(`${status.stdout}${status.stderr}`, `status with ${limit} fds`).to.match(/too many open files|EMFILE/i);
      }

      const stop = await cli(['stop', String(tree.root)], { fdLimit: limit });
      if (stop.code === 0) {
        expect(stop.stdout).to.include(`stopped the tree of ${tree.root}: 13 processes`);
        expect((await getTreeState(tree.root)).state, `after a stop with ${limit} fds`).to.equal('stopped');
        const cont = await cli(['cont', String(tree.root)], { fdLimit: limit });
        expect(cont.code, cont.stderr).to.equal(0);
      } else {
        expect(stop.stderr, `stop with ${limit} fds`).to.match(/too many open files|EMFILE/i);
        if (/not read whole/.test(stop.stderr)) midTree++;
      }
      expect((await getTreeState(tree.root)).state, `the tree after a stop with ${limit} fds`).to.equal('running');
    }
    // Some limit let the walk start and then fail part-way: the case that
    // used to report unread processes as exited.
    expect(midTree, 'stops that failed part-way through the tree').to.be.greaterThan(0);
  });

  it('a continue that runs out part-way names what it continued, and continuing again finishes', async () => {
    await using tree = await spawnTree({ depth: 2, fanout: 3, threads: 3 });
    let partWay = 0;
    for (let limit = 40; limit >= 18; limit--) {
      await stopTree(tree.root);
      const cont = await cli(['cont', String(tree.root)], { fdLimit: limit });
      if (cont.code !== 0) {
        expect(cont.stderr, `cont with ${limit} fds`).to.match(/too many open files|EMFILE/i);
        const named = /continued ([\d, ]+)(?: and \d+ more)?, which it reached/.exec(cont.stderr);
        if (named) {
          partWay++;
          // Each process it names runs again.
          const status = await getTreeState(tree.root);
          for (const pid of named[1]!.split(', ').map(Number)) {
            expect(status.processes.find((p) => p.pid === pid)?.state, `pid ${pid}, named as continued`).to.equal('running');
          }
        }
      }
      await continueTree(tree.root);
      expect((await getTreeState(tree.root)).state).to.equal('running');
    }
    expect(partWay, 'continues that failed part-way through the tree').to.be.greaterThan(0);
  });

  // A continue and a kill signal after reading the whole tree, holding each
  // process's pin until then, up to a quarter of the fd limit; past it they
  // look each process up again by pid and start time. With 64 fds that is
  // 16 pins for 40 processes.
  it('continues and kills a tree bigger than its budget of held pins', async () => {
    await using tree = await spawnTree({ depth: 3, fanout: 3 });
    expect(tree.pids()).to.have.length(40);
    for (let round = 0; round < 3; round++) {
      const stop = await cli(['stop', String(tree.root)], { fdLimit: 64 });
      expect(stop.code, stop.stderr).to.equal(0);
      const cont = await cli(['cont', String(tree.root), '--json'], { fdLimit: 64 });
      expect(cont.code, cont.stderr).to.equal(0);
      expect(JSON.parse(cont.stdout).signalled).to.have.members(tree.pids());
      expect((await getTreeState(tree.root)).state).to.equal('running');
    }
    const pids = tree.pids();
    const kill = await cli(['kill', String(tree.root)], { fdLimit: 64 });
    expect(kill.code, kill.stderr).to.equal(0);
    for (const pid of pids) expect(hasExited(pid), `pid ${pid}`).to.equal(true);
  });
});
