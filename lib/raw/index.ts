/** The raw, syscall-shaped layer: hand the kernel exactly what you want, bad values included. */
export type { RawBackend, RawRegion, RawRegion2, RawMemoryAttributes, RawPreFault, RawStat, RawMapping, RawRun, Handle } from './types.js';
export { rawFunctionNames } from './types.js';
export { nativeBackend, loadAddon, addonCandidates } from './native.js';
export * from '../base/uapi.js';
