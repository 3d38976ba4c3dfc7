/**
 * What the simulated host is. A profile carries what the simulator needs to answer as a
 * given kernel would: the KVM_CHECK_EXTENSION answers on /dev/kvm and on a VM of each type,
 * and the answers that no capability reveals (whether KVM_SET_MEMORY_ATTRIBUTES exists, the
 * guest-physical address width, the user address limit, the pre-fault answer of a VM without
 * memslots). measureProfile() takes them from a real host through any RawBackend;
 * `kvm-gmem caps --json` prints one (also inside the lab, for each kernel the suite runs on),
 * and profiles/ holds those the project measured.
 */
import { KvmError, type ErrnoCode } from '../../base/errors.js';
import { Cap, Falloc, MapFlag, Prot, USER_ADDRESS_MAX, VmType, vmTypeName } from '../../base/uapi.js';
import type { Handle, RawBackend } from '../types.js';

/** KVM_CHECK_EXTENSION answers by capability number; a capability not listed answers 0. */
export type CapTable = Readonly<Record<number, number>>;

export interface SimProfile {
  /** Where it was measured ('debian 7.2.13+deb14-amd64', 'builtin'). */
  name: string;
  /** uname -r of the host, when measured on one. */
  release?: string | undefined;
  /** Answers on /dev/kvm ('system') and on a VM of each type the host creates (by type number). */
  caps: { system: CapTable; vm: Readonly<Record<number, CapTable>> };
  /** KVM_SET_MEMORY_ATTRIBUTES exists (CONFIG_KVM_GENERIC_MEMORY_ATTRIBUTES); ENOTTY otherwise. */
  memoryAttributesIoctl: boolean;
  /** Guest-physical address bits: a memslot must end below 2^bits (kvm_mmu_max_gfn()). */
  guestPhysAddrBits: number;
  /** Highest end of a user address range (access_ok): TASK_SIZE_MAX. */
  userAddressMax: bigint;
  /** KVM_GET_VCPU_MMAP_SIZE. */
  vcpuMmapSize: number;
  /**
   * KVM_PRE_FAULT_MEMORY on a default VM that never had a memslot, when the host cannot
   * pre-fault (no KVM_CAP_PRE_FAULT_MEMORY): the errno it gives then (the 6.18 PVM host:
   * ENOSPC; EOPNOTSUPP once a memslot exists).
   */
  preFaultWithoutSlots?: ErrnoCode | undefined;
  /** What binding a file range that another slot binds gives (6.18: EINVAL; 7.x: EEXIST);
   * absent where no VM type takes guest_memfd slots. */
  gmemBoundErrno?: ErrnoCode | undefined;
  /**
   * Where a guest_memfd slot's end beyond the MMU's reach (kvm_mmu_max_gfn) is refused,
   * relative to the guest_memfd checks: 'first' (before the fd is looked at), 'before-bind'
   * (after the fd checks, before the binding check), absent: after the binding (7.2: the
   * bind comes first; 7.3 checks the range before it).
   */
  maxGfnCheck?: 'first' | 'before-bind' | undefined;
  /**
   * 'loops' where KVM_PRE_FAULT_MEMORY on a vCPU whose MMU root a memslot deletion made
   * obsolete retries its fault until a signal (6.12: the root is replaced only by KVM_RUN);
   * the raw layer's watchdog turns that into EINTR. Absent where the kernel replaces the root.
   */
  preFaultStaleRoot?: 'loops' | undefined;
  /** true where KVM's anon inode fds (VM, vCPU, gmem) may be mapped PROT_EXEC (6.12);
   * absent where they are noexec (EPERM). */
  anonInodeExec?: boolean | undefined;
  /** false where fallocate does not know FALLOC_FL_WRITE_ZEROES (6.12: EOPNOTSUPP);
   * absent where it does. */
  fallocateWriteZeroes?: boolean | undefined;
}

/** Capability numbers a profile measures: every one up to here (the kernel's list ends near 250). */
export const MAX_PROBED_CAP = 320;

