/**
 * Lifetimes: what is released when an object is collected without close(), and the /dev/kvm
 * handle that stays open while any VM needs it.
 *
 * A VM registers one finalizer for itself and everything it owns (its gmems' fds and mappings,
 * its vCPUs, its shared memory): one registration per VM rather than one per object. The
 * children are held by the VM, so they are collected only with it. The release closures
 * capture the raw backend and handles, never the owners, so the owners can be collected.
 */
import { log } from './base/log.js';
import type { Handle, RawBackend, RawMapping } from './raw/types.js';

/** Runs one release; a failure is logged (NODE_DEBUG=kvm-gmem), never thrown from a finalizer. */
function attempt(release: () => void): void {
  try {
    release();
  } catch (e) {
    log('finalizer: %s', (e as Error).message);
  }
}

const registry = new FinalizationRegistry<() => void>(attempt);

/** Runs `release` when `owner` is collected; unregister(owner) cancels it. */
export function onCollect(owner: object, release: () => void): void {
  registry.register(owner, release, owner);
}

export function unregister(owner: object): void {
  registry.unregister(owner);
}

/** The raw resources of one child: its mappings (unmapped first) and its fd, if it has one. */
export interface ChildResources {
  fd?: Handle;
  mappings: Set<RawMapping>;
}

/**
 * The raw resources of a VM's children, keyed by child, as the VM's finalizer releases them.
 * A child that closes normally removes its entry.
 */
export class Resources {
  readonly #entries = new Map<object, ChildResources>();

  add(child: object, r: ChildResources): void {
    this.#entries.set(child, r);
  }

  delete(child: object): void {
    this.#entries.delete(child);
  }

  /** Unmaps and closes everything still registered (the VM was collected). */
  releaseAll(raw: Pick<RawBackend, 'close' | 'munmap'>): void {
    for (const r of this.#entries.values()) {
      for (const m of r.mappings) attempt(() => raw.munmap(m));
      if (r.fd !== undefined) attempt(() => raw.close(r.fd!));
    }
    this.#entries.clear();
  }
}

/**
 * The /dev/kvm handle, shared by a Kvm and its VMs: closed when the Kvm is closed and no VM
 * needs it any more (VMs stay usable after kvm.close(); some of their calls need /dev/kvm).
 */
export class SystemHandle {
  #refs = 1;
  constructor(
    readonly raw: RawBackend,
    readonly fd: Handle,
  ) {}

  acquire(): void {
    this.#refs++;
  }

  release(): void {
    if (--this.#refs === 0) this.raw.close(this.fd);
  }
}
