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

/** Registers `release` to run when `owner` is collected; `untrack(owner)` cancels it. */
export function track(owner: object, release: () => void): void {
  registry.register(owner, release, owner);
}

export function untrack(owner: object): void {
  registry.unregister(owner);
}