const bit = (t: number) => 1 << t;

/** VM types with private memory (kvm_arch_has_private_mem). */
export const PRIVATE_MEM_TYPES = bit(VmType['sw-protected']) | bit(VmType.snp) | bit(VmType.tdx);

/** The capability table of `scope`: a VM type number, or 'system'. */
export function capsOf(p: SimProfile, scope: number | 'system'): CapTable {
  return scope === 'system' ? p.caps.system : (p.caps.vm[scope] ?? {});
}

export function capOf(p: SimProfile, scope: number | 'system', cap: number): number {
  return capsOf(p, scope)[cap] ?? 0;
}

/**
 * The default simulated host: Linux 6.18 or later on x86-64 with KVM_X86_SW_PROTECTED_VM,
 * answering as the lab's sw-protected 7.2 kernel does (profiles/sw-protected-7.2.json: a
 * second binding of a file range is EEXIST, as since 7.x), except that it has no SMM address
 * space and the 52-bit guest-physical width of a large host.
 */
const common = {
  [Cap.USER_MEMORY]: 1, [Cap.NR_MEMSLOTS]: 32764, [Cap.READONLY_MEM]: 1, [Cap.USER_MEMORY2]: 1,
  [Cap.MEMORY_FAULT_INFO]: 1, [Cap.GUEST_MEMFD]: 1, [Cap.VM_TYPES]: bit(VmType.default) | bit(VmType['sw-protected']),
  [Cap.PRE_FAULT_MEMORY]: 1, [Cap.MAX_VCPUS]: 4096, [Cap.MAX_VCPU_ID]: 4096, [Cap.EXIT_HYPERCALL]: 1 << 12,
};
export const defaultProfile: SimProfile = {
  name: 'builtin: 6.18+ with KVM_X86_SW_PROTECTED_VM',
  caps: {
    system: { ...common, [Cap.MEMORY_ATTRIBUTES]: 8, [Cap.GUEST_MEMFD_FLAGS]: 3 },
    vm: {
      [VmType.default]: { ...common, [Cap.GUEST_MEMFD_FLAGS]: 3 },
      [VmType['sw-protected']]: { ...common, [Cap.MEMORY_ATTRIBUTES]: 8, [Cap.GUEST_MEMFD_FLAGS]: 1 },
    },
  },
  memoryAttributesIoctl: true,
  guestPhysAddrBits: 52,
  userAddressMax: USER_ADDRESS_MAX,
  vcpuMmapSize: 12288,
  gmemBoundErrno: 'EEXIST',
};

// ---- measuring a host -------------------------------------------------------------------

function codeOf(e: unknown): ErrnoCode | undefined {
  return (e as { code?: ErrnoCode })?.code;
}

/** Runs fn and returns undefined on success, else the errno code it threw. */
function outcome(fn: () => unknown): ErrnoCode | undefined {
  try {
    fn();
    return undefined;
  } catch (e) {
    const code = codeOf(e);
    if (!code) throw e;
    return code;
  }
}

function capTable(raw: RawBackend, fd: Handle): CapTable {
  const t: Record<number, number> = {};
  for (let cap = 0; cap <= MAX_PROBED_CAP; cap++) {
    const v = outcome(() => (t[cap] = raw.checkExtension(fd, cap)));
    if (v !== undefined || t[cap] === 0) delete t[cap];
  }
  return t;
}

/**
 * Measures the host behind `raw` (opened as `sysFd`): capabilities on /dev/kvm and on a VM of
 * each type, and the few answers capabilities do not give, by trying them (memslots are
 * added and deleted on a throwaway VM).
 */
