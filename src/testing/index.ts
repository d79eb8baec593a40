// treestate/testing: short, deterministic, leak-free tests of how programs
// behave when stopped, continued, killed, checkpointed and restored.
export { spawnTree, treeSize, TreeFixture, type Endpoints, type Heartbeat, type TreeOptions, type TreeOwner, type TreeShape } from './fixture.js';
export { spawnSupervised, spawnStopped, Supervisor, liveSupervisors, type SuperviseOptions } from './supervisor.js';
export { assertTreeState, assertNotTreeState, chaiTreeState, checkAssertionsAwaited, type AssertOptions } from './assertions.js';
export { checkNoLeaks, recordBaseline, mochaHooks } from './leaks.js';
