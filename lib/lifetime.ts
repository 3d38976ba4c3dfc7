/**
 * Closes what the program dropped without close(). The release callback captures only the
 * backend and the handle, never the owner, so the owner can be collected.
 */
import { log } from './debug.js';
import type { RawMapping } from './raw/types.js';

const registry = new FinalizationRegistry<() => void>((release) => {
  try {
    release();
  } catch (e) {
    log('finalizer: %s', (e as Error).message);
  }
});

/**
 * Closes `fd` when `owner` is collected; `untrack(owner)` cancels it. The closure is made
 * here, not in the owner's constructor: a closure made there would share the constructor's
 * context, which holds `this` whenever any other closure in it uses `this`, and the owner
 * would never be collected.
 */
export function track(owner: object, raw: { close(fd: number): void }, fd: number): void {
  registry.register(owner, () => raw.close(fd), owner);
}

/**
 * Unmaps `mappings` (the live ones at that time) and closes `fd` when `owner` is collected
 * (untrack(owner) cancels it). A gmem's mappings belong to it, so they are collected with it
 * and need no registration of their own: map and unmap stay cheap.
 */
export function trackWithMappings(owner: object, raw: { close(fd: number): void; munmap(m: RawMapping): void }, fd: number, mappings: Set<RawMapping>): void {
  registry.register(owner, () => {
    for (const m of mappings) raw.munmap(m);
    raw.close(fd);
  }, owner);
}

export function untrack(owner: object): void {
  registry.unregister(owner);
}

/**
 * The children an owner closes with itself (a VM's gmems and vCPUs, a gmem's mappings). Held
 * strongly: a child belongs to its parent, so a child dropped alone is released when its
 * parent closes (or is collected). No WeakRef: V8 takes ~1 us to make one, more than the
 * ioctl it would wrap.
 */
export class Children<T extends object> extends Set<T> {
  /** The children, as an array (safe to close them while iterating). */
  live(): T[] {
    return [...this];
  }
}
