import { accessSync, constants as fsc, readdirSync, readFileSync } from 'node:fs';
import { afterEach, beforeEach, expect } from 'vitest';
import { openKvm, KvmError, type Capabilities, type Kvm, type Vm } from '../lib/index.js';

/** The backend this vitest project asks for (set per project in vitest.config.ts). */
export const backendName = (process.env.KVM_GMEM_BACKEND ?? 'auto') as 'auto' | 'kvm' | 'simulated';
/** The device path this project opens (the auto-fallback project points it nowhere). */
export const devicePath = process.env.KVM_GMEM_TEST_PATH ?? '/dev/kvm';

function canOpen(path: string): string | undefined {
  try {
    accessSync(path, fsc.R_OK | fsc.W_OK);
    return undefined;
  } catch (e) {
    return `${(e as NodeJS.ErrnoException).code}: ${path}`;
  }
}

const labHint = (why: string | undefined) => why && `${why}: no KVM on this host; \`npm test\` runs these specs inside the lab (kvm-gmem lab run)`;
/** Why the real kernel cannot be used here (undefined when /dev/kvm opens). */
export const kvmUnavailable: string | undefined = labHint(canOpen('/dev/kvm'));
/** Why this project's backend cannot run here (undefined when it can). */
export const unavailable: string | undefined = backendName === 'kvm' ? labHint(canOpen(devicePath)) : undefined;
/** Inside the lab: a real kernel under QEMU, where everything runs 5-50x slower than on hardware. */
export const inLab = process.env.KVM_GMEM_LAB !== undefined;
/** Whether this project's tests run on the simulator. */
export const simulated = backendName === 'simulated' || (backendName === 'auto' && canOpen(devicePath) !== undefined);

export function open(options: { precheck?: boolean } = {}): Kvm {
  return openKvm({ backend: backendName, path: devicePath, ...options });
}

/**
 * What this project's backend lacks on a default VM (KVM_CHECK_EXTENSION on the VM, as
 * kvm.capabilities() reads it), read once; undefined where the backend cannot run at all
 * (`unavailable` says why then). Linux 6.12 has guest_memfd only for VM types with private
 * memory: on a default VM KVM_CAP_GUEST_MEMFD is 0, KVM_MEM_GUEST_MEMFD slots are EINVAL and
 * no creation flag is supported (a flag-less gmem can still be created); 6.18 and later
 * offer all of it on default VMs.
 */
function defaultVmCaps(): Capabilities | undefined {
  if (unavailable) return undefined;
  const kvm = open();
  try {
    return kvm.capabilities();
  } finally {
    kvm.close();
  }
}
/** The backend's capabilities on a default VM (undefined where `unavailable`). */
export const vmCaps: Capabilities | undefined = defaultVmCaps();
/** Why a spec that binds guest_memfd memslots on a default VM cannot run here (undefined when it can). */
export const noGmem: string | undefined =
  vmCaps && !vmCaps.guestMemfd ? 'requires guest_memfd on default VMs (KVM_CAP_GUEST_MEMFD on the VM: Linux 6.18+)' : undefined;
/** Why a spec that creates mmap-able guest_memfds (GUEST_MEMFD_FLAG_MMAP) on a default VM cannot run here. */
export const noMmapGmem: string | undefined =
  vmCaps && !(vmCaps.guestMemfd && vmCaps.guestMemfdFlags.mmap) ? 'requires guest_memfd MMAP on default VMs (KVM_CAP_GUEST_MEMFD_FLAGS on the VM: Linux 6.18+)' : undefined;
/** Why a spec that needs host-accessible guest_memfds (MMAP and INIT_SHARED) on a default VM cannot run here. */
export const noSharedGmem: string | undefined =
  vmCaps && !(vmCaps.guestMemfd && vmCaps.guestMemfdFlags.mmap && vmCaps.guestMemfdFlags.initShared)
    ? 'requires guest_memfd MMAP and INIT_SHARED on default VMs (KVM_CAP_GUEST_MEMFD_FLAGS on the VM: Linux 6.18+)'
    : undefined;
/** Why guest code cannot run here: the simulator's vCPU refuses KVM_RUN (it executes nothing). */
export const noGuestCode: string | undefined = simulated ? 'the simulator runs no guest code (its KVM_RUN is refused)' : undefined;
/** Why OS-level fd properties cannot be checked here: the simulator's handles are not fds. */
export const noOsFds: string | undefined = simulated ? 'the simulator’s handles are not OS fds' : undefined;
/** A title's suffix naming why it is skipped (empty when it runs). */
export const skipped = (why: string | undefined): string => (why ? ` (skipped: ${why})` : '');

export const MiB = 1n << 20n;
export const GiB = 1n << 30n;
export const PAGE = 4096n;

/** Runs fn and returns the KvmError it throws, failing the test if it throws nothing else. */
export function kvmErr(fn: () => unknown): KvmError {
  try {
    fn();
  } catch (e) {
    if (e instanceof KvmError) return e;
    throw new Error(`expected a KvmError, got ${(e as Error)?.constructor?.name}: ${(e as Error)?.message}`);
  }
  throw new Error('expected a KvmError, but the call succeeded');
}

/** Asserts fn throws a KvmError with the kernel's `code`. */
export function expectCode(fn: () => unknown, code: string): KvmError {
  const e = kvmErr(fn);
  expect(e.code, e.message).toBe(code);
  return e;
}

export function fdCount(): number {
  return readdirSync('/proc/self/fd').length;
}

/** Mappings of guest_memfd files in this process (/proc/self/maps shows them as
 * anon_inode:[kvm-gmem] on 6.18, /[kvm-gmem] (deleted) since 6.19); the total line count
 * also moves with V8's own heap. */
export function mapCount(): number {
  return readFileSync('/proc/self/maps', 'utf8').split('\n').filter((l) => /\[kvm-gmem\]( \(deleted\))?$/.test(l)).length;
}

/** FD_CLOEXEC as /proc shows it (O_CLOEXEC bit of the fdinfo flags). */
export function isCloexec(fd: number): boolean {
  const flags = /flags:\s*([0-7]+)/.exec(readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'))![1]!;
  return (parseInt(flags, 8) & 0o2000000) !== 0;
}

/** Opens this project's backend and a default VM before each test, closes both after it. */
export function eachVm(set: (kvm: Kvm, vm: Vm) => void, options: { precheck?: boolean } = {}): void {
  let kvm: Kvm;
  let vm: Vm;
  beforeEach(() => {
    kvm = open(options);
    vm = kvm.createVm();
    set(kvm, vm);
  });
  afterEach(() => {
    vm.close();
    kvm.close();
  });
}

/** What a call did: returned a value or threw. */
export type Outcome = { ok: true; value: unknown } | { ok: false; error: unknown };

/** Runs fn and reports what it did, never throwing. */
export function attempt(fn: () => unknown): Outcome {
  try {
    return { ok: true, value: fn() };
  } catch (error) {
    return { ok: false, error };
  }
}

/** 'ok', 'KvmError EBADF', 'TypeError', 'DataCloneError', ... */
export function outcome(o: Outcome): string {
  if (o.ok) return 'ok';
  const e = o.error as { code?: string; name?: string; constructor?: { name?: string } };
  if (e instanceof KvmError) return `KvmError ${e.code}`;
  return e?.name === 'DataCloneError' ? 'DataCloneError' : (e?.constructor?.name ?? typeof e);
}
