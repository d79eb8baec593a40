// The package as a user gets it: packed, installed in an empty project
// (building the addon there), its README's links and testing example checked
// against what was installed.
import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect } from 'chai';
import { packageRoot } from '../src/native.js';

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

function run(file: string, args: string[], cwd: string): Promise<Run> {
  return new Promise((resolve) => {
    execFile(file, args, { cwd, env: { ...process.env, NO_COLOR: '1', CI: process.env.CI ?? '' }, maxBuffer: 64 * 1024 * 1024, timeout: 600_000 }, (error, stdout, stderr) => {
      resolve({ code: error ? (typeof error.code === 'number' ? error.code : 1) : 0, stdout: String(stdout), stderr: String(stderr) });
    });
  });
}

/** The fenced block of `lang` that follows `heading` in a markdown text. */
export function codeBlockAfter(markdown: string, heading: string, lang: string): string {
  const at = markdown.indexOf(heading);
  if (at < 0) throw new Error(`no ${heading} in the README`);
  const match = new RegExp('```' + lang + '\\n([\\s\\S]*?)```').exec(markdown.slice(at));
  if (!match) throw new Error(`no \`\`\`${lang} block after ${heading}`);
  return match[1]!;
}

/** Relative link targets of a markdown text (not URLs, not in-page anchors). */
function relativeLinks(markdown: string): string[] {
  return [...markdown.matchAll(/\]\(([^)\s]+)\)/g)].map((m) => m[1]!).filter((l) => !/^[a-z]+:/i.test(l) && !l.startsWith('#')).map((l) => l.split('#')[0]!);
}

describe('package', function () {
  this.timeout(600_000);
  const root = packageRoot();
  let project = '';
  let installed = '';

  before(async () => {
    project = mkdtempSync(join(tmpdir(), 'treestate-package-'));
    const packed = await run('npm', ['pack', '--silent', '--pack-destination', project], root);
    expect(packed.code, packed.stderr).to.equal(0);
    const tarball = join(project, packed.stdout.trim().split('\n').at(-1)!);
    writeFileSync(join(project, 'package.json'), JSON.stringify({ name: 'treestate-user', version: '1.0.0', private: true, type: 'module' }));
    // The test tools at the versions this checkout uses, so npm finds them in its cache.
    const tools = ['mocha', 'chai', 'tsx'].map((m) => `${m}@${(JSON.parse(readFileSync(join(root, 'node_modules', m, 'package.json'), 'utf8')) as { version: string }).version}`);
    const install = await run('npm', ['install', '--ignore-scripts=false', '--no-audit', '--no-fund', '--prefer-offline', tarball, ...tools], project);
    expect(install.code, install.stderr).to.equal(0);
    installed = join(project, 'node_modules', 'treestate');
  });

  after(() => {
    if (project) rmSync(project, { recursive: true, force: true });
  });

  it('installs in an empty project, building the addon and the tools treestate/testing needs, not the benchmark floor', async () => {
    for (const built of ['treestate.node', 'treestate-fixture', 'treestate-reaper']) expect(existsSync(join(installed, 'build', 'Release', built)), built).to.equal(true);
    expect(existsSync(join(installed, 'build', 'Release', 'treestate-c-floor'))).to.equal(false);
    const version = await run(join(project, 'node_modules', '.bin', 'treestate'), ['--version'], project);
    expect(version.stdout.trim()).to.equal((JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { version: string }).version);
  });

  it('ships an MIT LICENSE and every file its README links to', () => {
    expect(readFileSync(join(installed, 'LICENSE'), 'utf8')).to.match(/^MIT License\n\nCopyright \(c\) 2026 the treestate authors\n/);
    const links = relativeLinks(readFileSync(join(installed, 'README.md'), 'utf8'));
    expect(links).to.include('docs/safety.md');
    expect(links.filter((l) => !existsSync(join(installed, l))), 'README links to files not in the package').to.deep.equal([]);
  });

  it("runs the README's testing example as written, with the hook it names", async () => {
    const example = codeBlockAfter(readFileSync(join(installed, 'README.md'), 'utf8'), '## Testing your programs', 'ts');
    writeFileSync(join(project, 'example.test.ts'), example);
    const mocha = await run(join(project, 'node_modules', '.bin', 'mocha'), ['--require', 'treestate/testing', '--node-option', 'import=tsx', 'example.test.ts'], project);
    expect(mocha.code, mocha.stdout + mocha.stderr).to.equal(0);
    expect(mocha.stdout).to.match(/1 passing/);
  });

  it('fails a test that does not await a tree assertion, through the same hook', async () => {
    writeFileSync(
      join(project, 'unawaited.test.ts'),
      `import * as chai from 'chai';
import { expect } from 'chai';
import { spawnTree, chaiTreeState } from 'treestate/testing';
chai.use(chaiTreeState);
it('forgets an await', async () => {
  await using tree = await spawnTree({ depth: 0 });
  expect(tree.root).to.be.a.stoppedTree; // running: awaited, this would fail
});
`,
    );
    const mocha = await run(join(project, 'node_modules', '.bin', 'mocha'), ['--require', 'treestate/testing', '--node-option', 'import=tsx', 'unawaited.test.ts'], project);
    expect(mocha.code).to.not.equal(0);
    expect(mocha.stdout).to.match(/the test did not await a tree assertion, which therefore proved nothing: expect\(\d+\)\.to\.be\.a\.stoppedTree/);
    expect(mocha.stdout).to.include('unawaited.test.ts');
  });
});
