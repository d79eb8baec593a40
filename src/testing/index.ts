// treestate/testing: short, deterministic, leak-free tests of how programs
// behave when stopped, continued, killed, checkpointed and restored.
export { spawnTree, treeSize, TreeFixture, type Endpoints, type Heartbeat, type TreeOptions, type TreeOwner, type TreeShape } from './fixture.js';
export { spawnSupervised, spawnStopped, Supervisor, liveSupervisors, type SuperviseOptions } from './supervisor.js';
export { assertTreeState, assertNotTreeState, chaiTreeState, checkAssertionsAwaited, type AssertOptions } from './assertions.js';
export { checkNoLeaks, recordBaseline, mochaHooks } from './leaks.js';
/**
 * The seam for tests of treestate itself: `observePasses({ afterPass })` runs
 * code after each native pass, before the operation sees it, to place a real
 * event (an exit, a fork) between two passes instead of racing for it.
 */
export { observePasses, type PassObserver } from '../walk.js';
