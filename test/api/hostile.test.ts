/**
 * Hostile callers (issue 13: no crash and no half-done state from any call). abuse.test.ts
 * checks that each bad argument is refused with the right error class; this file checks what a
 * call leaves behind when the caller fights back: getters with side effects, fds closed or
 * reused behind the library's back, listeners that throw or call back in, forged and shadowed
 * objects, transferred buffers, a Uint8Array subclass that runs code mid-write.
 *
 * After each, the books must equal what the backend was told (a recording raw backend keeps
 * that account: every memslot and memory attribute the backend accepted, every live mapping),
 * and no memslot may cover memory that is not mapped.
 *
 * These run on this project's backend: the simulator here, the kernel in the lab. The native
 * addon's cases (child processes: a wrong answer there is a signal) are in
 * test/native/hostile.test.ts; the simulator's own stores in test/sim/hostile.test.ts.
 */
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, test, vi } from 'vitest';
import {
  AttributeBook, constants, GuestMemfd, Kvm, Mapping, Memslot, MemslotTable, openKvm, Vcpu, Vm,
} from '../../lib/index.js';
import { rawFunctionNames, type Handle, type RawBackend, type RawMapping, type RawRegion2 } from '../../lib/raw/types.js';
import { attempt, backendName, devicePath, expectCode, inLab, MiB, noGmem, noGuestCode, noSharedGmem, open, outcome, PAGE, skipped, unavailable } from '../helpers.js';

const { Prot, MapFlag, MemoryAttribute } = constants;
const RW = Prot.READ | Prot.WRITE;


// ---------------------------------------------------------------------------------------------
// The account: what the backend accepted, recorded by a raw backend wrapped around this
// project's.

interface SlotRecord {
  /** asId << 16 | id, as the kernel's slot field */
  slot: number;
  flags: number;
  guestPhysAddr: bigint;
  size: bigint;
  userspaceAddr: bigint;
}

interface Account {
  /** Per VM handle: the memslots the backend has, by slot field. */
  slots: Map<Handle, Map<number, SlotRecord>>;
  /** Per VM handle: non-zero memory attributes by page. */
  attributes: Map<Handle, Map<bigint, bigint>>;
  /** Mappings made and not unmapped. */
  live: Map<RawMapping, { address: bigint; length: bigint }>;
}

const big = (v: unknown): bigint => (v === undefined ? 0n : BigInt(v as bigint | number));

function recording(base: RawBackend): { raw: RawBackend; account: Account } {
  const account: Account = { slots: new Map(), attributes: new Map(), live: new Map() };
  const raw: Record<string, unknown> = { kind: base.kind, pageSize: base.pageSize };
  for (const name of rawFunctionNames) {
    const fn = base[name] as (...args: unknown[]) => unknown;
    raw[name] = (...args: unknown[]) => fn.apply(base, args);
  }
  // A VM whose fd is closed can no longer be reached: its slots leave the account with it.
  const vms = new Set<Handle>();
  raw.createVm = (fd: Handle, type: number) => {
    const vm = base.createVm(fd, type);
    vms.add(vm);
    return vm;
  };
  raw.close = (fd: Handle) => {
    base.close(fd);
    if (vms.delete(fd)) {
      account.slots.delete(fd);
      account.attributes.delete(fd);
    }
  };
  const region = (fd: Handle, r: RawRegion2) => {
    let slots = account.slots.get(fd);
    if (!slots) account.slots.set(fd, (slots = new Map()));
    if (big(r.memorySize) === 0n) slots.delete(r.slot);
    else slots.set(r.slot, { slot: r.slot, flags: r.flags ?? 0, guestPhysAddr: big(r.guestPhysAddr), size: big(r.memorySize), userspaceAddr: big(r.userspaceAddr) });
  };
  raw.setUserMemoryRegion = (fd: Handle, r: RawRegion2) => {
    base.setUserMemoryRegion(fd, r);
    region(fd, r);
  };
  raw.setUserMemoryRegion2 = (fd: Handle, r: RawRegion2) => {
    base.setUserMemoryRegion2(fd, r);
    region(fd, r);
  };
  raw.setMemoryAttributes = (fd: Handle, a: { address: bigint; size: bigint; attributes: bigint; flags?: bigint }) => {
    base.setMemoryAttributes(fd, a);
    let pages = account.attributes.get(fd);
    if (!pages) account.attributes.set(fd, (pages = new Map()));
    for (let p = big(a.address) / PAGE; p < (big(a.address) + big(a.size)) / PAGE; p++) {
      if (big(a.attributes) === 0n) pages.delete(p);
      else pages.set(p, big(a.attributes));
    }
  };
  raw.mmap = (fd: Handle, length: bigint | number, offset: bigint | number, prot: number, flags: number) => {
    const m = base.mmap(fd, length, offset, prot, flags);
    account.live.set(m, { address: m.address, length: big(length) });
    return m;
  };
  raw.munmap = (m: RawMapping) => {
    base.munmap(m);
    account.live.delete(m);
  };
  return { raw: raw as unknown as RawBackend, account };
}

/** A Kvm on this project's backend whose raw calls are recorded. */
function openRecorded(): { kvm: Kvm; account: Account } {
  const probe = open();
  const base = probe.raw;
  probe.close();
  const { raw, account } = recording(base);
  return { kvm: openKvm({ raw, path: devicePath }), account };
}

/** Slots the backend has over host memory that is not (wholly) mapped. */
function unmappedSlots(account: Account, vmFd: Handle): string[] {
  const live = [...account.live.values()];
  return [...(account.slots.get(vmFd)?.values() ?? [])]
    .filter((s) => s.userspaceAddr !== 0n)
    .filter((s) => !live.some((m) => m.address <= s.userspaceAddr && s.userspaceAddr + s.size <= m.address + m.length))
    .map((s) => `slot ${s.slot} over [0x${s.userspaceAddr.toString(16)}, +0x${s.size.toString(16)})`);
}

