/**
 * Closes what the program dropped without close(). The release callback captures only the
 * backend and the handle, never the owner, so the owner can be collected.
 */
import { log } from './debug.js';
import type { RawMapping } from './raw/types.js';

/** Runs one release; a failure is logged (NODE_DEBUG=kvm-gmem), never thrown from a finalizer. */
function attempt(release: () => void): void {
  try {
    release();
  } catch (e) {
    log('finalizer: %s', (e as Error).message);
  }
}

const registry = new FinalizationRegistry<() => void>(attempt);

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
 * The raw resources of an owner's children: each child's fd, with the mappings to unmap
 * before it closes. A child is held by its owner (Children below), so it is collected only
 * with its owner, whose finalizer releases them all: one registration per VM rather than one
 * per gmem, vCPU and mapping. (In a create+close loop a registration costs ~0.4 us, about a
 * tenth of the ioctl; a Map entry a tenth of that.)
 */
export type ChildHandles = Map<number, Set<RawMapping>>;

/**
 * Closes `fd`, and first every child in `children` (its mappings, then its fd), when `owner`
 * is collected; untrack(owner) cancels it. Children that close normally leave `children`.
 */
export function trackWithChildren(
  owner: object,
  raw: { close(fd: number): void; munmap(m: RawMapping): void },
  fd: number,
  children: ChildHandles,
): void {
  registry.register(owner, () => {
    for (const [child, mappings] of children) {
      for (const m of mappings) attempt(() => raw.munmap(m));
      attempt(() => raw.close(child));
    }
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
