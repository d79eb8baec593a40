// Root hooks for the whole suite: the chai tree-state plugin, and the leak
// check that fails any test leaving a process or zombie behind.
import * as chai from 'chai';
import { chaiTreeState, mochaHooks as leakHooks } from '../src/testing/index.js';

chai.use(chaiTreeState);

export const mochaHooks = {
  ...leakHooks,
  // The CLI loads its command groups with import() (src/cli/main.ts): load
  // them once before any test, so tsx compiles them (and starts its esbuild
  // service) here rather than inside the first test that runs a command.
  async beforeAll(): Promise<void> {
    await Promise.all([import('../src/cli/cgroup.js'), import('../src/cli/criu.js'), import('../src/cli/migrate.js'), import('../src/cli/demo.js')]);
  },
};
