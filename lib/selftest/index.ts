export { selftestCases, runSelftests, skipReason, missing, type SelftestCase, type SelftestContext, type SelftestResult, type Requirement } from './cases.js';
export { SelftestFailure } from './assert.js';
