/**
 * The kernel selftests' guest_memfd cases as data: name, required capabilities, body. The
 * vitest suite and `kvm-gmem selftest` run these very cases, on any backend; a case whose
 * requirement the backend lacks is skipped with the requirement named. Names are the
 * selftest functions they follow (tools/testing/selftests/kvm/guest_memfd_test.c,
 * set_memory_region_test.c, x86/private_mem_conversions_test.c, x86/private_mem_kvm_exits_test.c,
 * pre_fault_memory_test.c).
 */
import { readSync, writeSync } from 'node:fs';
import type { Capabilities } from '../capabilities.js';
import type { Kvm } from '../kvm.js';
import { Cap, Falloc, KVM_USER_MEM_SLOTS, MapFlag, MemFlag, MemoryAttribute, Prot } from '../base/uapi.js';
import type { Vm } from '../vm.js';
import { check, equal, fails, throwsType } from './assert.js';
import { readThenWrite } from './programs.js';

export type Requirement = 'guest_memfd' | 'mmap' | 'init_shared' | 'sw_protected_vm' | 'guest_execution' | 'host_fd' | 'pre_fault_memory';

export interface SelftestContext {
  kvm: Kvm;
  caps: Capabilities;
}

export interface SelftestCase {
  name: string;
  /** The selftest source it follows. */
  source: string;
  requires: Requirement[];
  run(ctx: SelftestContext): void | Promise<void>;
}

/**
 * Why `requirement` is not met on this backend (undefined when it is). `caps` are
 * kvm.capabilities(): read on a default VM, the VM the guest_memfd cases create, because the
 * answer depends on the VM (Linux 6.12 answers KVM_CAP_GUEST_MEMFD 1 on /dev/kvm but 0 on a
 * default VM, whose KVM_MEM_GUEST_MEMFD slots it refuses). Answers read on /dev/kvm alone
 * (scope 'system': no default VM could be created) do not count as the VM's.
 */
export function missing(requirement: Requirement, kvm: Kvm, caps: Capabilities): string | undefined {
  const onVm = caps.scope !== 'system';
  switch (requirement) {
    case 'guest_memfd':
      return onVm && caps.guestMemfd ? undefined : 'requires KVM_CAP_GUEST_MEMFD on a default VM';
    case 'mmap':
      return onVm && caps.guestMemfdFlags.mmap ? undefined : 'requires GUEST_MEMFD_FLAG_MMAP on a default VM';
    case 'init_shared':
      return onVm && caps.guestMemfdFlags.initShared ? undefined : 'requires GUEST_MEMFD_FLAG_INIT_SHARED on a default VM';
    case 'sw_protected_vm':
      return caps.vmTypes.includes('sw-protected') ? undefined : 'requires KVM_X86_SW_PROTECTED_VM';
    case 'guest_execution':
      return kvm.backend === 'kvm' ? undefined : 'requires guest execution (the simulator cannot run guest code; needs /dev/kvm)';
    case 'host_fd':
      return kvm.backend === 'kvm' ? undefined : 'requires a real file descriptor (needs /dev/kvm)';
    case 'pre_fault_memory':
      return caps.preFaultMemory ? undefined : 'requires KVM_CAP_PRE_FAULT_MEMORY';
  }
}

export function skipReason(c: SelftestCase, kvm: Kvm, caps: Capabilities): string | undefined {
  for (const r of c.requires) {
    const why = missing(r, kvm, caps);
    if (why) return why;
  }
  return undefined;
}

const MiB = 1n << 20n;

function page(kvm: Kvm): bigint {
  return BigInt(kvm.pageSize);
}

const cases: SelftestCase[] = [];
const gmemTest = (name: string, requires: Requirement[], run: SelftestCase['run']) =>
  cases.push({ name, source: 'guest_memfd_test.c', requires: ['guest_memfd', ...requires], run });

gmemTest('test_file_read_write', ['host_fd'], ({ kvm }) => {
  using vm = kvm.createVm();
  using g = vm.createGuestMemfd({ size: page(kvm) });
  const buf = Buffer.alloc(16);
  fails(() => readSync(g.fd, buf, 0, 16, null), 'EINVAL', 'read');
  fails(() => writeSync(g.fd, buf, 0, 16, null), 'EINVAL', 'write');
  fails(() => readSync(g.fd, buf, 0, 16, 0), 'ESPIPE', 'pread');
  fails(() => writeSync(g.fd, buf, 0, 16, 0), 'ESPIPE', 'pwrite');
});

