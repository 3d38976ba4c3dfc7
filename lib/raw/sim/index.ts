export { SimBackend, SIM_HANDLE_BASE } from './backend.js';
export { defaultProfile, measureProfile, profileFromJSON, profileToJSON, type SimProfile, type CapTable } from './profile.js';
export { SimMapping } from './memory.js';
