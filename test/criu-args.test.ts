import { expect } from 'chai';
import { criuErrorLines } from '../src/criu/checkpoint.js';
import { dumpArgs, preDumpArgs, restoreArgs } from '../src/criu/args.js';
import { minCriuVersion, parseVersion, versionAtLeast } from '../src/criu/locate.js';

// Unit tests of argument building: in addition to, never instead of, the real-criu tests.
describe('criu argument vectors', () => {
  it('maps each dump final state to criu\'s option', () => {
    expect(dumpArgs(42, '/i', '/i/dump.log', 'dead', {})).to.deep.equal(['dump', '-t', '42', '-D', '/i', '-o', '/i/dump.log', '-v4']);
    expect(dumpArgs(42, '/i', '/l', 'running', {})).to.include('--leave-running').and.not.include('--leave-stopped');
    expect(dumpArgs(42, '/i', '/l', 'stopped', {})).to.include('--leave-stopped').and.not.include('--leave-running');
  });

  it('passes --prev-images-dir relative to the images directory, with --track-mem', () => {
    const args = dumpArgs(42, '/images/2', '/l', 'dead', { prevImagesDir: '/images/1' });
    expect(args).to.include.ordered.members(['dump', '-t', '42', '-D', '/images/2', '--prev-images-dir', '../1', '--track-mem']);
    expect(preDumpArgs(42, '/images/2', '/l', { prevImagesDir: '/images/1' })).to.include('../1');
  });

  it('restores detached with a pid file, and passes flags and extra arguments through unchanged', () => {
    const args = restoreArgs('/i', '/l', '/p', 'stopped', { shellJob: true, tcpEstablished: true, extraArgs: ['--ext-unix-sk', '; rm -rf /'] });
    expect(args).to.deep.equal(['restore', '-D', '/i', '--restore-detached', '--pidfile', '/p', '--leave-stopped', '-o', '/l', '-v4', '--shell-job', '--tcp-established', '--ext-unix-sk', '; rm -rf /']);
  });

  it('reads criu versions and compares them', () => {
    expect(parseVersion('Version: 4.1.1\n')).to.equal('4.1.1');
    expect(parseVersion('Version: 3.17\nGitID: v3.17\n')).to.equal('3.17');
    expect(parseVersion('garbage')).to.equal(undefined);
    expect(versionAtLeast('4.1.1', [4, 1])).to.equal(true);
    expect(versionAtLeast('4.1', [4, 1])).to.equal(true);
    expect(versionAtLeast('4.0.9', [4, 1])).to.equal(false);
    expect(versionAtLeast('3.17.1', [4, 1])).to.equal(false);
    expect(versionAtLeast('5.0', [4, 2])).to.equal(true);
    expect(versionAtLeast('4.1.1', [4, 2])).to.equal(false);
  });

  it('asks for the CRIU the kernel needs: 4.1 from 6.13 on, 4.2 from 6.16 on (sockets)', () => {
    expect(minCriuVersion('6.12.9-amd64')).to.deep.equal([4, 1]);
    expect(minCriuVersion('6.15.0')).to.deep.equal([4, 1]);
    expect(minCriuVersion('6.16.0-rc1')).to.deep.equal([4, 2]);
    expect(minCriuVersion('6.18.3')).to.deep.equal([4, 2]);
    expect(minCriuVersion('7.0.0')).to.deep.equal([4, 2]);
  });

  it('passes the network lock method only when one is chosen', () => {
    expect(dumpArgs(42, '/i', '/l', 'dead', { tcpEstablished: true })).to.not.include('--network-lock');
    expect(dumpArgs(42, '/i', '/l', 'dead', { tcpEstablished: true, networkLock: 'nftables' }).join(' ')).to.include('--tcp-established --network-lock nftables');
  });

  it('keeps criu\'s error lines but not the RLIMIT_NOFILE one it always survives', () => {
    const log = ['(00.001) rlimit: Error (criu/util.c:1): Can\'t setup RLIMIT_NOFILE for self: Operation not permitted', '(00.002) Dumping', '(00.003) Error (criu/sk-unix.c:2): unix: External socket is used. Consider using --ext-unix-sk option.'].join('\n');
    expect(criuErrorLines(log)).to.deep.equal(['(00.003) Error (criu/sk-unix.c:2): unix: External socket is used. Consider using --ext-unix-sk option.']);
  });
});