gmemTest('test_mmap_cow', ['mmap'], ({ kvm }) => {
  using vm = kvm.createVm();
  using g = vm.createGuestMemfd({ size: page(kvm), mmap: true });
  fails(() => kvm.raw.mmap(g.fd, page(kvm), 0, Prot.READ | Prot.WRITE, MapFlag.PRIVATE), 'EINVAL', 'MAP_PRIVATE mmap');
});

gmemTest('test_mmap_supported', ['mmap', 'init_shared'], ({ kvm }) => {
  const p = page(kvm);
  using vm = kvm.createVm();
  using g = vm.createGuestMemfd({ size: 4n * p, mmap: true, initShared: true });
  using m = g.map();
  m.bytes.fill(0xaa);
  check(m.bytes.every((b) => b === 0xaa), 'the mapping reads back what was written');
  g.punchHole(0, p);
  check(m.view(0, p).every((b) => b === 0), 'the punched page reads zero');
  check(m.view(p, 3n * p).every((b) => b === 0xaa), 'the other pages keep their data');
  m.bytes.fill(0x55);
  check(m.bytes.every((b) => b === 0x55), 'the punched page can be written again');
});

gmemTest('test_fault_overflow', ['mmap', 'init_shared'], ({ kvm }) => {
  // The C test maps 4x the file and expects SIGBUS past EOF; the library never hands out
  // such a view: a Mapping past EOF is refused before mmap.
  using vm = kvm.createVm();
  using g = vm.createGuestMemfd({ size: 4n * page(kvm), mmap: true, initShared: true });
  throwsType(() => g.map({ length: 16n * page(kvm) }), RangeError, 'a mapping past EOF');
});

gmemTest('test_fault_private', ['mmap'], ({ kvm }) => {
  // Without INIT_SHARED every host access would SIGBUS; the library refuses the view (EFAULT).
  using vm = kvm.createVm();
  using g = vm.createGuestMemfd({ size: page(kvm), mmap: true });
  fails(() => g.map(), 'EFAULT', 'a view of private pages');
});

gmemTest('test_mmap_not_supported', [], ({ kvm }) => {
  using vm = kvm.createVm();
  using g = vm.createGuestMemfd({ size: 2n * page(kvm) });
  fails(() => g.map({ length: page(kvm) }), 'ENODEV', 'mmap of one page');
  fails(() => g.map(), 'ENODEV', 'mmap of the whole file');
});

gmemTest('test_file_size', [], ({ kvm }) => {
  using vm = kvm.createVm();
  using g = vm.createGuestMemfd({ size: 4n * page(kvm) });
  const st = g.stat();
  equal(st.size, 4n * page(kvm), 'st_size');
  equal(st.blksize, kvm.pageSize, 'st_blksize');
});

gmemTest('test_fallocate', [], ({ kvm }) => {
  const p = page(kvm);
  const size = 4n * p;
  using vm = kvm.createVm();
  using g = vm.createGuestMemfd({ size });
  const f = (mode: number, off: bigint, len: bigint) => () => kvm.raw.fallocate(g.fd, mode, off, len);
  const K = Falloc.KEEP_SIZE;
  const P = Falloc.PUNCH_HOLE | Falloc.KEEP_SIZE;
  f(K, 0n, size)();
  fails(f(P, p - 1n, p), 'EINVAL', 'punch at an unaligned offset');
  fails(f(K, size, p), 'EINVAL', 'allocate at EOF');
  fails(f(K, size + p, p), 'EINVAL', 'allocate after EOF');
  f(P, size, p)();
  f(P, size + p, p)(); // punch at/after EOF succeeds
  fails(f(P, 0n, p - 1n), 'EINVAL', 'punch an unaligned length');
  f(P, 0n, p)();
  f(K, 0n, size)();
});

gmemTest('test_invalid_punch_hole', [], ({ kvm }) => {
  const p = page(kvm);
  using vm = kvm.createVm();
  using g = vm.createGuestMemfd({ size: 4n * p });
  const combos: [bigint, bigint][] = [[0n, 1n], [0n, p - 1n], [0n, p + 1n], [1n, 1n], [1n, p - 1n], [1n, p], [1n, p + 1n], [p, 1n], [p, p - 1n], [p, p + 1n]];
  for (const [off, len] of combos) fails(() => g.punchHole(off, len), 'EINVAL', `punch [${off}, +${len})`);
});

gmemTest('test_create_guest_memfd_invalid_sizes', [], ({ kvm }) => {
  using vm = kvm.createVm();
  for (let size = 1n; size < page(kvm); size++) fails(() => vm.createGuestMemfd({ size }), 'EINVAL', `size ${size}`);
});

