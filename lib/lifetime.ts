/**
 * Closes what the program dropped without close(). The release callback captures only the
 * backend and the handle, never the owner, so the owner can be collected.
 */
import { log } from './debug.js';

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

export function untrack(owner: object): void {
  registry.unregister(owner);
}

/**
 * The children an owner closes with itself (a VM's gmems, a gmem's mappings), held weakly so
 * that a child the program dropped can still be collected and finalized on its own.
 */
export class Children<T extends object> {
  #refs = new Set<WeakRef<T>>();
  #adds = 0;

  add(child: T): WeakRef<T> {
    const ref = new WeakRef(child);
    this.#refs.add(ref);
    if (++this.#adds % 1024 === 0) for (const r of this.#refs) if (!r.deref()) this.#refs.delete(r);
    return ref;
  }

  delete(ref: WeakRef<T> | undefined): void {
    if (ref) this.#refs.delete(ref);
  }

  /** The live children, as an array (safe to close them while iterating). */
  live(): T[] {
    const out: T[] = [];
    for (const r of this.#refs) {
      const c = r.deref();
      if (c) out.push(c);
      else this.#refs.delete(r);
    }
    return out;
  }
}
