import { readCapabilities, type Capabilities } from './capabilities.js';
import { SimBackend, defaultProfile, measureProfile, type SimProfile } from './raw/sim/index.js';
import { loadProfile, type ProfileSource } from './profiles.js';
import { release } from 'node:os';
import { traced } from './debug.js';
import { KvmError, kvmError } from './errors.js';
import { track, untrack } from './lifetime.js';
import { VmType, type VmTypeName } from './raw/constants.js';
import { nativeBackend } from './raw/native.js';
import type { Handle, RawBackend } from './raw/types.js';
import { toBool, toInt, toOptions, typeName } from './u64.js';
import { Vm } from './vm.js';

export type BackendName = 'auto' | 'kvm' | 'simulated';

export interface OpenKvmOptions {
  /** 'auto' (default, or KVM_GMEM_BACKEND): the kernel when the device opens. */
  backend?: BackendName;
  /** Device path, default /dev/kvm. */
  path?: string;
  /**
   * Check the books (slot and range conflicts) before asking the kernel, so the error names
   * what is in the way (default true). With false every call goes to the backend, which is
   * how the conformance suite asserts the kernel's own answer.
   */
  precheck?: boolean;
  /** A RawBackend to use instead of the built-in ones (tests, instrumentation). */
  raw?: RawBackend;
  /**
   * The simulated host, so that the simulator answers as that kernel would: a SimProfile (a
   * real host's kvm.profile()), its JSON (`kvm-gmem caps --json` output), the path of such a
   * JSON file, or the name of a profile the package ships (profiles/*.json:
   * 'debian-7.2', 'sw-protected-7.2', 'pvm-6.18', ...). Default: $KVM_GMEM_PROFILE, else a
   * 6.18+ host with KVM_X86_SW_PROTECTED_VM.
   */
  profile?: ProfileSource;
}

export interface VmOptions {
  /** 'default', 'sw-protected', ... or a raw KVM_CREATE_VM type number. */
  type?: VmTypeName | number;
}

const BACKENDS: readonly BackendName[] = ['auto', 'kvm', 'simulated'];

/** Access to KVM: the /dev/kvm handle, its capabilities, and VM creation. */
export class Kvm {
  /** Which backend answers: the kernel, or the simulator. */
  readonly backend: 'kvm' | 'simulated';
  /** Why 'auto' did not pick the kernel (e.g. 'ENOENT: /dev/kvm'); undefined otherwise. */
  readonly fallbackReason: string | undefined;
  readonly path: string;
  /** KVM_GET_API_VERSION (12). */
  readonly apiVersion: number;
  readonly raw: RawBackend;
  readonly precheck: boolean;
  #fd: Handle;
  #closed = false;

  /** @internal use openKvm() */
  constructor(raw: RawBackend, fd: Handle, path: string, precheck: boolean, fallbackReason?: string) {
    this.raw = raw;
    this.backend = raw.kind;
    this.#fd = fd;
    this.path = path;
    this.precheck = precheck;
    this.fallbackReason = fallbackReason;
    this.apiVersion = raw.getApiVersion(fd);
    track(this, raw, fd);
  }