gmemTest('test_create_guest_memfd_multiple', [], ({ kvm }) => {
  using vm = kvm.createVm();
  using a = vm.createGuestMemfd({ size: page(kvm) });
  using b = vm.createGuestMemfd({ size: 2n * page(kvm) });
  equal(a.stat().size, page(kvm), 'first size');
  equal(b.stat().size, 2n * page(kvm), 'second size');
  check(a.stat().ino !== b.stat().ino, 'distinct inodes');
});

gmemTest('test_guest_memfd_flags', [], ({ kvm }) => {
  using vm = kvm.createVm();
  const supported = BigInt(vm.checkExtension(Cap.GUEST_MEMFD_FLAGS));
  for (let bit = 0n; bit < 64n; bit++) {
    const flags = 1n << bit;
    if (supported & flags) vm.createGuestMemfd({ size: page(kvm), flags }).close();
    else fails(() => vm.createGuestMemfd({ size: page(kvm), flags }), 'EINVAL', `flag bit ${bit}`);
  }
});

gmemTest('test_guest_memfd_guest', ['mmap', 'init_shared', 'guest_execution'], async ({ kvm }) => {
  // One page of gmem (MMAP | INIT_SHARED) as a slot, host-written 0xaa; the guest reads it
  // and writes 0xff; the host sees 0xff. (Real-mode guest: the page sits below 1 MiB.)
  const p = page(kvm);
  using vm = kvm.createVm();
  using code = vm.createGuestMemfd({ size: p, mmap: true, initShared: true });
  using data = vm.createGuestMemfd({ size: p, mmap: true, initShared: true });
  using s0 = vm.memslots.add({ slot: 0, guestPhysAddr: 0x1000n, size: p, guestMemfd: code });
  using s1 = vm.memslots.add({ slot: 1, guestPhysAddr: 0x8000n, size: p, guestMemfd: data });
  using dm = data.map();
  dm.bytes.fill(0xaa);
  vm.memory.write(0x1000n, readThenWrite(0x8000, 0x8001, 0xff));
  using cpu = vm.createVcpu(0);
  cpu.setSregs({ cs: { base: 0n, selector: 0 }, ds: { base: 0n, selector: 0 } });
  cpu.setRegs({ rip: 0x1000n, rflags: 2n });
  const io = await cpu.run({ timeoutMs: 5000 });
  check(io.reason === 'io' && io.data[0] === 0xaa, `the guest read 0xaa (exit: ${io.reason})`);
  equal((await cpu.run({ timeoutMs: 5000 })).reason, 'hlt', 'exit');
  equal(dm.bytes[1], 0xff, 'the byte the guest wrote');
  check(!s0.deleted && !s1.deleted, 'slots stay');
});

// ---- set_memory_region_test.c --------------------------------------------------------

const regionTest = (name: string, requires: Requirement[], run: SelftestCase['run']) =>
  cases.push({ name, source: 'set_memory_region_test.c', requires, run });

regionTest('test_invalid_memory_region_flags', [], ({ kvm }) => {
  using vm = kvm.createVm();
  const p = page(kvm);
  const supported = MemFlag.LOG_DIRTY_PAGES | (vm.capabilities().readonlyMem ? MemFlag.READONLY : 0) | MemFlag.GUEST_MEMFD;
  for (let bit = 0; bit < 32; bit++) {
    const flag = (1 << bit) >>> 0;
    if (flag & supported) continue;
    fails(() => kvm.raw.setUserMemoryRegion(vm.fd, { slot: 0, flags: flag, guestPhysAddr: 0, memorySize: p }), 'EINVAL', `v1 flag bit ${bit}`);
    fails(() => kvm.raw.setUserMemoryRegion2(vm.fd, { slot: 0, flags: flag, guestPhysAddr: 0, memorySize: p }), 'EINVAL', `v2 flag bit ${bit}`);
  }
  fails(() => kvm.raw.setUserMemoryRegion(vm.fd, { slot: 0, flags: MemFlag.GUEST_MEMFD, guestPhysAddr: 0, memorySize: p }), 'EINVAL', 'GUEST_MEMFD through v1');
  using g = vm.createGuestMemfd({ size: p });
  fails(() => vm.memslots.add({ guestPhysAddr: 0n, size: p, guestMemfd: g, logDirtyPages: true }), 'EINVAL', 'GUEST_MEMFD | LOG_DIRTY_PAGES');
});

