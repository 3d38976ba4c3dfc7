export { SimBackend, SIM_HANDLE_BASE } from './backend.js';
export { defaultProfile, profileFromCapabilities, type SimProfile } from './profile.js';
export { SimMapping } from './memory.js';