export function measureProfile(raw: RawBackend, sysFd: Handle, name: string, release?: string): SimProfile {
  const system = capTable(raw, sysFd);
  const types = system[Cap.VM_TYPES] ?? bit(VmType.default);
  const vm: Record<number, CapTable> = {};
  for (let t = 0; t < 32; t++) {
    if (!(types & bit(t))) continue;
    const fd = raw.createVm(sysFd, t);
    try {
      vm[t] = capTable(raw, fd);
    } finally {
      raw.close(fd);
    }
  }
  const page = BigInt(raw.pageSize);
  const fd = raw.createVm(sysFd, VmType.default);
  try {
    const slot = (gpa: bigint, uaddr: bigint) =>
      outcome(() => {
        raw.setUserMemoryRegion(fd, { slot: 0, guestPhysAddr: gpa, memorySize: page, userspaceAddr: uaddr });
        raw.setUserMemoryRegion(fd, { slot: 0, guestPhysAddr: gpa, memorySize: 0 });
      });
    // Pre-fault first, while this VM never had a memslot.
    let preFaultWithoutSlots: ErrnoCode | undefined;
    if (!vm[VmType.default]?.[Cap.PRE_FAULT_MEMORY]) {
      const cpu = raw.createVcpu(fd, 0);
      try {
        preFaultWithoutSlots = outcome(() => raw.preFaultMemory(cpu, { gpa: 0, size: page }));
      } finally {
        raw.close(cpu);
      }
    }
    const preFaultStaleRoot = vm[VmType.default]?.[Cap.PRE_FAULT_MEMORY] ? measureStaleRoot(raw, sysFd, page) : undefined;
    // PROT_EXEC on a vCPU's kvm_run (an anon inode), and FALLOC_FL_WRITE_ZEROES on /dev/kvm
    // (a known mode reaches the not-a-regular-file check: ENODEV; an unknown one EOPNOTSUPP).
    const anonInodeExec = measureAnonInodeExec(raw, sysFd, fd);
    const fallocateWriteZeroes = outcome(() => raw.fallocate(sysFd, Falloc.WRITE_ZEROES, 0, page)) === 'EOPNOTSUPP' ? false : undefined;
    // The highest bit count b for which a page just below 2^b is accepted.
    let guestPhysAddrBits = 32;
    for (let b = 57; b > 32; b--) {
      if (slot((1n << BigInt(b)) - page, 0n) === undefined) {
        guestPhysAddrBits = b;
        break;
      }
    }
    // TASK_SIZE_MAX: 5-level paging, else 4-level.
    const userAddressMax = [(1n << 56n) - page, (1n << 47n) - page].find((end) => slot(0n, end - page) === undefined) ?? (1n << 47n) - page;
    const attrs = outcome(() => raw.setMemoryAttributes(fd, { address: 0, size: page, attributes: 0, flags: 1 }));
    const { gmemBoundErrno, maxGfnCheck } = measureGmemBound(raw, sysFd, vm, page, 1n << BigInt(guestPhysAddrBits));
    return {
      name,
      release,
      caps: { system, vm },
      memoryAttributesIoctl: attrs !== 'ENOTTY',
      guestPhysAddrBits,
      userAddressMax,
      vcpuMmapSize: raw.getVcpuMmapSize(sysFd),
      ...(preFaultWithoutSlots ? { preFaultWithoutSlots } : {}),
      ...(gmemBoundErrno ? { gmemBoundErrno } : {}),
      ...(maxGfnCheck ? { maxGfnCheck } : {}),
      ...(preFaultStaleRoot ? { preFaultStaleRoot } : {}),
      ...(anonInodeExec ? { anonInodeExec } : {}),
      ...(fallocateWriteZeroes === false ? { fallocateWriteZeroes } : {}),
    };
  } finally {
    raw.close(fd);
  }
}

/** Whether a vCPU's kvm_run area may be mapped PROT_READ | PROT_EXEC (anon inodes not noexec). */
function measureAnonInodeExec(raw: RawBackend, sysFd: Handle, vmFd: Handle): true | undefined {
  const cpu = raw.createVcpu(vmFd, 1);
  try {
    const m = raw.mmap(cpu, raw.getVcpuMmapSize(sysFd), 0, Prot.READ | Prot.EXEC, MapFlag.SHARED);
    raw.munmap(m);
    return true;
  } catch (e) {
    if (!(e instanceof KvmError)) throw e;
    return undefined;
  } finally {
    raw.close(cpu);
  }
}