/** The VM's books equal what its backend accepted, and no slot is over unmapped memory. */
function expectBooksMatch(vm: Vm, account: Account): void {
  const fd = vm.fd;
  const bySlot = (a: SlotRecord, b: SlotRecord) => a.slot - b.slot;
  const books = vm.memslots.list().map((s): SlotRecord => ({ slot: (s.asId << 16) | s.id, flags: s.flags, guestPhysAddr: s.guestPhysAddr, size: s.size, userspaceAddr: s.userspaceAddr }));
  expect(books.sort(bySlot), 'memslot books vs the backend').toEqual([...(account.slots.get(fd)?.values() ?? [])].sort(bySlot));
  expect(unmappedSlots(account, fd), 'slots over memory that is not mapped').toEqual([]);
  const pages: [bigint, bigint][] = [];
  for (const r of vm.attributes.ranges()) for (let p = r.start / PAGE; p < r.end / PAGE; p++) pages.push([p, r.attributes]);
  const told = [...(account.attributes.get(fd)?.entries() ?? [])].sort((a, b) => (a[0] < b[0] ? -1 : 1));
  expect(pages, 'attribute books vs the backend').toEqual(told);
}

/** Runs fn with queueMicrotask captured: the errors a listener's rethrow would raise. */
function capturingRethrows<T>(fn: () => T): { value: T; rethrown: unknown[] } {
  const queued: (() => void)[] = [];
  vi.stubGlobal('queueMicrotask', (cb: () => void) => queued.push(cb));
  let value: T;
  try {
    value = fn();
  } finally {
    vi.unstubAllGlobals();
  }
  const rethrown = queued.flatMap((cb) => {
    try {
      cb();
      return [];
    } catch (e) {
      return [e];
    }
  });
  return { value, rethrown };
}

/** Why this backend has no private memory (a sw-protected VM), or undefined. */
function privateMissing(): string | undefined {
  if (unavailable) return unavailable;
  using kvm = open();
  return kvm.capabilities().vmTypes.includes('sw-protected') ? undefined : 'requires KVM_X86_SW_PROTECTED_VM';
}
const noPrivate = privateMissing();

// ---------------------------------------------------------------------------------------------
// The typed API on this project's backend.

