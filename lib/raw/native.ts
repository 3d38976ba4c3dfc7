/**
 * Loads the native addon and exposes it as a RawBackend. The addon's functions already have
 * the RawBackend shapes (and need no `this`), so the backend is the addon's own functions:
 * no wrapper on the hot path.
 *
 * Where the addon comes from, in order: KVM_GMEM_ADDON (a path to a .node file, alone), else
 * a local build (node-gyp's build/Release and build/Debug, cmake-js's build-cmake/...), then
 * the package's prebuild (prebuilds/linux-x64/kvm_gmem.napi.node).
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { markAsUntransferable } from 'node:worker_threads';
import { KvmError } from '../base/errors.js';
import { traced } from './trace.js';
import type { RawBackend, RawMapping, RawRegion2 } from './types.js';
import { toInt, toU64, typeName, type U64 } from '../base/args.js';

type Addon = Omit<RawBackend, 'kind' | 'munmap' | 'mmap' | 'madvise' | 'run' | 'setUserMemoryRegion2' | 'setUserMemoryRegions2'> & {
  setUserMemoryRegion2(fd: number, slot: unknown, flags: unknown, guestPhysAddr: unknown, memorySize: unknown, userspaceAddr: unknown, guestMemfdOffset: unknown, guestMemfd: unknown): void;
  setUserMemoryRegions2(fd: number, records: BigUint64Array): void;
  setErrorClass(ctor: typeof KvmError): void;
  mmap(fd: number, length: U64, offset: U64, prot: number, flags: number): number;
  mappingBuffer(address: U64, offset?: number, length?: number): ArrayBuffer;
  munmap(address: U64): void;
  madvise(address: U64, offset: U64, length: U64, advice: number): void;
  run(vcpuFd: number, runArea: U64): { done: Promise<number>; token: object };
  kick(token: object): void;
};

/** A native mapping: its ArrayBuffer is made when first asked for (many mappings, such as a
 * memslot's host memory, are never touched from JavaScript). It remembers being unmapped, so
 * a second munmap cannot reach a later mapping that the kernel put at the same address. */