/**
 * Whether pre-fault loops on an MMU root a memslot deletion made obsolete: a vCPU loads its
 * root with a pre-fault (ENOENT: no slot there), a slot is deleted, and the next pre-fault
 * either answers (ENOENT) or is interrupted by a short watchdog (EINTR: 'loops').
 */
function measureStaleRoot(raw: RawBackend, sysFd: Handle, page: bigint): 'loops' | undefined {
  const fd = raw.createVm(sysFd, VmType.default);
  try {
    raw.setUserMemoryRegion(fd, { slot: 0, guestPhysAddr: 0n, memorySize: page, userspaceAddr: 0n });
    const cpu = raw.createVcpu(fd, 0);
    try {
      outcome(() => raw.preFaultMemory(cpu, { gpa: 1n << 20n, size: page }));
      raw.setUserMemoryRegion(fd, { slot: 0, guestPhysAddr: 0n, memorySize: 0n });
      return outcome(() => raw.preFaultMemory(cpu, { gpa: 1n << 20n, size: page, watchdogMs: 300 })) === 'EINTR' ? 'loops' : undefined;
    } finally {
      raw.close(cpu);
    }
  } finally {
    raw.close(fd);
  }
}

/**
 * Binds one page of a guest_memfd twice, on the first VM type that takes gmem slots: the
 * second binding's errno. Then the same binding at `beyond` (past the MMU's reach), and one
 * there with an fd that is not open: which check comes first.
 */
function measureGmemBound(raw: RawBackend, sysFd: Handle, vm: Record<number, CapTable>, page: bigint, beyond: bigint): Pick<SimProfile, 'gmemBoundErrno' | 'maxGfnCheck'> {
  const type = Object.keys(vm).map(Number).find((t) => vm[t]![Cap.GUEST_MEMFD]);
  if (type === undefined) return {};
  const fd = raw.createVm(sysFd, type);
  let gmem: Handle | undefined;
  try {
    gmem = raw.createGuestMemfd(fd, page, 0);
    const bind = (slot: number, gpa: bigint, guestMemfd: number = gmem!) => () =>
      raw.setUserMemoryRegion2(fd, { slot, flags: 4, guestPhysAddr: gpa, memorySize: page, guestMemfd, guestMemfdOffset: 0 });
    if (outcome(bind(0, 0n)) !== undefined) return {};
    const gmemBoundErrno = outcome(bind(1, page));
    const badFdBeyond = outcome(bind(2, beyond, 0x7fffffff));
    const boundBeyond = outcome(bind(3, beyond));
    const maxGfnCheck = badFdBeyond === 'EINVAL' ? 'first' : boundBeyond === 'EINVAL' && gmemBoundErrno !== 'EINVAL' ? 'before-bind' : undefined;
    return { gmemBoundErrno, ...(maxGfnCheck ? { maxGfnCheck } : {}) };
  } finally {
    if (gmem !== undefined) raw.close(gmem);
    raw.close(fd);
  }
}

// ---- JSON -------------------------------------------------------------------------------

/** The profile as JSON data: VM types by name, bigints as hex strings. */
export function profileToJSON(p: SimProfile): object {
  const vm: Record<string, CapTable> = {};
  for (const [t, table] of Object.entries(p.caps.vm)) vm[vmTypeName(Number(t)) ?? t] = table;
  return {
    name: p.name,
    ...(p.release ? { release: p.release } : {}),
    caps: { system: p.caps.system, vm },
    memoryAttributesIoctl: p.memoryAttributesIoctl,
    guestPhysAddrBits: p.guestPhysAddrBits,
    userAddressMax: `0x${p.userAddressMax.toString(16)}`,
    vcpuMmapSize: p.vcpuMmapSize,
    ...(p.preFaultWithoutSlots ? { preFaultWithoutSlots: p.preFaultWithoutSlots } : {}),
    ...(p.gmemBoundErrno ? { gmemBoundErrno: p.gmemBoundErrno } : {}),
    ...(p.maxGfnCheck ? { maxGfnCheck: p.maxGfnCheck } : {}),
    ...(p.preFaultStaleRoot ? { preFaultStaleRoot: p.preFaultStaleRoot } : {}),
    ...(p.anonInodeExec ? { anonInodeExec: true } : {}),
    ...(p.fallocateWriteZeroes === false ? { fallocateWriteZeroes: false } : {}),
  };
}