describe.skipIf(unavailable)(`hostile callers of the typed API (${backendName}: ${unavailable ?? 'available'})`, () => {
  let kvm: Kvm;
  let account: Account;
  const vms: Vm[] = [];
  const vm = (type?: 'sw-protected') => {
    const v = kvm.createVm(type ? { type } : {});
    vms.push(v);
    return v;
  };
  beforeEach(() => {
    ({ kvm, account } = openRecorded());
  });
  afterEach(() => {
    for (const v of vms.splice(0)) attempt(() => v.close());
    kvm.close();
  });

  test('a Memslot cannot be given properties that delete() or vm.memory would believe', () => {
    const v = vm();
    const a = v.createSharedMemory({ size: MiB });
    const b = v.createSharedMemory({ size: MiB });
    const s0 = v.memslots.add({ slot: 0, guestPhysAddr: 0n, size: MiB, userspace: a });
    const s1 = v.memslots.add({ slot: 1, guestPhysAddr: MiB, size: MiB, userspace: b });
    expect(outcome(attempt(() => { (s1 as { id: number }).id = 0; }))).toBe('TypeError');
    expect(outcome(attempt(() => { (s1 as { userspace: Mapping }).userspace = a; }))).toBe('TypeError');
    s1.delete();
    expect([s0.deleted, s1.deleted]).toEqual([false, true]);
    expectBooksMatch(v, account);
  });

  // --- 3. getters that swap the fd under a raw call ------------------------------------------

  describe('a getter in a struct argument closes the fd and opens another file: every argument is read before any fd is checked', () => {
    type Call = [
      name: string,
      /** the fields the backend reads first and last */
      fields: [string, string],
      target: (raw: RawBackend, vmFd: Handle) => Handle,
      call: (raw: RawBackend, fd: Handle, arg: Record<string, unknown>) => unknown,
    ];
    const calls: Call[] = [
      ['setUserMemoryRegion', ['slot', 'userspaceAddr'], (_r, v) => v, (r, fd, o) => r.setUserMemoryRegion(fd, o as never)],
      ['setUserMemoryRegion2', ['slot', 'guestMemfd'], (_r, v) => v, (r, fd, o) => r.setUserMemoryRegion2(fd, o as never)],
      ['setUserMemoryRegions2', ['slot', 'guestMemfd'], (_r, v) => v, (r, fd, o) => r.setUserMemoryRegions2(fd, [o as never])],
      ['setMemoryAttributes', ['address', 'flags'], (_r, v) => v, (r, fd, o) => r.setMemoryAttributes(fd, o as never)],
      ['preFaultMemory', ['gpa', 'flags'], (r, v) => r.createVcpu(v, 0), (r, fd, o) => r.preFaultMemory(fd, o as never)],
    ];

    test.each(calls.flatMap(([name, fields, target, call]) => fields.map((field, i) => [`${name} (getter on ${field}, read ${i ? 'last' : 'first'})`, field, target, call] as const)))(
      '%s: refused cleanly, the new file untouched',
      (_label, field, target, call) => {
        const raw = kvm.raw;
        const vmFd = raw.createVm(kvm.fd, 0);
        const fd = target(raw, vmFd);
        let victim: Handle | undefined;
        let victimMap: RawMapping | undefined;
        const swap = () => {
          if (victim !== undefined) return;
          raw.close(fd);
          victim = raw.memfdCreate('kvm-gmem hostile victim');
          raw.ftruncate(victim, 2n * PAGE);
          victimMap = raw.mmap(victim, 2n * PAGE, 0n, RW, MapFlag.SHARED);
          victimMap.view(0, 8).set([1, 2, 3, 4, 5, 6, 7, 8]);
        };
        const arg: Record<string, unknown> = { slot: 0, flags: 0, guestPhysAddr: 0n, memorySize: PAGE, userspaceAddr: 0n, guestMemfdOffset: 0n, guestMemfd: 0, address: 0n, size: PAGE, attributes: 0n, gpa: 0n };
        const value = arg[field];
        Object.defineProperty(arg, field, { enumerable: true, get: () => (swap(), value) });
        const o = attempt(() => call(raw, fd, arg));
        expect(victim, 'the getter ran').toBeDefined();
        // The old fd is gone: EBADF (or, had the new file got its number, the kernel's refusal
        // of that ioctl on a memfd).
        expect(outcome(o)).toMatch(/^(KvmError (EBADF|ENOTTY|EINVAL)|TypeError)$/);
        expect(raw.fstat(victim!).size).toBe(2n * PAGE);
        expect([...victimMap!.view(0, 8)]).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
        raw.munmap(victimMap!);
        raw.close(victim!);
        if (fd !== vmFd) raw.close(vmFd);
      },
    );

    test('enableCap: a getter on args[0] closes the VM fd and opens another file: refused cleanly', () => {
      const raw = kvm.raw;
      const vmFd = raw.createVm(kvm.fd, 0);
      let victim: Handle | undefined;
      const args = Object.defineProperty([] as bigint[], 0, {
        enumerable: true,
        get: () => {
          raw.close(vmFd);
          victim = raw.memfdCreate('kvm-gmem hostile victim');
          raw.ftruncate(victim, PAGE);
          return 0n;
        },
      });
      expect(outcome(attempt(() => raw.enableCap(vmFd, constants.Cap.EXIT_HYPERCALL, args)))).toMatch(/^(KvmError (EBADF|ENOTTY|EINVAL)|TypeError)$/);
      expect(raw.fstat(victim!).size).toBe(PAGE);
      raw.close(victim!);
    });

  test('the raw batch call names what it got instead of regions or a region', () => {
    const raw = kvm.raw;
    const vmFd = raw.createVm(kvm.fd, 0);
    try {
      const region = { slot: 0, guestPhysAddr: 0n, memorySize: PAGE };
      const cases: [unknown, RegExp][] = [
        ['regions', /^regions must be an array, got string$/],
        [{ length: 1, 0: region }, /^regions must be an array, got Object$/],
        [[region, null], /^regions\[1\] must be an object, got null$/],
        [[region, 7], /^regions\[1\] must be an object, got number$/],
      ];
      for (const [regions, message] of cases) {
        const o = attempt(() => raw.setUserMemoryRegions2(vmFd, regions as never));
        expect(outcome(o), String(message)).toBe('TypeError');
        expect(((o as { error: Error }).error).message).toMatch(message);
      }
    } finally {
      raw.close(vmFd);
    }
  });
  });

  // --- 4. fds closed behind the typed layer's back (through raw) -------------------------------

  // (Specs with a gmem the host maps, mmap + initShared, on a default VM skip where it has none.)
  test.skipIf(noSharedGmem)(`a gmem fd closed behind the library’s back through raw, a new file made: its calls are EBADF and never reach the new file${skipped(noSharedGmem)}`, () => {
    const v = vm();
    const g = v.createGuestMemfd({ size: MiB, mmap: true, initShared: true });
    const old = g.fd;
    kvm.raw.close(old);
    const victim = kvm.raw.memfdCreate('kvm-gmem hostile victim');
    kvm.raw.ftruncate(victim, MiB);
    const before = kvm.raw.fstat(victim);
    for (const [label, fn] of [
      ['allocate', () => g.allocate(0, PAGE)], ['punchHole', () => g.punchHole(0, PAGE)], ['stat', () => g.stat()], ['map', () => g.map()],
      ['memslots.add', () => v.memslots.add({ guestPhysAddr: 0n, size: PAGE, guestMemfd: g })],
    ] as const) {
      expect(`${label}: ${outcome(attempt(fn))}`).toBe(`${label}: KvmError EBADF`);
    }
    expect(kvm.raw.fstat(victim)).toEqual(before);
    expectBooksMatch(v, account);
    kvm.raw.close(victim);
    // Closing the VM closes everything, then reports the fd it could not close.
    expectCode(() => v.close(), 'EBADF');
    expect([v.closed, g.closed]).toEqual([true, true]);
  });

  // --- 5. vm.close(): all or nothing ---------------------------------------------------------

  test.skipIf(noSharedGmem)(`vm.close() while its gmem’s mapping is another VM’s slot memory: it closes fully; the other VM keeps its books, slot, memory and kernel slot${skipped(noSharedGmem)}`, () => {
    const a = vm();
    const b = vm();
    const g = a.createGuestMemfd({ size: 2n * MiB, mmap: true, initShared: true });
    const m = g.map();
    const own = a.memslots.add({ guestPhysAddr: 0n, size: MiB, guestMemfd: g });
    const cpu = a.createVcpu(0);
    const theirs = b.memslots.add({ slot: 0, guestPhysAddr: 0n, size: 2n * MiB, userspace: m });
    b.memory.write(0x10n, Uint8Array.of(1, 2, 3));
    expectBooksMatch(a, account);
    expectBooksMatch(b, account);
    const before = b.memslots.list();

    a.close();
    expect({ vm: a.closed, gmem: g.closed, vcpu: cpu.closed, slot: own.deleted, slots: a.memslots.size }).toEqual({ vm: true, gmem: true, vcpu: true, slot: true, slots: 0 });
    // The other VM: books, slot, the memory under it, and the backend's slot.
    expect(b.memslots.list()).toEqual(before);
    expect([theirs.deleted, m.closed]).toEqual([false, false]);
    expect(m.slots).toEqual([theirs]);
    expectBooksMatch(b, account);
    expect([...b.memory.read(0x10n, 3)]).toEqual([1, 2, 3]);
    b.memory.write(MiB + 0x20n, Uint8Array.of(9));
    expect(m.view(MiB + 0x20n, 1)[0]).toBe(9);
    const probe = attempt(() => kvm.raw.setUserMemoryRegion2(b.fd, { slot: 9, flags: 0, guestPhysAddr: 0n, memorySize: PAGE, userspaceAddr: m.address }));
    if (probe.ok) kvm.raw.setUserMemoryRegion2(b.fd, { slot: 9, flags: 0, guestPhysAddr: 0n, memorySize: 0n });
    expect(outcome(probe), 'the backend still has slot 0 over that range').toBe('KvmError EEXIST');
    // Deleting slot 0 works, and unmaps the mapping with its last slot.
    const at = m.address;
    b.memslots.delete(0);
    expect([theirs.deleted, m.closed]).toEqual([true, true]);
    expectBooksMatch(b, account);
    expect([...account.live.values()].some((x) => x.address === at), 'the orphaned mapping was unmapped').toBe(false);
  });

  test.skipIf(noSharedGmem).each(['vcpu', 'gmem', 'shared memfd', 'vm'] as const)(
    `vm.close() after its %s fd was closed behind its back: every step still runs, then it reports EBADF; nothing is left open${skipped(noSharedGmem)}`,
    (what) => {
      const v = vm();
      const cpu = v.createVcpu(0);
      const g = v.createGuestMemfd({ size: MiB, mmap: true, initShared: true });
      const g2 = v.createGuestMemfd({ size: MiB, mmap: true, initShared: true });
      const slot = v.memslots.add({ guestPhysAddr: 0n, size: MiB, guestMemfd: g2 });
      const sh = v.createSharedMemory({ size: MiB, memfd: true });
      const fds = { vcpu: cpu.fd, gmem: g.fd, gmem2: g2.fd, 'shared memfd': sh.fd!, vm: v.fd };
      kvm.raw.close(fds[what]);
      expectCode(() => v.close(), 'EBADF');
      expect({ vm: v.closed, vcpu: cpu.closed, gmem: g.closed, gmem2: g2.closed, slot: slot.deleted, shared: sh.closed, slots: v.memslots.size }).toEqual({
        vm: true, vcpu: true, gmem: true, gmem2: true, slot: true, shared: true, slots: 0,
      });
      v.close(); // idempotent: nothing left to do
      for (const [name, fd] of Object.entries(fds)) expect(`${name}: ${outcome(attempt(() => kvm.raw.fstat(fd)))}`).toBe(`${name}: KvmError EBADF`);
      expect([...account.live.values()]).toEqual([]);
      // The VM's /dev/kvm reference went too: closing the Kvm closes the device.
      const sys = kvm.fd;
      kvm.close();
      expectCode(() => kvm.raw.getApiVersion(sys), 'EBADF');
    },
  );

  // --- 6. VMs outlive their Kvm ----------------------------------------------------------------

  test.skipIf(noSharedGmem)(`after kvm.close(), a VM it made stays usable: capabilities, gmems, memslots, memory, vCPUs; /dev/kvm closes with it${skipped(noSharedGmem)}`, () => {
    const v = vm();
    const caps = v.capabilities();
    const sys = kvm.fd;
    kvm.close();
    expectCode(() => kvm.capabilities(), 'EBADF');
    expectCode(() => kvm.createVm(), 'EBADF');
    expect(v.kvm).toBe(kvm);
    expect(v.capabilities()).toEqual(caps);
    expect(v.checkExtension(constants.Cap.NR_MEMSLOTS)).toBe(caps.maxMemslots);
    const g = v.createGuestMemfd({ size: MiB, mmap: true, initShared: true });
    const s = v.memslots.add({ guestPhysAddr: 0n, size: MiB, guestMemfd: g });
    const sh = v.createSharedMemory({ size: MiB });
    const s2 = v.memslots.add({ guestPhysAddr: 16n * MiB, size: MiB, userspace: sh });
    v.memory.write(0x100n, Uint8Array.of(1, 2));
    v.memory.write(16n * MiB, Uint8Array.of(3));
    expect([...v.memory.read(0x100n, 2), ...v.memory.read(16n * MiB, 1)]).toEqual([1, 2, 3]);
    const cpu = v.createVcpu(0);
    cpu.setRegs({ rax: 0x1234n });
    expect(cpu.getRegs().rax).toBe(0x1234n);
    expect(g.punchHole(0n, PAGE)).toEqual([{ slot: s, gfnStart: 0n, gfnEnd: 1n }]);
    expectBooksMatch(v, account);
    s2.delete();
    expect(kvm.raw.getApiVersion(sys)).toBe(12); // still open underneath, for the VM
    v.close();
    expectCode(() => kvm.raw.getApiVersion(sys), 'EBADF');
  });

  test.skipIf(noGuestCode)(`after kvm.close(), a vCPU of its VM runs (kvm_run is sized through /dev/kvm)${skipped(noGuestCode)}`, async () => {
    const v = vm();
    kvm.close();
    const sh = v.createSharedMemory({ size: MiB });
    v.memslots.add({ guestPhysAddr: 0n, size: MiB, userspace: sh });
    sh.view(0x1000, 1).set([0xf4]); // hlt
    const cpu = v.createVcpu(0);
    cpu.setSregs({ cs: { base: 0n, selector: 0 } });
    cpu.setRegs({ rip: 0x1000n, rflags: 2n });
    expect(await cpu.run({ timeoutMs: inLab ? 120_000 : 10_000 })).toEqual({ reason: 'hlt' });
  });

  // --- 7. memslots.add options with side effects ---------------------------------------------

  describe('memslots.add() with options whose getters unmap, close or add: options are read once, first; never a slot over unmapped memory', () => {
    type Case = [label: string, make: (v: Vm) => { options: object; expect: RegExp }];
    const cases: Case[] = [
      ['a userspaceOffset getter unmaps the userspace Mapping', (v) => {
        const sh = v.createSharedMemory({ size: MiB });
        return { options: { guestPhysAddr: 0n, size: MiB, userspace: sh, get userspaceOffset() { sh.close(); return 0n; } }, expect: /^KvmError EBADF$/ };
      }],
      ['a userspace getter unmaps the Mapping it returns', (v) => {
        const sh = v.createSharedMemory({ size: MiB });
        return { options: { guestPhysAddr: 0n, size: MiB, get userspace() { sh.close(); return sh; } }, expect: /^KvmError EBADF$/ };
      }],
      ['a getter unmaps the Mapping and maps new memory (perhaps at the same address)', (v) => {
        const sh = v.createSharedMemory({ size: MiB });
        return { options: { guestPhysAddr: 0n, userspace: sh, get size() { sh.close(); v.createSharedMemory({ size: MiB }); return MiB; } }, expect: /^KvmError EBADF$/ };
      }],
      ['a slot getter adds another slot over the same guest range first', (v) => {
        const sh = v.createSharedMemory({ size: MiB });
        const other = v.createSharedMemory({ size: MiB });
        return { options: { guestPhysAddr: 0n, size: MiB, userspace: sh, get slot() { v.memslots.add({ slot: 5, guestPhysAddr: 0n, size: MiB, userspace: other }); return 6; } }, expect: /^KvmError EEXIST$/ };
      }],
      ['a Proxy whose get trap unmaps the memory', (v) => {
        const sh = v.createSharedMemory({ size: MiB });
        const target = { guestPhysAddr: 0n, size: MiB, userspace: sh };
        return { options: new Proxy(target, { get: (t, k) => (k === 'size' && attempt(() => sh.close()), Reflect.get(t, k)) }), expect: /^KvmError EBADF$/ };
      }],
    ];
    // (these make a gmem the host maps)
    const gmemCases: Case[] = [
      ['a guestPhysAddr getter closes the guestMemfd', (v) => {
        const g = v.createGuestMemfd({ size: MiB, mmap: true, initShared: true });
        return { options: { guestMemfd: g, size: MiB, get guestPhysAddr() { g.close(); return 0n; } }, expect: /^KvmError EBADF$/ };
      }],
      ['a getter unmaps the gmem’s own mapping that an earlier slot made', (v) => {
        const g = v.createGuestMemfd({ size: 2n * MiB, mmap: true, initShared: true });
        const first = v.memslots.add({ guestPhysAddr: 64n * MiB, size: MiB, guestMemfd: g });
        const m = first.userspace!;
        return { options: { guestMemfd: g, guestMemfdOffset: MiB, size: MiB, get guestPhysAddr() { attempt(() => m.close()); first.delete(); return 0n; } }, expect: /^ok$/ };
      }],
      ['a size getter closes the VM', (v) => {
        const g = v.createGuestMemfd({ size: MiB, mmap: true, initShared: true });
        return { options: { guestMemfd: g, guestPhysAddr: 0n, get size() { v.close(); return MiB; } }, expect: /^KvmError EBADF$/ };
      }],
    ];
    const check = (make: Case[1]) => {
      const v = vm();
      const { options, expect: want } = make(v);
      const o = attempt(() => v.memslots.add(options as never));
      expect(outcome(o)).toMatch(want);
      if (o.ok) expect((o.value as Memslot).userspace?.closed).toBe(false);
      if (v.closed) expect(v.memslots.size).toBe(0);
      else expectBooksMatch(v, account);
      for (const fd of account.slots.keys()) expect(unmappedSlots(account, fd)).toEqual([]);
    };
    test.each(cases)('%s', (_label, make) => check(make));
    test.skipIf(noSharedGmem).each(gmemCases)(`%s${skipped(noSharedGmem)}`, (_label, make) => check(make));

    test.skipIf(noSharedGmem)(`a Mapping or GuestMemfd cannot be given properties that memslots.add() would believe (length, closed, size, fd)${skipped(noSharedGmem)}`, () => {
      const v = vm();
      const sh = v.createSharedMemory({ size: MiB });
      const g = v.createGuestMemfd({ size: MiB, mmap: true, initShared: true });
      const strict = (fn: () => void) => outcome(attempt(fn));
      expect(strict(() => ((sh as { length: bigint }).length = 64n * MiB))).toBe('TypeError');
      expect(strict(() => Object.defineProperty(sh, 'closed', { value: false }))).toBe('TypeError');
      expect(strict(() => Object.defineProperty(sh, 'address', { value: 0x1000n }))).toBe('TypeError');
      expect(strict(() => ((g as { size: bigint }).size = 64n * MiB))).toBe('TypeError');
      expect(strict(() => Object.defineProperty(g, 'fd', { value: 0 }))).toBe('TypeError');
      expect(strict(() => Object.defineProperty(g, 'closed', { value: false }))).toBe('TypeError');
      expect([sh.length, g.size]).toEqual([MiB, MiB]);
      // So a slot larger than its memory stays refused, and so does one over unmapped memory.
      expect(outcome(attempt(() => v.memslots.add({ guestPhysAddr: 0n, size: 64n * MiB, userspace: sh })))).toBe('RangeError');
      const gone = v.createSharedMemory({ size: MiB });
      gone.close();
      expect(strict(() => Object.defineProperty(gone, 'closed', { get: () => false }))).toBe('TypeError');
      expect(outcome(attempt(() => v.memslots.add({ guestPhysAddr: 0n, size: MiB, userspace: gone })))).toBe('KvmError EBADF');
      expectBooksMatch(v, account);
    });
  });

  // --- 8. vm.memory: all or nothing ----------------------------------------------------------

  describe('vm.memory.write/read that run past a slot: all or nothing', () => {
    let v: Vm;
    let a: Mapping;
    let b: Mapping;
    beforeEach(() => {
      v = vm();
      a = v.createSharedMemory({ size: MiB });
      b = v.createSharedMemory({ size: MiB });
      v.memslots.add({ slot: 1, guestPhysAddr: 0n, size: MiB, userspace: a }); // [0, 1 MiB)
      v.memslots.add({ slot: 2, guestPhysAddr: MiB, size: MiB, userspace: b }); // [1, 2 MiB)
      // [2 MiB, 3 MiB): a gmem slot without host memory, where a default VM has guest_memfd (the
      // cases that reach it are skipped where it is missing; the others never touch it)
      if (!noGmem) v.memslots.add({ slot: 3, guestPhysAddr: 2n * MiB, size: MiB, guestMemfd: v.createGuestMemfd({ size: MiB }) });
      // [3 MiB, 4 MiB): no slot
      a.bytes.fill(0x11);
      b.bytes.fill(0x22);
    });
    const intact = () => a.bytes.every((x) => x === 0x11) && b.bytes.every((x) => x === 0x22);

    type Row = readonly [label: string, gpa: bigint, length: number, want: string];
    const check = (gpa: bigint, length: number, want: string) => {
      expect(outcome(attempt(() => v.memory.read(gpa, length)))).toBe(want);
      const w = attempt(() => v.memory.write(gpa, new Uint8Array(length).fill(0x77)));
      expect(outcome(w)).toBe(want);
      if (!w.ok) expect(intact(), 'nothing was written').toBe(true);
      else expect([...v.memory.read(gpa, length)].every((x) => x === 0x77)).toBe(true);
      expectBooksMatch(v, account);
    };
    test.each<Row>([
      ['from the end of one slot into the next (control: works)', MiB - 4n, 8, 'ok'],
      ['from no slot into a slot', 4n * MiB - 4n, 8, 'KvmError EFAULT'],
    ])('%s', (_label, gpa, length, want) => check(gpa, length, want));
    // (these reach slot 3, the gmem slot without host memory)
    test.skipIf(noGmem).each<Row>([
      ['past the end of the last host memory into a slot without any', 2n * MiB - 4n, 8, 'KvmError EFAULT'],
      ['across two slots and on into one without host memory', MiB - 4n, Number(MiB) + 8, 'KvmError EFAULT'],
      ['past the end of a slot into no slot', 3n * MiB - 4n, 8, 'KvmError EFAULT'],
    ])(`%s${skipped(noGmem)}`, (_label, gpa, length, want) => check(gpa, length, want));

    test.skipIf(noPrivate)(`a write over a private page is refused whole${noPrivate ? ` (skipped: ${noPrivate})` : ''}`, () => {
      const p = vm('sw-protected');
      const sh = p.createSharedMemory({ size: 2n * MiB });
      p.memslots.add({ guestPhysAddr: 0n, size: 2n * MiB, guestMemfd: p.createGuestMemfd({ size: 2n * MiB }), userspace: sh });
      sh.bytes.fill(0x33);
      p.setPrivate(MiB, PAGE);
      expectCode(() => p.memory.write(MiB - 4n, new Uint8Array(16).fill(0x77)), 'EFAULT');
      expectCode(() => p.memory.read(MiB - 4n, 16), 'EFAULT');
      expect(sh.bytes.every((x) => x === 0x33)).toBe(true);
      expectBooksMatch(p, account);
    });

    test('a Uint8Array subclass whose subarray/constructor run code (deleting the next slot, unmapping its memory) cannot make a write half-done', () => {
      // The second time the caller's code runs (after the first piece was written, in the old
      // code), it deletes the next slot and unmaps its memory.
      let runs = 0;
      const hostile = () => {
        if (runs++ !== 1) return;
        v.memslots.delete(2);
        attempt(() => b.close());
      };
      class Hostile extends Uint8Array {
        override subarray(start?: number, end?: number): Uint8Array<ArrayBuffer> {
          hostile();
          return super.subarray(start, end);
        }
      }
      const bytes = new Hostile(8).fill(0x77);
      // (subarray finds its species constructor through .constructor)
      Object.defineProperty(bytes, 'constructor', { get: () => (hostile(), Uint8Array) });
      const w = attempt(() => v.memory.write(MiB - 4n, bytes));
      const first = [...a.view(MiB - 4n, 4)];
      if (w.ok) {
        expect(first, 'written: all of it').toEqual([0x77, 0x77, 0x77, 0x77]);
        if (!b.closed) expect([...b.view(0, 4)]).toEqual([0x77, 0x77, 0x77, 0x77]);
      } else {
        expect(outcome(w)).toMatch(/^KvmError /);
        expect(first, 'refused: none of it').toEqual([0x11, 0x11, 0x11, 0x11]);
      }
      expectBooksMatch(v, account);
    });
  });

  // --- 9. listeners ------------------------------------------------------------------------------

  describe('listeners that throw or call back into the VM', () => {
    test.skipIf(noSharedGmem)(`an invalidate listener that throws: punchHole still punched and returned its ranges, the next listener still heard, the error is rethrown asynchronously as is${skipped(noSharedGmem)}`, () => {
      const v = vm();
      const g = v.createGuestMemfd({ size: MiB, mmap: true, initShared: true });
      const s = v.memslots.add({ guestPhysAddr: 0n, size: MiB, guestMemfd: g });
      v.memory.write(0x10n, Uint8Array.of(5));
      const boom = new Error('listener fails');
      const heard: string[] = [];
      v.on('invalidate', () => {
        heard.push('first');
        throw boom;
      });
      v.on('invalidate', (e) => heard.push(`second ${e.ranges.map((r) => `${r.gfnStart}-${r.gfnEnd}`)}`));
      const { value, rethrown } = capturingRethrows(() => g.punchHole(0n, PAGE));
      expect(value).toEqual([{ slot: s, gfnStart: 0n, gfnEnd: 1n }]);
      expect(heard).toEqual(['first', 'second 0-1']);
      expect(rethrown).toEqual([boom]);
      expect(rethrown[0]).toBe(boom);
      expect(v.memory.read(0x10n, 1)[0]).toBe(0);
      expectBooksMatch(v, account);
    });

    test.skipIf(noSharedGmem)(`a once() listener that throws is removed, and the others still run${skipped(noSharedGmem)}`, () => {
      const v = vm();
      const g = v.createGuestMemfd({ size: MiB, mmap: true, initShared: true });
      v.memslots.add({ guestPhysAddr: 0n, size: MiB, guestMemfd: g });
      const heard: string[] = [];
      v.once('invalidate', () => {
        heard.push('once');
        throw new Error('once fails');
      });
      v.on('invalidate', () => heard.push('on'));
      expect(capturingRethrows(() => g.punchHole(0n, PAGE)).rethrown).toHaveLength(1);
      expect(capturingRethrows(() => g.punchHole(0n, PAGE)).rethrown).toHaveLength(0);
      expect(heard).toEqual(['once', 'on', 'on']);
    });

    describe.skipIf(noPrivate)(`on a sw-protected VM${noPrivate ? ` (skipped: ${noPrivate})` : ''}`, () => {
      let p: Vm;
      let gmem: GuestMemfd;
      let sh: Mapping;
      beforeEach(() => {
        p = vm('sw-protected');
        gmem = p.createGuestMemfd({ size: 2n * MiB });
        sh = p.createSharedMemory({ size: 2n * MiB });
        p.memslots.add({ guestPhysAddr: 0n, size: 2n * MiB, guestMemfd: gmem, userspace: sh });
      });

      test('a convert listener that throws: setPrivate and convert() still changed the attributes, the books follow, the next listener heard, the errors come back asynchronously', () => {
        const heard: string[] = [];
        p.on('convert', () => {
          heard.push('first');
          throw new TypeError('listener fails');
        });
        p.on('convert', (e) => heard.push(`second ${e.attributes}`));
        const set = capturingRethrows(() => p.setPrivate(0n, PAGE));
        expect(set.value).toBeUndefined();
        expect(p.attributes.isPrivate(0n)).toBe(true);
        sh.bytes.fill(0xaa, Number(PAGE), Number(2n * PAGE));
        const conv = capturingRethrows(() => p.convert({ gpa: PAGE, size: PAGE, toPrivate: true }));
        expect(conv.value).toMatchObject({ changed: [{ start: PAGE, end: 2n * PAGE, from: 0n }], discarded: PAGE });
        expect(sh.view(PAGE, 4).every((x) => x === 0)).toBe(true); // the side left was freed despite the listener
        expect([...set.rethrown, ...conv.rethrown].map((e) => (e as Error).message)).toEqual(['listener fails', 'listener fails']);
        expect(heard).toEqual(['first', `second ${MemoryAttribute.PRIVATE}`, 'first', `second ${MemoryAttribute.PRIVATE}`]);
        expectBooksMatch(p, account);
      });

      test('re-entrant listeners (a convert listener converting back part of the range, an invalidate listener punching and converting elsewhere) leave the books equal to the backend', () => {
        let undone = false;
        const seen: string[] = [];
        p.on('convert', (e) => {
          seen.push(`convert ${e.attributes} ${e.changed.map((c) => `${c.start / PAGE}-${c.end / PAGE}`)}`);
          if (undone || e.attributes !== MemoryAttribute.PRIVATE) return;
          undone = true;
          p.setShared(e.changed[0]!.start, PAGE); // converts the first page back, from inside the event
        });
        let punched = false;
        p.on('invalidate', (e) => {
          seen.push(`invalidate ${e.ranges.map((r) => `${r.gfnStart}-${r.gfnEnd}`)}`);
          if (punched) return;
          punched = true;
          gmem.punchHole(MiB, PAGE); // nested invalidate
          p.setPrivate(MiB + 4n * PAGE, PAGE); // nested convert
        });
        p.convert({ gpa: 16n * PAGE, size: 4n * PAGE, toPrivate: true });
        expectBooksMatch(p, account);
        expect(p.attributes.isPrivate(16n * PAGE)).toBe(false); // the listener's setShared came last
        expect(p.attributes.isPrivate(17n * PAGE)).toBe(true);
        p.convert({ gpa: 16n * PAGE, size: 4n * PAGE, toPrivate: false });
        expectBooksMatch(p, account);
        expect(p.attributes.ranges()).toEqual([{ start: MiB + 4n * PAGE, end: MiB + 5n * PAGE, attributes: MemoryAttribute.PRIVATE }]);
        expect(seen).toContain('invalidate 256-257');
      });

      test('a listener that closes the VM in the middle of convert(): the call ends typed, the VM closed fully', () => {
        p.on('convert', () => p.close());
        const o = attempt(() => p.convert({ gpa: 0n, size: 4n * PAGE, toPrivate: true }));
        expect(outcome(o)).toMatch(/^(ok|KvmError EBADF)$/);
        expect([p.closed, gmem.closed, sh.closed, p.memslots.size]).toEqual([true, true, true, 0]);
      });
    });

    test.skipIf(noSharedGmem)(`an invalidate listener that deletes the slot and closes the gmem it was told about: punchHole returns, the books stay true${skipped(noSharedGmem)}`, () => {
      const v = vm();
      const g = v.createGuestMemfd({ size: MiB, mmap: true, initShared: true });
      const s = v.memslots.add({ guestPhysAddr: 0n, size: MiB, guestMemfd: g });
      v.on('invalidate', (e) => {
        for (const r of e.ranges) r.slot.delete();
        e.guestMemfd.close();
      });
      expect(g.punchHole(0n, PAGE)).toEqual([{ slot: s, gfnStart: 0n, gfnEnd: 1n }]);
      expect([s.deleted, g.closed]).toEqual([true, true]);
      expectBooksMatch(v, account);
    });
  });

  // --- 10. forged objects ------------------------------------------------------------------------

  test.skipIf(noSharedGmem)(`forged objects (Object.create of a library prototype, a real one’s fields copied, a Proxy of a real one) are TypeErrors wherever a library object is expected; vm.close() works after${skipped(noSharedGmem)}`, () => {
    const v = vm();
    const g = v.createGuestMemfd({ size: MiB, mmap: true, initShared: true });
    const m = g.map();
    const s = v.memslots.add({ guestPhysAddr: 0n, size: MiB, guestMemfd: g });
    const cpu = v.createVcpu(0);
    const mappings: [string, unknown][] = [
      ['Object.create(Mapping.prototype)', Object.create(Mapping.prototype)],
      ['a Mapping’s fields on Mapping.prototype', Object.assign(Object.create(Mapping.prototype), { source: m.source, offset: m.offset, length: m.length, guestMemfd: g })],
      ['a Proxy of a Mapping', new Proxy(m, {})],
    ];
    const gmems: [string, unknown][] = [
      ['Object.create(GuestMemfd.prototype)', Object.create(GuestMemfd.prototype)],
      ['a GuestMemfd’s fields on GuestMemfd.prototype', Object.assign(Object.create(GuestMemfd.prototype), { vm: v, size: g.size, flags: g.flags })],
      ['a Proxy of a GuestMemfd', new Proxy(g, {})],
    ];
    const slots: [string, unknown][] = [
      ['Object.create(Memslot.prototype)', Object.create(Memslot.prototype)],
      ['a Memslot’s fields on Memslot.prototype', Object.assign(Object.create(Memslot.prototype), { vm: v, id: 0, asId: 0, size: s.size })],
      ['a Proxy of a Memslot', new Proxy(s, {})],
    ];
    const vcpus: [string, unknown][] = [['Object.create(Vcpu.prototype)', Object.create(Vcpu.prototype)], ['a Proxy of a Vcpu', new Proxy(cpu, {})]];
    const calls: [string, () => unknown][] = [
      ...mappings.map(([l, x]): [string, () => unknown] => [`memslots.add({ userspace: ${l} })`, () => v.memslots.add({ guestPhysAddr: 64n * MiB, size: PAGE, userspace: x as Mapping })]),
      ...gmems.flatMap(([l, x]): [string, () => unknown][] => [
        [`memslots.add({ guestMemfd: ${l} })`, () => v.memslots.add({ guestPhysAddr: 64n * MiB, size: PAGE, guestMemfd: x as GuestMemfd })],
        [`memslots.reverse(${l})`, () => v.memslots.reverse(x as GuestMemfd, 0n)],
        [`memslots.guestRanges(${l})`, () => v.memslots.guestRanges(x as GuestMemfd, 0n, PAGE)],
        [`memslots.boundTo(${l})`, () => v.memslots.boundTo(x as GuestMemfd)],
      ]),
      ...slots.map(([l, x]): [string, () => unknown] => [`memslots.delete(${l})`, () => v.memslots.delete(x as Memslot)]),
      ...vcpus.map(([l, x]): [string, () => unknown] => [`convert(…, { vcpu: ${l} })`, () => v.convert({ gpa: 0n, size: PAGE, toPrivate: false }, { vcpu: x as Vcpu })]),
    ];
    const bad = calls.flatMap(([label, fn]) => {
      const o = attempt(fn);
      return outcome(o) === 'TypeError' ? [] : [`${label}: ${outcome(o)}`];
    });
    expect(bad).toEqual([]);
    // Every member of every prototype, on an object made from that prototype.
    const classes = { Kvm, Vm, GuestMemfd, Mapping, Memslot, MemslotTable, AttributeBook, Vcpu } as const;
    const members = Object.entries(classes).flatMap(([name, C]) =>
      Reflect.ownKeys(C.prototype).filter((k) => k !== 'constructor').map((k) => [name, C, k] as const),
    );
    const wrongThis = members.flatMap(([name, C, key]) => {
      const d = Object.getOwnPropertyDescriptor(C.prototype, key)!;
      const self = Object.create(C.prototype) as object;
      const o = d.get ? attempt(() => d.get!.call(self)) : attempt(() => Reflect.apply(d.value as (...a: unknown[]) => unknown, self, [0n, PAGE, 0n]));
      if (!o.ok && o.error instanceof TypeError) return [];
      if (o.ok && o.value instanceof Promise) o.value.catch(() => undefined);
      return [`${name}.prototype.${String(key)} on Object.create(${name}.prototype): ${outcome(o)}`];
    });
    // (an async method rejects rather than throws: run() answers a forged `this` with a rejection)
    expect(wrongThis.filter((x) => !x.includes('.run on'))).toEqual([]);
    // The real objects are intact, the books true, and the VM closes.
    expect([s.deleted, m.closed, g.closed, cpu.closed]).toEqual([false, false, false, false]);
    expectBooksMatch(v, account);
    v.close();
    expect([v.closed, s.deleted, m.closed, g.closed, cpu.closed]).toEqual([true, true, true, true, true]);
  });
});