class NativeMapping implements RawMapping {
  #buffer: ArrayBuffer | undefined;
  #unmapped = false;
  #bigAddress: bigint | undefined;
  constructor(
    // The addon gives a number (user addresses are below 2^47): no BigInt per mmap unless asked.
    readonly addr: number,
    // As the caller gave it (a number or a bigint): no BigInt made per mmap.
    private readonly length: U64,
    private readonly addon: Addon,
  ) {}
  get address(): bigint {
    return (this.#bigAddress ??= BigInt(this.addr));
  }
  view(offset: number, length: number): Uint8Array {
    this.#live();
    if (this.length <= 2 ** 32) {
      if (!this.#buffer) markAsUntransferable((this.#buffer = this.addon.mappingBuffer(this.addr)));
      return new Uint8Array(this.#buffer, offset, length);
    }
    const window = this.addon.mappingBuffer(this.addr, offset, length);
    markAsUntransferable(window);
    return new Uint8Array(window);
  }
  unmap(): void {
    if (this.#unmapped) return;
    this.addon.munmap(this.addr);
    this.#unmapped = true;
  }
  #live(): void {
    if (this.#unmapped) throw new KvmError('munmap: this mapping is unmapped (EBADF)', { code: 'EBADF', syscall: 'munmap' });
  }
}

const nativeMapping = (m: RawMapping): NativeMapping => {
  if (!(m instanceof NativeMapping)) throw new TypeError('expected a mapping returned by mmap()');
  return m;
};

const require = createRequire(import.meta.url);
/** Package root: this file is lib/raw/native.ts in the sources and dist/raw/native.js built. */
export const packageRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');

/**
 * The .node files loadAddon() tries, in order: $KVM_GMEM_ADDON alone when set (resolved against
 * the working directory), else the package's build/Release, build/Debug, build-cmake/Release
 * and build-cmake/Debug builds, then its prebuild for this platform and architecture.
 */
export function addonCandidates(env: NodeJS.ProcessEnv = process.env): string[] {
  if (env.KVM_GMEM_ADDON) return [path.resolve(env.KVM_GMEM_ADDON)];
  const built = ['build/Release', 'build/Debug', 'build-cmake/Release', 'build-cmake/Debug'].map((d) => path.join(packageRoot, d, 'kvm_gmem.node'));
  return [...built, path.join(packageRoot, 'prebuilds', `${process.platform}-${process.arch}`, 'kvm_gmem.napi.node')];
}

let cached: { addon?: Addon; error?: Error } | undefined;

/** The addon, loaded once per environment; throws a KvmError (ELIBACC) listing what was tried. */
export function loadAddon(): Addon {
  cached ??= tryLoad();
  if (cached.error) throw cached.error;
  return cached.addon!;
}

function tryLoad(): { addon?: Addon; error?: Error } {
  const tried: string[] = [];
  const fail = (message: string) => ({ error: new KvmError(message, { code: 'ELIBACC', syscall: 'dlopen' }) });
  if (process.platform !== 'linux' || process.arch !== 'x64') {
    return fail(`kvm-gmem: the native addon is for Linux x86-64 only (this is ${process.platform}-${process.arch}); backend 'simulated' works here`);
  }
  for (const file of addonCandidates()) {
    if (!existsSync(file)) {
      tried.push(`${file}: not found`);
      continue;
    }
    try {
      const addon = require(file) as Addon;
      addon.setErrorClass(KvmError);
      return { addon };
    } catch (e) {
      tried.push(`${file}: ${(e as Error).message}`);
    }
  }
  const hint = 'build it with `npm rebuild kvm-gmem` (in this repository: `npm run build:gyp` or `npm run build:cmake`), or set KVM_GMEM_ADDON';
  return fail(`kvm-gmem: cannot load the native addon; tried: ${tried.join('; ')}. ${hint}`);
}

/**
 * Regions as the addon's batch call reads them: six u64 words each (slot | flags << 32, gpa,
 * size, userspace_addr, guest_memfd_offset, guest_memfd), every field checked first as the
 * single call checks it (a bad one is a TypeError or RangeError before any ioctl).
 */
function packRegions(regions: readonly RawRegion2[]): BigUint64Array {
  if (!Array.isArray(regions)) throw new TypeError(`regions must be an array, got ${typeName(regions)}`);
  const words = new BigUint64Array(6 * regions.length);
  const halves = new Uint32Array(words.buffer);
  for (let i = 0; i < regions.length; i++) {
    const r: unknown = regions[i];
    if (typeof r !== 'object' || r === null) throw new TypeError(`regions[${i}] must be an object, got ${typeName(r)}`);
    const { slot, flags, guestPhysAddr, memorySize, userspaceAddr, guestMemfdOffset, guestMemfd } = r as RawRegion2;
    const w = 6 * i;
    halves[2 * w] = toInt(slot, 'slot', 0, 2 ** 32 - 1);
    halves[2 * w + 1] = flags === undefined ? 0 : toInt(flags, 'flags', 0, 2 ** 32 - 1);
    words[w + 1] = toU64(guestPhysAddr, 'guestPhysAddr');
    words[w + 2] = toU64(memorySize, 'memorySize');
    if (userspaceAddr !== undefined) words[w + 3] = toU64(userspaceAddr, 'userspaceAddr');
    if (guestMemfdOffset !== undefined) words[w + 4] = toU64(guestMemfdOffset, 'guestMemfdOffset');
    if (guestMemfd !== undefined) halves[2 * (w + 5)] = toInt(guestMemfd, 'guestMemfd', 0, 2 ** 32 - 1);
  }
  return words;
}

let backend: RawBackend | undefined;

/** The native RawBackend (one per environment). */
export function nativeBackend(): RawBackend {
  if (backend) return backend;
  const a = loadAddon();
  // An object literal, so V8 keeps it in fast (shaped) mode: built up property by property
  // it turns into a dictionary and every call pays for a hash lookup.
  const b: RawBackend = {
    kind: 'kvm',
    pageSize: a.pageSize,
    open: a.open,
    close: a.close,
    getApiVersion: a.getApiVersion,
    checkExtension: a.checkExtension,
    createVm: a.createVm,
    getVcpuMmapSize: a.getVcpuMmapSize,
    createVcpu: a.createVcpu,
    createGuestMemfd: a.createGuestMemfd,
    setUserMemoryRegion: a.setUserMemoryRegion,
    setUserMemoryRegion2: (fd, region) => {
      // Flat for the addon (it reads no properties: see addon.cc), in the struct's order.
      if (typeof region !== 'object' || region === null) throw new TypeError('region must be an object');
      const { slot, flags, guestPhysAddr, memorySize, userspaceAddr, guestMemfdOffset, guestMemfd } = region;
      a.setUserMemoryRegion2(fd, slot, flags, guestPhysAddr, memorySize, userspaceAddr, guestMemfdOffset, guestMemfd);
    },
    setUserMemoryRegions2: (fd, regions) => a.setUserMemoryRegions2(fd, packRegions(regions)),
    enableCap: a.enableCap,
    setMemoryAttributes: a.setMemoryAttributes,
    preFaultMemory: a.preFaultMemory,
    fallocate: a.fallocate,
    fstat: a.fstat,
    mmap: (fd, length, offset, prot, flags) => new NativeMapping(a.mmap(fd, length, offset, prot, flags), length, a),
    munmap: (m) => nativeMapping(m).unmap(),
    madvise: (m, offset, length, advice) => a.madvise(nativeMapping(m).addr, offset, length, advice),
    memfdCreate: a.memfdCreate,
    ftruncate: a.ftruncate,
    getRegs: a.getRegs,
    setRegs: a.setRegs,
    getSregs: a.getSregs,
    setSregs: a.setSregs,
    run: (fd, area) => {
      const r = a.run(fd, area.address);
      return { done: r.done, kick: () => a.kick(r.token) };
    },
  };
  backend = traced(b);
  return backend;
}
