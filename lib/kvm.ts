import { release } from 'node:os';
import { toBool, toInt, toOptions, typeName } from './base/args.js';
import { KvmError, kvmError } from './base/errors.js';
import { isVmTypeName, VmType, type VmTypeName } from './base/uapi.js';
import { readCapabilities, type Capabilities } from './capabilities.js';
import { checkToken, CREATE } from './context.js';
import { onKvmCollect, SystemHandle, unregister } from './lifetime.js';
import { loadProfile, type ProfileSource } from './profiles.js';
import { nativeBackend } from './raw/native.js';
import { SimBackend, defaultProfile, measureProfile, type SimProfile } from './raw/sim/index.js';
import { traced } from './raw/trace.js';
import type { Handle, RawBackend } from './raw/types.js';
import { Vm } from './vm.js';

/**
 * Which backend openKvm() uses: 'kvm', the kernel through the native addon; 'simulated', the
 * simulator; 'auto', the kernel when the addon loads and the device opens, else the simulator.
 */
export type BackendName = 'auto' | 'kvm' | 'simulated';

/** Options of openKvm(). */
export interface OpenKvmOptions {
  /**
   * 'auto' (default, or KVM_GMEM_BACKEND): the kernel when the addon loads and the device
   * opens, else the simulator. Not with `raw` (a TypeError: raw is the backend).
   */
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
   * JSON file, or the name of a profile the package ships (profiles/*.json, e.g. 'pvm-6.18';
   * shippedProfiles() lists them). Default: $KVM_GMEM_PROFILE, else a 6.18+ host with
   * KVM_X86_SW_PROTECTED_VM. Used only when the simulator answers; not with `raw` (a
   * TypeError: a SimBackend takes its profile when made). An unknown name or a missing file
   * is a RangeError.
   */
  profile?: ProfileSource;
}

/** Options of Kvm.createVm(). */
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
  /** The device path opened (openKvm's `path`, default /dev/kvm). */
  readonly path: string;
  /** KVM_GET_API_VERSION (12). */
  readonly apiVersion: number;
  /** The raw backend, to hand the kernel deliberately bad values (see `raw` in the README). */
  readonly raw: RawBackend;
  /** Whether VMs check the books before asking the kernel (openKvm's `precheck`). */
  readonly precheck: boolean;
  #system: SystemHandle;
  #closed = false;