regionTest('test_add_max_memory_regions', ['guest_memfd'], ({ kvm }) => {
  using vm = kvm.createVm();
  const p = page(kvm);
  const max = vm.checkExtension(Cap.NR_MEMSLOTS);
  equal(max, KVM_USER_MEM_SLOTS, 'KVM_CAP_NR_MEMSLOTS');
  using g = vm.createGuestMemfd({ size: BigInt(max) * p });
  for (let i = 0; i < max; i++) vm.memslots.add({ slot: i, guestPhysAddr: BigInt(i) * p, size: p, guestMemfd: g, guestMemfdOffset: BigInt(i) * p });
  fails(() => vm.memslots.add({ slot: max, guestPhysAddr: BigInt(max) * p, size: p, guestMemfd: g }), 'EINVAL', `slot ${max}`);
  // The VM's end frees its slots, as kvm_vm_free() does in the kernel's test (deleting 32,764
  // slots one by one is the kernel's slowest memslot path).
});

function privateVm(kvm: Kvm): Vm {
  return kvm.createVm({ type: 'sw-protected' });
}

regionTest('test_add_private_memory_region', ['guest_memfd', 'sw_protected_vm'], ({ kvm }) => {
  const p = page(kvm);
  using vm = privateVm(kvm);
  const bind = (fd: number, off = 0n) => () =>
    kvm.raw.setUserMemoryRegion2(vm.fd, { slot: 0, flags: MemFlag.GUEST_MEMFD, guestPhysAddr: 0, memorySize: MiB, guestMemfd: fd, guestMemfdOffset: off });
  fails(bind(kvm.fd), 'EINVAL', '/dev/kvm as guest_memfd');
  fails(bind(vm.fd), 'EINVAL', 'the VM fd as guest_memfd');
  using other = privateVm(kvm);
  using foreign = other.createGuestMemfd({ size: MiB });
  fails(bind(foreign.fd), 'EINVAL', "another VM's guest_memfd");
  using g = vm.createGuestMemfd({ size: MiB });
  for (const off of [1n, p / 2n, p - 1n]) fails(bind(g.fd, off), 'EINVAL', `offset ${off}`);
  using s = vm.memslots.add({ guestPhysAddr: 0n, size: MiB, guestMemfd: g });
  check(!s.deleted, 'a valid binding');
});

regionTest('test_add_overlapping_private_memory_regions', ['guest_memfd', 'sw_protected_vm'], ({ kvm }) => {
  const SIZE = 2n * MiB;
  const GPA = 1n << 30n;
  using vm = privateVm(kvm);
  using g = vm.createGuestMemfd({ size: 4n * SIZE });
  const a = vm.memslots.add({ guestPhysAddr: GPA, size: 2n * SIZE, guestMemfd: g, guestMemfdOffset: 0n });
  using b = vm.memslots.add({ guestPhysAddr: GPA * 2n, size: 2n * SIZE, guestMemfd: g, guestMemfdOffset: 2n * SIZE });
  a.delete();
  fails(() => vm.memslots.add({ guestPhysAddr: GPA * 2n - SIZE, size: 2n * SIZE, guestMemfd: g, guestMemfdOffset: 0n }), 'EEXIST', 'overlapping the front');
  fails(() => vm.memslots.add({ guestPhysAddr: GPA * 2n + SIZE, size: 2n * SIZE, guestMemfd: g, guestMemfdOffset: 0n }), 'EEXIST', 'overlapping the back');
  check(!b.deleted, 'the remaining slot');
});

// ---- x86/private_mem_conversions_test.c (host side) ----------------------------------

cases.push({
  name: 'test_mem_conversions',
  source: 'x86/private_mem_conversions_test.c',
  requires: ['guest_memfd', 'sw_protected_vm'],
  run: ({ kvm }) => {
    // The host side of guest_test_explicit_conversion: for each (offset, size) the range is
    // converted to private and back while the books follow, and conversions of sub-ranges
    // split and re-merge the attribute ranges. Then the gmem outlives the VM fd.
    const p = page(kvm);
    const PRIVATE = MemoryAttribute.PRIVATE;
    const vm = privateVm(kvm);
    const g = vm.createGuestMemfd({ size: 4n * MiB });
    const base = 1n << 32n;
    const slots = [0n, 1n].map((i) => vm.memslots.add({ guestPhysAddr: base + i * 2n * MiB, size: 2n * MiB, guestMemfd: g, guestMemfdOffset: i * 2n * MiB }));
    for (const [off, size] of [[0n, p], [0n, 2n * MiB], [p, p], [p, 2n * MiB], [2n * MiB, p]] as const) {
      vm.setPrivate(base + off, size);
      equal(vm.attributes.ranges(), [{ start: base + off, end: base + off + size, attributes: PRIVATE }], `private [${off}, +${size})`);
      g.allocate(off, size);
      for (let o = off + p; o < off + size; o += 2n * p) vm.setShared(base + o, p); // odd pages back to shared
      check(vm.attributes.count === Number((size / p + 1n) / 2n), `odd pages split the range (${vm.attributes.count} ranges)`);
      vm.setShared(base + off, size);
      equal(vm.attributes.ranges(), [], 'all shared again');
      g.punchHole(off, size);
    }
    for (const s of slots) s.delete();
    // kvm_vm_free: the VM fd goes, the gmem keeps working (it holds the VM).
    kvm.raw.close(vm.fd);
    kvm.raw.fallocate(g.fd, Falloc.KEEP_SIZE | Falloc.PUNCH_HOLE, 0, 4n * MiB);
    kvm.raw.fallocate(g.fd, Falloc.KEEP_SIZE, 0, 4n * MiB);
    g.close();
  },
});