/**
 * A profile from JSON data (profileToJSON's output, or `kvm-gmem caps --json` output, which
 * holds one under "profile"). Throws a TypeError naming what is missing or malformed.
 */
export function profileFromJSON(data: unknown): SimProfile {
  const o = (data && typeof data === 'object' && 'profile' in data ? (data as { profile: unknown }).profile : data) as Record<string, unknown>;
  const need = (ok: boolean, what: string) => {
    if (!ok) throw new TypeError(`not a kvm-gmem profile: ${what}`);
  };
  need(!!o && typeof o === 'object', 'expected an object');
  const caps = o.caps as { system?: unknown; vm?: Record<string, unknown> } | undefined;
  need(!!caps && typeof caps.system === 'object' && typeof caps.vm === 'object', 'caps.system and caps.vm are required');
  const table = (t: unknown, where: string): CapTable => {
    need(!!t && typeof t === 'object', `${where} must be an object`);
    const out: Record<number, number> = {};
    for (const [k, v] of Object.entries(t as object)) {
      need(/^\d+$/.test(k) && Number.isInteger(v), `${where}.${k} must map a capability number to an integer`);
      out[Number(k)] = v as number;
    }
    return out;
  };
  const vm: Record<number, CapTable> = {};
  for (const [k, t] of Object.entries(caps!.vm!)) {
    const type = /^\d+$/.test(k) ? Number(k) : (VmType as Record<string, number>)[k];
    need(type !== undefined && Object.hasOwn(VmType, k) || /^\d+$/.test(k), `unknown VM type '${k}' in caps.vm`);
    vm[type!] = table(t, `caps.vm.${k}`);
  }
  need(typeof o.memoryAttributesIoctl === 'boolean', 'memoryAttributesIoctl must be a boolean');
  need(Number.isInteger(o.guestPhysAddrBits) && (o.guestPhysAddrBits as number) >= 32 && (o.guestPhysAddrBits as number) <= 64, 'guestPhysAddrBits must be an integer in [32, 64]');
  need(typeof o.userAddressMax === 'string' && /^0x[0-9a-f]+$/i.test(o.userAddressMax), 'userAddressMax must be a hex string');
  need(Number.isInteger(o.vcpuMmapSize), 'vcpuMmapSize must be an integer');
  return {
    name: typeof o.name === 'string' ? o.name : 'profile',
    release: typeof o.release === 'string' ? o.release : undefined,
    caps: { system: table(caps!.system, 'caps.system'), vm },
    memoryAttributesIoctl: o.memoryAttributesIoctl as boolean,
    guestPhysAddrBits: o.guestPhysAddrBits as number,
    userAddressMax: BigInt(o.userAddressMax as string),
    vcpuMmapSize: o.vcpuMmapSize as number,
    preFaultWithoutSlots: typeof o.preFaultWithoutSlots === 'string' ? (o.preFaultWithoutSlots as ErrnoCode) : undefined,
    gmemBoundErrno: typeof o.gmemBoundErrno === 'string' ? (o.gmemBoundErrno as ErrnoCode) : undefined,
    maxGfnCheck: o.maxGfnCheck === 'first' || o.maxGfnCheck === 'before-bind' ? o.maxGfnCheck : undefined,
    preFaultStaleRoot: o.preFaultStaleRoot === 'loops' ? 'loops' : undefined,
    anonInodeExec: o.anonInodeExec === true ? true : undefined,
    fallocateWriteZeroes: o.fallocateWriteZeroes === false ? false : undefined,
  };
}