  /** @hidden made by openKvm() */
  constructor(token: symbol, raw: RawBackend, fd: Handle, path: string, precheck: boolean, fallbackReason?: string) {
    checkToken(token, 'Kvm', 'openKvm()');
    this.raw = raw;
    this.backend = raw.kind;
    this.path = path;
    this.precheck = precheck;
    this.fallbackReason = fallbackReason;
    const system = (this.#system = new SystemHandle(raw, fd));
    try {
      this.apiVersion = raw.getApiVersion(fd);
    } catch (e) {
      raw.close(fd);
      throw e;
    }
    onKvmCollect(this, system);
  }

  /** The /dev/kvm fd (or simulated handle). A KvmError (EBADF) once this Kvm is closed. */
  get fd(): Handle {
    if (this.#closed) throw kvmError('EBADF', { syscall: 'ioctl' }, `${this.path} is closed`);
    return this.#system.fd;
  }
  /** Whether close() was called (VMs made by this Kvm stay usable). */
  get closed(): boolean {
    return this.#closed;
  }
  /** The host's page size in bytes. */
  get pageSize(): number {
    return this.raw.pageSize;
  }

  /**
   * KVM_CHECK_EXTENSION on /dev/kvm: the kernel's raw answer (0 for a capability it does not
   * know). `cap` must be an integer in the int32 range (TypeError, RangeError); EBADF once
   * closed.
   */
  checkExtension(cap: number): number {
    return this.raw.checkExtension(this.fd, toInt(cap, 'cap', -(2 ** 31), 2 ** 31 - 1));
  }

  /**
   * Typed capabilities, read on a VM of `vmType` (default 'default') because the answers
   * depend on the VM type. The VM is created and closed again here. Without `vmType`, when no
   * default VM can be created, they are read on /dev/kvm (then `scope` is 'system'); a
   * `vmType` the host cannot create is the kernel's KvmError (EINVAL), not a fallback. An
   * unknown type name is a RangeError.
   */
  capabilities(options?: { vmType?: VmTypeName | number }): Capabilities {
    const fd = this.fd;
    const opts = toOptions(options, 'capabilities options');
    const vmType = opts.vmType;
    const type = resolveVmType(vmType === undefined ? 'default' : vmType);
    let vmFd: Handle | undefined;
    try {
      vmFd = this.raw.createVm(fd, type);
    } catch (e) {
      if (!(e instanceof KvmError) || vmType !== undefined) throw e;
    }
    try {
      return readCapabilities(this.raw, fd, vmFd, vmFd === undefined ? 'system' : (vmType ?? 'default'));
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

  /**
   * KVM_CREATE_VM. The VM stays usable after this Kvm is closed. An unknown type name is a
   * RangeError; a type the host does not support is the kernel's KvmError (EINVAL).
   */
  createVm(options?: VmOptions): Vm {
    const opts = toOptions(options, 'VM options');
    const vmType = opts.type;
    const type = resolveVmType(vmType === undefined ? 'default' : vmType);
    const vmFd = this.raw.createVm(this.fd, type);
    this.#system.acquire();
    try {
      return new Vm(CREATE, this, this.raw, this.#system, vmFd, type, this.precheck);
    } catch (e) {
      this.raw.close(vmFd);
      this.#system.release();
      throw e;
    }
  }

  /** Closes the /dev/kvm handle (idempotent); it stays open underneath while a VM needs it. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    unregister(this);
    this.#system.release();
  }

  /** close(), for `using kvm = openKvm()`. */
  [Symbol.dispose](): void {
    this.close();
  }
}

/**
 * The KVM_CREATE_VM type number of a VM type: a name ('default', 'sw-protected', 'sev',
 * 'sev-es', 'snp', 'tdx') or a number in [0, 2^32 - 1], returned as given. An unknown name,
 * or a number out of range or not an integer, is a RangeError; any other value a TypeError.
 */
export function resolveVmType(type: unknown): number {
  if (typeof type === 'string') {
    if (!isVmTypeName(type)) throw new RangeError(`unknown VM type '${type}' (known: ${Object.keys(VmType).join(', ')})`);
    return VmType[type];
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
 * or KVM_GMEM_BACKEND) uses the kernel when the addon loads and the device opens, else the
 * simulator (Kvm.fallbackReason says why); 'simulated' uses the simulator.
 *
 * Options of the wrong type are a TypeError, an unknown backend a RangeError. With 'kvm', an
 * addon that cannot load is a KvmError (ELIBACC), and a device that cannot be opened the
 * kernel's KvmError (EACCES, ENOENT, ...) with what to do in its message.
 */
export function openKvm(opts?: OpenKvmOptions): Kvm {
  const options = toOptions(opts, 'openKvm options');
  const path = options.path === undefined ? '/dev/kvm' : options.path;
  if (typeof path !== 'string') throw new TypeError(`path must be a string, got ${typeName(path)}`);
  const precheck = toBool(options.precheck, 'precheck', true);
  const requested = options.backend === undefined ? ((process.env.KVM_GMEM_BACKEND || 'auto') as BackendName) : options.backend;
  if (typeof requested !== 'string') throw new TypeError(`backend must be a string, got ${typeName(requested)}`);
  if (!BACKENDS.includes(requested)) throw new RangeError(`backend must be one of ${BACKENDS.join(', ')}, got ${String(requested)}`);

  if (options.raw !== undefined) {
    // A raw backend is the backend: a backend name or a profile beside it would be ignored.
    if (options.backend !== undefined || options.profile !== undefined) {
      throw new TypeError(`raw is the backend itself: pass raw, or backend${options.profile !== undefined ? ' and profile' : ''}, not both (a SimBackend takes its profile when made)`);
    }
    if (typeof options.raw !== 'object' || options.raw === null) throw new TypeError(`raw must be a RawBackend, got ${typeName(options.raw)}`);
    return new Kvm(CREATE, options.raw, options.raw.open(path), path, precheck);
  }
  const simulated = (reason?: string) => {
    const source = options.profile ?? (process.env.KVM_GMEM_PROFILE || undefined);
    const sim = traced(new SimBackend(source === undefined ? defaultProfile : loadProfile(source)));
    return new Kvm(CREATE, sim, sim.open(path), path, precheck, reason);
  };
  if (requested === 'simulated') return simulated();
  let raw: RawBackend;
  try {
    raw = nativeBackend();
  } catch (e) {
    if (requested === 'kvm') throw e;
    return simulated(`no native addon: ${(e as Error).message}`);
  }
  try {
    return new Kvm(CREATE, raw, raw.open(path), path, precheck);
  } catch (e) {
    if (!(e instanceof KvmError)) throw e;
    if (requested === 'kvm') throw deviceError(e, path);
    return simulated(`${e.code}: ${path}`);
  }
}
