import { debuglog } from 'node:util';

/** NODE_DEBUG=kvm-gmem: the library's trace (every raw call, and what the books decide). */
export const log = debuglog('kvm-gmem');
