/** The kernel lab: real kernels under QEMU, for the CLI and the tests (not part of the typed API). */
export { labRun, type LabRunOptions, type LabRunResult } from './run.js';
export { resolveKernel, DEFAULT_KERNEL, type LabKernel } from './kernel.js';
export { LabError, type LabErrorCode } from './errors.js';
export { cacheDir } from './cache.js';
export { hostKvmUsable } from './qemu.js';
export { buildKernel, kernelConfigs, type BuildKernelOptions } from './build.js';