  get fd(): Handle {
    if (this.#closed) throw kvmError('EBADF', { syscall: 'ioctl' }, `${this.path} is closed`);
    return this.#fd;
  }
  get closed(): boolean {
    return this.#closed;
  }
  get pageSize(): number {
    return this.raw.pageSize;
  }

  /** KVM_CHECK_EXTENSION on /dev/kvm: the kernel's raw answer. */
  checkExtension(cap: number): number {
    return this.raw.checkExtension(this.fd, toInt(cap, 'cap', -(2 ** 31), 2 ** 31 - 1));
  }

  /**
   * Typed capabilities, read on a VM of `vmType` (default 'default') because the answers
   * depend on the VM type; on /dev/kvm when such a VM cannot be created.
   */
  capabilities(options?: { vmType?: VmTypeName | number }): Capabilities {
    const fd = this.fd;
    const opts = toOptions(options, 'capabilities options');
    const type = resolveVmType(opts.vmType === undefined ? 'default' : opts.vmType);
    let vmFd: Handle | undefined;
    try {
      vmFd = this.raw.createVm(fd, type);
    } catch (e) {
      if (!(e instanceof KvmError)) throw e;
    }
    try {
      return readCapabilities(this.raw, fd, vmFd, vmFd === undefined ? 'system' : (opts.vmType ?? 'default'));
    } finally {
      if (vmFd !== undefined) this.raw.close(vmFd);
    }
  }

  /**
   * What a simulator needs to answer as this host: capabilities on /dev/kvm and on a VM of
   * each type, and the answers capabilities do not give (measured by trying them on a
   * throwaway VM). On the simulated backend, the profile it runs.
   */
  profile(): SimProfile {
    const fd = this.fd;
    if (this.raw instanceof SimBackend) return this.raw.profile;
    return measureProfile(this.raw, fd, `linux ${release()}`, release());
  }

  /** KVM_CREATE_VM. */
  createVm(options?: VmOptions): Vm {
    const opts = toOptions(options, 'VM options');
    const type = resolveVmType(opts.type === undefined ? 'default' : opts.type);
    return new Vm(this, this.raw, this.raw.createVm(this.fd, type), type, this.precheck);
  }

  /** Closes the /dev/kvm handle (idempotent). VMs stay usable until closed themselves. */
  close(): void {
    if (this.#closed) return;
    untrack(this);
    this.#closed = true;
    this.raw.close(this.#fd);
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

export function resolveVmType(type: unknown): number {
  if (typeof type === 'string') {
    if (!(type in VmType)) throw new RangeError(`unknown VM type '${type}' (known: ${Object.keys(VmType).join(', ')})`);
    return VmType[type as VmTypeName];
  }
  return toInt(type, 'type', 0, 2 ** 32 - 1);
}

/** How to get access when /dev/kvm is refused. */
/** The device's open error, naming the device and what to do. */
function deviceError(e: KvmError, path: string): KvmError {
  const why =
    e.code === 'EACCES' || e.code === 'EPERM'
      ? `${path} is not accessible to this user; add the user to the group that owns it (usually 'kvm': sudo usermod -aG kvm $USER, then log in again) or adjust its permissions`
      : e.code === 'ENOENT' || e.code === 'ENXIO' || e.code === 'ENODEV'
        ? `${path} does not exist: this host has no KVM. The simulator (backend 'simulated', or 'auto') runs the same API, and 'kvm-gmem lab run' runs commands inside a real kernel under QEMU`
        : `cannot open ${path}`;
  return new KvmError(`${e.message}: ${why}`, { errno: e.errno, code: e.code, syscall: e.syscall, cause: e });
}

/**
 * Opens KVM. backend 'kvm' uses the kernel through the native addon; 'auto' (the default,
 * or KVM_GMEM_BACKEND) uses the kernel when the device opens.
 */
export function openKvm(opts?: OpenKvmOptions): Kvm {
  const options = toOptions(opts, 'openKvm options');
  const path = options.path === undefined ? '/dev/kvm' : options.path;
  if (typeof path !== 'string') throw new TypeError(`path must be a string, got ${typeName(path)}`);
  const precheck = toBool(options.precheck, 'precheck', true);
  const requested = options.backend === undefined ? ((process.env.KVM_GMEM_BACKEND || 'auto') as BackendName) : options.backend;
  if (typeof requested !== 'string') throw new TypeError(`backend must be a string, got ${typeName(requested)}`);
  if (!BACKENDS.includes(requested)) throw new RangeError(`backend must be one of ${BACKENDS.join(', ')}, got ${String(requested)}`);

  if (options.raw) return new Kvm(options.raw, options.raw.open(path), path, precheck);
  const simulated = (reason?: string) => {
    const source = options.profile ?? (process.env.KVM_GMEM_PROFILE || undefined);
    const sim = traced(new SimBackend(source === undefined ? defaultProfile : loadProfile(source)));
    return new Kvm(sim, sim.open(path), path, precheck, reason);
  };
  if (requested === 'simulated') return simulated();
  let raw: RawBackend;
  try {
    raw = nativeBackend();
  } catch (e) {
    if (requested === 'kvm') throw e;
    return simulated(`no native addon: ${(e as Error).message.split('\n')[0]}`);
  }
  try {
    return new Kvm(raw, raw.open(path), path, precheck);
  } catch (e) {
    if (!(e instanceof KvmError)) throw e;
    if (requested === 'kvm') throw deviceError(e, path);
    return simulated(`${e.code}: ${path}`);
  }
}