// ---- x86/private_mem_kvm_exits_test.c ------------------------------------------------

cases.push({
  name: 'test_private_access_memslot_not_private',
  source: 'x86/private_mem_kvm_exits_test.c',
  requires: ['sw_protected_vm', 'guest_execution'],
  run: async ({ kvm }) => {
    // A private gfn in a slot without gmem: the access exits with a private memory fault.
    const p = page(kvm);
    using vm = privateVm(kvm);
    using other = kvm.createVm();
    using backing = other.createGuestMemfd({ size: 2n * MiB, mmap: true, initShared: true });
    using map = backing.map();
    using s = vm.memslots.add({ guestPhysAddr: 0n, size: 2n * MiB, userspace: map });
    vm.memory.write(0x1000n, readThenWrite(0x8000, 0x8001, 1));
    vm.setPrivate(0x8000n, p);
    using cpu = vm.createVcpu(0);
    cpu.setSregs({ cs: { base: 0n, selector: 0 }, ds: { base: 0n, selector: 0 } });
    cpu.setRegs({ rip: 0x1000n, rflags: 2n });
    const exit = await cpu.run({ timeoutMs: 5000 });
    equal(exit, { reason: 'memory-fault', gpa: 0x8000n, size: p, private: true }, 'exit');
    check(!s.deleted, 'slot stays');
  },
});

// ---- pre_fault_memory_test.c ---------------------------------------------------------

cases.push({
  name: 'test_pre_fault_memory',
  source: 'pre_fault_memory_test.c',
  // A default VM's shared pages come from the slot's host memory: here the gmem's own mapping
  // (MMAP + INIT_SHARED), the guest_memfd counterpart of the kernel test's anonymous memory.
  // (Without host memory the kernel cannot fault them in: EFAULT.)
  requires: ['guest_memfd', 'mmap', 'init_shared', 'pre_fault_memory'],
  run: ({ kvm }) => {
    const p = page(kvm);
    using vm = kvm.createVm();
    const base = 1n << 32n;
    using g = vm.createGuestMemfd({ size: 2n * MiB + p, mmap: true, initShared: true });
    using s = vm.memslots.add({ guestPhysAddr: base, size: 2n * MiB + p, guestMemfd: g });
    using cpu = vm.createVcpu(0);
    equal(cpu.preFaultMemory(base, 2n * MiB).size, 0n, 'left of (0, 2M)');
    equal(cpu.preFaultMemory(base + 2n * MiB, 2n * p).size, p, 'left of (2M, 8K)');
    fails(() => cpu.preFaultMemory(base + 2n * MiB + p, p), 'ENOENT', '(2M+4K, 4K): no memslot');
    check(!s.deleted, 'slot stays');
  },
});

export const selftestCases: readonly SelftestCase[] = cases;

export interface SelftestResult {
  name: string;
  status: 'ok' | 'fail' | 'skip';
  reason?: string;
}

/** Runs the cases on `kvm`, reporting each as it finishes. */
export async function runSelftests(
  kvm: Kvm,
  onResult: (r: SelftestResult, index: number) => void = () => {},
  filter?: (c: SelftestCase) => boolean,
  onStart?: (c: SelftestCase, index: number) => void,
): Promise<SelftestResult[]> {
  const caps = kvm.capabilities();
  const out: SelftestResult[] = [];
  for (const c of cases.filter(filter ?? (() => true))) {
    onStart?.(c, out.length + 1);
    const skip = skipReason(c, kvm, caps);
    let r: SelftestResult;
    if (skip) r = { name: c.name, status: 'skip', reason: skip };
    else {
      try {
        await c.run({ kvm, caps });
        r = { name: c.name, status: 'ok' };
      } catch (e) {
        r = { name: c.name, status: 'fail', reason: (e as Error)?.message ?? String(e) };
      }
    }
    out.push(r);
    onResult(r, out.length);
  }
  return out;
}


