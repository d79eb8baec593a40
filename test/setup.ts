// Root hooks for the whole suite: the chai tree-state plugin, and the leak
// check that fails any test leaving a process or zombie behind.
import * as chai from 'chai';
import { chaiTreeState, mochaHooks as leakHooks } from '../src/testing/index.js';

chai.use(chaiTreeState);

export const mochaHooks = leakHooks;