// ---------------------------------------------------------------------------------------------
// 2 (in process). A read-only or inaccessible mapping never gets a buffer, on every backend.

describe.skipIf(unavailable)(`raw mappings that are not readable and writable (${backendName})`, () => {
  let kvm: Kvm;
  beforeAll(() => {
    kvm = open();
  });
  afterAll(() => kvm?.close());

  test.each([
    ['PROT_READ', Prot.READ],
    ['PROT_NONE', Prot.NONE],
    ['PROT_WRITE', Prot.WRITE],
  ] as const)('%s mappings of a memfd, anonymous memory and a guest_memfd: view() is EACCES, never a buffer', (_name, prot) => {
    const raw = kvm.raw;
    const memfd = raw.memfdCreate('kvm-gmem hostile read-only');
    raw.ftruncate(memfd, 2n * PAGE);
    const vmFd = raw.createVm(kvm.fd, 0);
    // (a guest_memfd the host may map: where the host has MMAP | INIT_SHARED)
    const g = attempt(() => raw.createGuestMemfd(vmFd, 2n * PAGE, 3n));
    const gmem = g.ok ? (g.value as Handle) : undefined;
    const maps: [string, RawMapping][] = [
      ['memfd', raw.mmap(memfd, 2n * PAGE, 0n, prot, MapFlag.SHARED)],
      ['anonymous', raw.mmap(-1, 2n * PAGE, 0n, prot, MapFlag.SHARED | MapFlag.ANONYMOUS)],
      ...(gmem === undefined ? [] : [['guest_memfd', raw.mmap(gmem, 2n * PAGE, 0n, prot, MapFlag.SHARED)] as [string, RawMapping]]),
    ];
    for (const [what, m] of maps) {
      expect(`${what} view(0, 1): ${outcome(attempt(() => m.view(0, 1)))}`).toBe(`${what} view(0, 1): KvmError EACCES`);
      expect(`${what} view(4096, 16): ${outcome(attempt(() => m.view(4096, 16)))}`).toBe(`${what} view(4096, 16): KvmError EACCES`);
      raw.munmap(m);
    }
    for (const fd of [gmem, vmFd, memfd]) if (fd !== undefined) raw.close(fd);
  });
});
