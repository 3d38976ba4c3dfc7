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

/**
 * Runs `release` when `owner` is collected; unregister(owner) cancels it. Make `release` in a
 * function of its own, never in the owner's constructor: a closure made there shares the
 * constructor's context, which holds `this` whenever another closure in it uses `this`, and
 * the owner would never be collected.
 */
export function onCollect(owner: object, release: () => void): void {
  registry.register(owner, release, owner);
}

/** A VM collected unclosed: what it owns is released, then its fd, then its /dev/kvm reference. */
export function onVmCollect(owner: object, raw: RawBackend, fd: Handle, resources: Resources, system: SystemHandle): void {
  onCollect(owner, () => {
    resources.releaseAll(raw);
    raw.close(fd);
    system.release();
  });
}

/** A Kvm collected unclosed: its /dev/kvm reference. */
export function onKvmCollect(owner: object, system: SystemHandle): void {
  onCollect(owner, () => system.release());
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
 * The raw resources of a VM's children, as the VM's finalizer releases them. Keyed by number,
 * not by child: the finalizer holds this registry, and must not reach the children (they
 * reach the VM, which could then never be collected). A child that closes removes its entry.
 */
export class Resources {
  readonly #entries = new Map<number, ChildResources>();
  #next = 0;

  /** Registers `r`; the key removes it. */
  add(r: ChildResources): number {
    this.#entries.set(++this.#next, r);
    return this.#next;
  }

  delete(key: number): void {
    this.#entries.delete(key);
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
