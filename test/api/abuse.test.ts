/**
 * Abuse without crashing. Every public entry point (openKvm, Kvm, Vm, vm.memory, vm.memslots,
 * vm.attributes, GuestMemfd, Mapping, Vcpu, and every export of the native addon) is called
 * with wrong types, unrepresentable numbers, wrong `this`, closed objects and stale mappings.
 * Each call must throw the documented class and nothing else:
 *   wrong type                                          -> TypeError
 *   NaN, Infinity, negative, fractional, unsafe number,
 *   negative bigint, bigint above 2^64-1, out of range  -> RangeError
 *   closed object; native fd -1, 99999 or not opened
 *   through the addon (stdio)                           -> KvmError 'EBADF'
 * and the process must survive. vitest runs each file in a forked process, so a crash in the
 * in-process tests fails this file; the native hammer and the known-dangerous calls run in
 * child processes of their own and assert exit code 0 and no signal.
 */
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { EventEmitter } from 'node:events';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import {
  AttributeBook, constants, GuestMemfd, Kvm, KvmError, Mapping, MemslotTable, openKvm, Vcpu, Vm, type Memslot,
} from '../../lib/index.js';
import { addonCandidates, loadAddon } from '../../lib/raw/native.js';
import { backendName, devicePath, MiB, noGuestCode, noSharedGmem, open, PAGE, skipped, unavailable } from '../helpers.js';

const root = path.resolve(import.meta.dirname, '..', '..');
const U64_MAX = (1n << 64n) - 1n;

// ---------------------------------------------------------------------------------------------
// Hostile values and what each kind of parameter must answer to them.

const HOSTILE: [string, unknown][] = [
  // wrong types
  ['string', '4096'], ['object', {}], ['symbol', Symbol('hostile')], ['null', null], ['undefined', undefined],
  ['array', [4096]], ['function', () => 4096], ['boolean', true], ['boxed number', new Number(4096)],
  ['valueOf object', { valueOf: () => 4096 }],
  // numbers that are no u64 / no integer in range
  ['NaN', NaN], ['Infinity', Infinity], ['-Infinity', -Infinity], ['-1', -1], ['1.5', 1.5], ['2**53', 2 ** 53],
  // bigints outside [0, 2^64-1]
  ['-1n', -1n], ['2n**64n', 2n ** 64n], ['2n**64n+1n', 2n ** 64n + 1n],
];

type Want = 'TypeError' | 'RangeError' | undefined; // undefined: a valid value for the parameter

type Kind =
  | { t: 'u64'; opt?: boolean }
  | { t: 'int'; min: number; max: number; opt?: boolean }
  | { t: 'bool'; opt?: boolean }
  | { t: 'object'; opt?: boolean }
  | { t: 'enum'; values: readonly string[]; opt?: boolean; orInt?: [number, number] }
  | { t: 'string'; opt?: boolean }
  | { t: 'instance'; of: abstract new (...a: never[]) => unknown; opt?: boolean }
  | { t: 'ms'; opt?: boolean }
  | { t: 'objects'; opt?: boolean };

const u64: Kind = { t: 'u64' };
const u64opt: Kind = { t: 'u64', opt: true };
const int = (min: number, max: number, opt = false): Kind => ({ t: 'int', min, max, opt });
const boolOpt: Kind = { t: 'bool', opt: true };
const obj: Kind = { t: 'object' };
const objOpt: Kind = { t: 'object', opt: true };
/** An array of options objects (a batch). */
const objects: Kind = { t: 'objects' };
const VM_TYPES = Object.keys(constants.VmType);
const vmType: Kind = { t: 'enum', values: VM_TYPES, opt: true, orInt: [0, 2 ** 32 - 1] };

/** What a parameter of `kind` must do with `v`. */
function want(kind: Kind, v: unknown): Want {
  if (v === undefined) return kind.opt ? undefined : 'TypeError';
  switch (kind.t) {
    case 'u64':
      if (typeof v === 'bigint') return v < 0n || v > U64_MAX ? 'RangeError' : undefined;
      if (typeof v === 'number') return Number.isSafeInteger(v) && v >= 0 ? undefined : 'RangeError';
      return 'TypeError';
    case 'int':
      if (typeof v !== 'number') return 'TypeError';
      return Number.isInteger(v) && v >= kind.min && v <= kind.max ? undefined : 'RangeError';
    case 'bool':
      return typeof v === 'boolean' ? undefined : 'TypeError';
    case 'object':
      // Node's own convention (validateObject): arrays, functions and null are no options object.
      return typeof v === 'object' && v !== null && !Array.isArray(v) ? undefined : 'TypeError';
    case 'enum':
      if (typeof v === 'string') return kind.values.includes(v) ? undefined : 'RangeError';
      if (kind.orInt && typeof v === 'number') {
        return Number.isInteger(v) && v >= kind.orInt[0] && v <= kind.orInt[1] ? undefined : 'RangeError';
      }
      return 'TypeError';
    case 'string':
      return typeof v === 'string' ? undefined : 'TypeError';
    case 'instance':
      return v instanceof kind.of ? undefined : 'TypeError';
    case 'ms':
      if (typeof v !== 'number') return 'TypeError';
      return Number.isFinite(v) && v >= 0 ? undefined : 'RangeError';
    case 'objects':
      return Array.isArray(v) && v.every((x) => typeof x === 'object' && x !== null && !Array.isArray(x)) ? undefined : 'TypeError';
  }
}

type Outcome = { ok: true; value: unknown } | { ok: false; error: unknown };

function attempt(fn: () => unknown): Outcome {
  try {
    return { ok: true, value: fn() };
  } catch (error) {
    return { ok: false, error };
  }
}

async function attemptAsync(fn: () => unknown): Promise<Outcome> {
  try {
    return { ok: true, value: await fn() };
  } catch (error) {
    return { ok: false, error };
  }
}

const describeOutcome = (o: Outcome): string => {
  if (o.ok) return `returned ${typeof o.value === 'object' && o.value !== null ? (o.value.constructor?.name ?? 'object') : String(o.value)}`;
  const e = o.error as { constructor?: { name?: string }; code?: string; message?: string };
  return `threw ${e?.constructor?.name}${e?.code ? ` ${e.code}` : ''}: ${e?.message}`;
};

/** Fixtures that a lookup may hand back: never disposed. */
const keep = new Set<unknown>();

/** Closes whatever a call that should have failed created anyway (so the next cases start clean). */
function dispose(value: unknown): void {
  const v = value as { close?: () => void; delete?: () => void } | undefined;
  try {
    if (v && typeof v === 'object' && !(v instanceof Promise) && !keep.has(v)) {
      if (typeof v.delete === 'function') v.delete();
      else if (typeof v.close === 'function') v.close();
    }
  } catch {
    /* best effort */
  }
}

const matches = (o: Outcome, w: 'TypeError' | 'RangeError'): boolean =>
  !o.ok && (w === 'TypeError' ? o.error instanceof TypeError : o.error instanceof RangeError);

/**
 * A method under test: `call(...args)` with `valid` arguments of the given kinds. Each
 * argument in turn is replaced by every hostile value; the call must throw what `want` says.
 */
interface Spec {
  name: string;
  kinds: Kind[];
  valid: () => unknown[];
  call: (...args: unknown[]) => unknown;
  async?: boolean;
}

async function mismatches(spec: Spec): Promise<string[]> {
  const out: string[] = [];
  for (let i = 0; i < spec.kinds.length; i++) {
    for (const [label, v] of HOSTILE) {
      const w = want(spec.kinds[i]!, v);
      if (w === undefined) continue;
      const args = spec.valid();
      args[i] = v;
      const o = spec.async ? await attemptAsync(() => spec.call(...args)) : attempt(() => spec.call(...args));
      if (o.ok) dispose(o.value);
      if (!matches(o, w)) out.push(`${spec.name} arg ${i} = ${label}: want ${w}, ${describeOutcome(o)}`);
    }
  }
  return out;
}

/** Asserts `fn` throws a KvmError with `code` (sync or as a rejection). */
async function expectKvmCode(fn: () => unknown, code: string, label: string): Promise<KvmError> {
  const o = await attemptAsync(fn);
  expect(o.ok ? `${label}: returned` : o.error instanceof KvmError ? `${label}: KvmError ${o.error.code}` : `${label}: ${describeOutcome(o)}`).toBe(
    `${label}: KvmError ${code}`,
  );
  return (o as { error: KvmError }).error;
}

// ---------------------------------------------------------------------------------------------
// The typed API, on this project's backend.

describe.skipIf(unavailable)(`typed API under abuse (${backendName}: ${unavailable ?? 'available'})`, () => {
  let kvm: Kvm;
  let vm: Vm;
  let gmem: GuestMemfd; // mmap + initShared, 2 MiB
  let plain: GuestMemfd; // neither
  let map: Mapping;
  let slot: Memslot; // gmem [0, 1 MiB) at gpa 0, through its own mapping
  let cpu: Vcpu;

  beforeAll(() => {
    kvm = open();
    vm = kvm.createVm();
    // Where default VMs have no host-accessible gmem (6.12), a flag-less gmem stands in, and
    // shared memory for its mapping and slot: the arguments are checked before any of them.
    gmem = noSharedGmem ? vm.createGuestMemfd({ size: 2n * MiB }) : vm.createGuestMemfd({ size: 2n * MiB, mmap: true, initShared: true });
    plain = vm.createGuestMemfd({ size: 2n * MiB });
    map = noSharedGmem ? vm.createSharedMemory({ size: 2n * MiB }) : gmem.map();
    slot = noSharedGmem ? vm.memslots.add({ guestPhysAddr: 0n, size: MiB, userspace: map }) : vm.memslots.add({ guestPhysAddr: 0n, size: MiB, guestMemfd: gmem });
    cpu = vm.createVcpu(0);
    for (const x of [kvm, vm, gmem, plain, map, slot, cpu]) keep.add(x);
  });
  afterAll(() => {
    vm?.close();
    kvm?.close();
  });

  /** Every public method with its parameter kinds (fields of option objects as their own rows). */
  const specs = (): Spec[] => [
    // openKvm
    { name: 'openKvm(options)', kinds: [objOpt], valid: () => [{ backend: backendName, path: devicePath }], call: (o) => openKvm(o as never) },
    { name: 'openKvm({path})', kinds: [{ t: 'string', opt: true }], valid: () => [devicePath], call: (p) => openKvm({ backend: backendName, path: p as string }) },
    { name: 'openKvm({backend})', kinds: [{ t: 'enum', values: ['auto', 'kvm', 'simulated'], opt: true }], valid: () => [backendName], call: (b) => openKvm({ backend: b as never, path: devicePath }) },
    { name: 'openKvm({precheck})', kinds: [boolOpt], valid: () => [true], call: (p) => openKvm({ backend: backendName, path: devicePath, precheck: p as boolean }) },
    // Kvm
    { name: 'kvm.checkExtension(cap)', kinds: [int(-(2 ** 31), 2 ** 31 - 1)], valid: () => [constants.Cap.GUEST_MEMFD], call: (c) => kvm.checkExtension(c as number) },
    { name: 'kvm.capabilities(options)', kinds: [objOpt], valid: () => [{}], call: (o) => kvm.capabilities(o as never) },
    { name: 'kvm.capabilities({vmType})', kinds: [vmType], valid: () => ['default'], call: (t) => kvm.capabilities({ vmType: t as never }) },
    { name: 'kvm.createVm(options)', kinds: [objOpt], valid: () => [{}], call: (o) => kvm.createVm(o as never) },
    { name: 'kvm.createVm({type})', kinds: [vmType], valid: () => ['default'], call: (t) => kvm.createVm({ type: t as never }) },
    // Vm
    { name: 'vm.checkExtension(cap)', kinds: [int(-(2 ** 31), 2 ** 31 - 1)], valid: () => [constants.Cap.GUEST_MEMFD], call: (c) => vm.checkExtension(c as number) },
    { name: 'vm.createGuestMemfd(options)', kinds: [obj], valid: () => [{ size: PAGE }], call: (o) => vm.createGuestMemfd(o as never) },
    {
      name: 'vm.createGuestMemfd({size, mmap, initShared, flags})',
      kinds: [u64, boolOpt, boolOpt, u64opt],
      valid: () => [PAGE, true, true, 0n],
      call: (size, mmap, initShared, flags) => vm.createGuestMemfd({ size, mmap, initShared, flags } as never),
    },
    { name: 'vm.setMemoryAttributes(gpa, size, attributes)', kinds: [u64, u64, u64], valid: () => [0n, PAGE, 0n], call: (a, b, c) => vm.setMemoryAttributes(a as never, b as never, c as never) },
    { name: 'vm.setPrivate(gpa, size)', kinds: [u64, u64], valid: () => [0n, PAGE], call: (a, b) => vm.setPrivate(a as never, b as never) },
    { name: 'vm.setShared(gpa, size)', kinds: [u64, u64], valid: () => [0n, PAGE], call: (a, b) => vm.setShared(a as never, b as never) },
    { name: 'vm.createVcpu(id)', kinds: [int(0, 2 ** 32 - 1)], valid: () => [1], call: (id) => vm.createVcpu(id as number) },
    // vm.memory
    { name: 'vm.memory.read(gpa, length)', kinds: [u64, int(0, 2 ** 32)], valid: () => [0n, 1], call: (g, n) => vm.memory.read(g as never, n as number) },
    { name: 'vm.memory.write(gpa, bytes)', kinds: [u64, { t: 'instance', of: Uint8Array }], valid: () => [0n, Uint8Array.of(1)], call: (g, b) => vm.memory.write(g as never, b as Uint8Array) },
    // vm.memslots
    { name: 'memslots.get(id, asId)', kinds: [int(0, 0xffff), int(0, 0xffff, true)], valid: () => [0, 0], call: (i, a) => vm.memslots.get(i as number, a as number) },
    { name: 'memslots.find(gpa, asId)', kinds: [u64, int(0, 0xffff, true)], valid: () => [0n, 0], call: (g, a) => vm.memslots.find(g as never, a as number) },
    { name: 'memslots.translate(gpa, asId)', kinds: [u64, int(0, 0xffff, true)], valid: () => [0n, 0], call: (g, a) => vm.memslots.translate(g as never, a as number) },
    { name: 'memslots.reverse(gmem, offset)', kinds: [{ t: 'instance', of: GuestMemfd }, u64], valid: () => [gmem, 0n], call: (g, o) => vm.memslots.reverse(g as GuestMemfd, o as never) },
    { name: 'memslots.guestRanges(gmem, start, end)', kinds: [{ t: 'instance', of: GuestMemfd }, u64, u64], valid: () => [gmem, 0n, PAGE], call: (g, s, e) => vm.memslots.guestRanges(g as GuestMemfd, s as never, e as never) },
    { name: 'memslots.boundTo(gmem)', kinds: [{ t: 'instance', of: GuestMemfd }], valid: () => [gmem], call: (g) => vm.memslots.boundTo(g as GuestMemfd) },
    { name: 'memslots.add(options)', kinds: [obj], valid: () => [{ guestPhysAddr: 64n * MiB, size: PAGE, guestMemfd: gmem, guestMemfdOffset: MiB }], call: (o) => vm.memslots.add(o as never) },
    {
      name: 'memslots.add({slot, asId, guestPhysAddr, size, guestMemfd, guestMemfdOffset, userspaceOffset, readonly, logDirtyPages})',
      kinds: [int(0, 0xffff, true), int(0, 0xffff, true), u64, u64, { t: 'instance', of: GuestMemfd, opt: true }, u64opt, u64opt, boolOpt, boolOpt],
      valid: () => [5, 0, 64n * MiB, PAGE, gmem, MiB, undefined, false, false],
      call: (slot, asId, guestPhysAddr, size, guestMemfd, guestMemfdOffset, userspaceOffset, readonly, logDirtyPages) =>
        vm.memslots.add({ slot, asId, guestPhysAddr, size, guestMemfd, guestMemfdOffset, userspaceOffset, readonly, logDirtyPages } as never),
    },
    {
      name: 'memslots.add({userspace})',
      kinds: [{ t: 'instance', of: Mapping }],
      valid: () => [map],
      call: (userspace) => vm.memslots.add({ guestPhysAddr: 64n * MiB, size: PAGE, userspace, userspaceOffset: MiB } as never),
    },
    { name: 'memslots.delete(id, asId)', kinds: [int(0, 0xffff), int(0, 0xffff, true)], valid: () => [7, 0], call: (i, a) => vm.memslots.delete(i as number, a as number) },
    { name: 'memslots.addMany(list)', kinds: [objects], valid: () => [[{ guestPhysAddr: 64n * MiB, size: PAGE, guestMemfd: gmem, guestMemfdOffset: MiB }]], call: (l) => vm.memslots.addMany(l as never) },
    {
      name: 'memslots.addMany([{slot, asId, guestPhysAddr, size, guestMemfd, guestMemfdOffset, userspaceOffset, readonly, logDirtyPages}])',
      kinds: [int(0, 0xffff, true), int(0, 0xffff, true), u64, u64, { t: 'instance', of: GuestMemfd, opt: true }, u64opt, u64opt, boolOpt, boolOpt],
      valid: () => [5, 0, 64n * MiB, PAGE, gmem, MiB, undefined, false, false],
      call: (slot, asId, guestPhysAddr, size, guestMemfd, guestMemfdOffset, userspaceOffset, readonly, logDirtyPages) =>
        vm.memslots.addMany([{ slot, asId, guestPhysAddr, size, guestMemfd, guestMemfdOffset, userspaceOffset, readonly, logDirtyPages } as never]),
    },
    { name: 'memslots.deleteMany([id], asId)', kinds: [int(0, 0xffff), int(0, 0xffff, true)], valid: () => [7, 0], call: (i, a) => vm.memslots.deleteMany([i as number], a as number) },
    // vm.attributes
    { name: 'attributes.get(gpa)', kinds: [u64], valid: () => [0n], call: (g) => vm.attributes.get(g as never) },
    { name: 'attributes.isPrivate(gpa)', kinds: [u64], valid: () => [0n], call: (g) => vm.attributes.isPrivate(g as never) },
    { name: 'attributes.ranges(start, end)', kinds: [u64opt, u64opt], valid: () => [0n, MiB], call: (s, e) => vm.attributes.ranges(s as never, e as never) },
    // GuestMemfd
    { name: 'gmem.allocate(offset, length)', kinds: [u64, u64], valid: () => [0n, PAGE], call: (o, l) => plain.allocate(o as never, l as never) },
    { name: 'gmem.punchHole(offset, length)', kinds: [u64, u64], valid: () => [MiB, PAGE], call: (o, l) => plain.punchHole(o as never, l as never) },
    { name: 'gmem.map(options)', kinds: [objOpt], valid: () => [{ length: PAGE }], call: (o) => gmem.map(o as never) },
    { name: 'gmem.map({offset, length})', kinds: [u64opt, u64opt], valid: () => [0n, PAGE], call: (offset, length) => gmem.map({ offset, length } as never) },
    // Mapping
    { name: 'mapping.view(offset, length)', kinds: [u64, u64], valid: () => [0n, 8n], call: (o, l) => map.view(o as never, l as never) },
    // Vcpu
    { name: 'vcpu.setRegs(regs)', kinds: [obj], valid: () => [{}], call: (r) => cpu.setRegs(r as never) },
    { name: 'vcpu.setRegs({rip})', kinds: [u64opt], valid: () => [0x1000n], call: (rip) => cpu.setRegs({ rip: rip as never }) },
    { name: 'vcpu.setSregs(update)', kinds: [obj], valid: () => [{}], call: (u) => cpu.setSregs(u as never) },
    { name: 'vcpu.setSregs({cr0})', kinds: [u64opt], valid: () => [undefined], call: (cr0) => cpu.setSregs({ cr0: cr0 as never }) },
    { name: 'vcpu.setSregs({cs})', kinds: [objOpt], valid: () => [{}], call: (cs) => cpu.setSregs({ cs: cs as never }) },
    {
      name: 'vcpu.setSregs({cs: {base, limit, selector, present}})',
      kinds: [u64opt, int(0, 0xffffffff, true), int(0, 0xffff, true), int(0, 0xff, true)],
      valid: () => [undefined, undefined, undefined, undefined],
      call: (base, limit, selector, present) => cpu.setSregs({ cs: { base, limit, selector, present } as never }),
    },
    { name: 'vcpu.setSregs({gdt})', kinds: [objOpt], valid: () => [{}], call: (gdt) => cpu.setSregs({ gdt: gdt as never }) },
    { name: 'vcpu.setSregs({gdt: {base, limit}})', kinds: [u64opt, int(0, 0xffff, true)], valid: () => [undefined, undefined], call: (base, limit) => cpu.setSregs({ gdt: { base, limit } as never }) },
    { name: 'vcpu.preFaultMemory(gpa, size)', kinds: [u64, u64], valid: () => [0n, PAGE], call: (g, s) => cpu.preFaultMemory(g as never, s as never) },
    { name: 'vcpu.run(options)', kinds: [objOpt], valid: () => [{ timeoutMs: 0 }], call: (o) => cpu.run(o as never), async: true },
    { name: 'vcpu.run({timeoutMs})', kinds: [{ t: 'ms', opt: true }], valid: () => [0], call: (t) => cpu.run({ timeoutMs: t as never }), async: true },
    { name: 'vcpu.run({signal})', kinds: [{ t: 'instance', of: AbortSignal, opt: true }], valid: () => [undefined], call: (s) => cpu.run({ timeoutMs: 0, signal: s as never }), async: true },
  ];

  // One test per method, listing every hostile value it mishandled.
  const names = specs().map((s) => s.name); // (the closures run only inside the tests)
  test.each(names)('%s: hostile arguments throw TypeError / RangeError', async (name) => {
    const spec = specs().find((s) => s.name === name)!;
    expect(await mismatches(spec)).toEqual([]);
  });

  test('huge sizes are refused with the kernel code, and nothing is created', async () => {
    for (const size of [U64_MAX, 1n << 63n, (1n << 64n) - PAGE, BigInt(2 ** 53 - 1)]) {
      await expectKvmCode(() => vm.createGuestMemfd({ size }), 'EINVAL', `createGuestMemfd(size ${size})`);
    }
    for (const [o, l] of [[0n, U64_MAX], [U64_MAX - PAGE + 1n, PAGE], [0n, 1n << 63n]] as const) {
      await expectKvmCode(() => plain.allocate(o, l), 'EINVAL', `allocate(${o}, ${l})`);
    }
    expect(() => gmem.map({ length: U64_MAX })).toThrow(RangeError);
    expect(() => gmem.map({ offset: U64_MAX, length: PAGE })).toThrow(RangeError);
    expect(() => map.view(0n, U64_MAX)).toThrow(RangeError);
    expect(() => map.view(U64_MAX, 1n)).toThrow(RangeError);
    expect(() => vm.memory.read(0n, 2 ** 32 + 1)).toThrow(RangeError);
    const before = vm.memslots.list();
    await expectKvmCode(() => vm.memslots.add({ guestPhysAddr: U64_MAX - PAGE + 1n, size: PAGE, guestMemfd: gmem, guestMemfdOffset: MiB }), 'EINVAL', 'slot at the top of the u64 space');
    await expectKvmCode(() => vm.memslots.add({ guestPhysAddr: 1n << 40n, size: 1n << 62n, guestMemfd: gmem, guestMemfdOffset: MiB }), 'EINVAL', 'slot of 2^62 bytes');
    expect(vm.memslots.list()).toEqual(before);
  });

  test.skipIf(noSharedGmem)(`mappings larger than 4 GiB: bytes is a RangeError; view() and vm.memory reach every byte (MAX_VIEW)${skipped(noSharedGmem)}`, () => {
    const size = 8n << 30n;
    const far = (1n << 32n) + 0x1000n; // beyond what one typed array spans
    const problems: string[] = [];
    const step = <T>(label: string, fn: () => T): T | undefined => {
      const o = attempt(fn);
      if (!o.ok) problems.push(`${label}: ${describeOutcome(o)}`);
      return o.ok ? (o.value as T) : undefined;
    };
    using big = vm.createGuestMemfd({ size, mmap: true, initShared: true });
    const m = step('map() of the 8 GiB gmem', () => big.map());
    if (m) {
      expect(() => m.bytes).toThrow(RangeError); // as documented: use view()
      const v = step(`view(${far}, 8)`, () => m.view(far, 8));
      if (v) {
        v.set([1, 2, 3]);
        const back = step(`view(${far + 1n}, 2)`, () => [...m.view(far + 1n, 2)]);
        if (back && back.join() !== '2,3') problems.push(`view(${far + 1n}, 2) read ${back}`);
      }
      m.close();
    }
    // A slot of the whole 8 GiB through the gmem's own mapping: host access past 4 GiB.
    const s = step('memslots.add(8 GiB slot)', () => vm.memslots.add({ guestPhysAddr: 1n << 34n, size, guestMemfd: big }));
    if (s) {
      step(`memory.write(slot + ${far})`, () => vm.memory.write(s.guestPhysAddr + far, Uint8Array.of(0x77)));
      const r = step(`memory.read(slot + ${far})`, () => vm.memory.read(s.guestPhysAddr + far, 1)[0]);
      if (r !== undefined && r !== 0x77) problems.push(`memory.read(slot + ${far}) read ${r}`);
      s.delete();
    }
    expect(problems).toEqual([]);
  });

  test.skipIf(noSharedGmem)(`a Mapping pinned by a live memslot: close() is EBUSY and names the slot; so is its gmem close()${skipped(noSharedGmem)}`, async () => {
    using g = vm.createGuestMemfd({ size: MiB, mmap: true, initShared: true });
    const m = g.map();
    const s = vm.memslots.add({ slot: 77, guestPhysAddr: 256n * MiB, size: MiB, userspace: m });
    const e = await expectKvmCode(() => m.close(), 'EBUSY', 'mapping.close()');
    expect(e.message).toMatch(/\bmemslot 77\b/);
    expect(e.conflict?.slot).toBe(77);
    const ge = await expectKvmCode(() => g.close(), 'EBUSY', 'gmem.close()');
    expect(ge.message).toMatch(/\bmemslot 77\b/);
    expect(m.closed).toBe(false);
    expect(m.view(0, 1).length).toBe(1); // still mapped
    s.delete();
    m.close();
    expect(m.closed).toBe(true);
  });

  test.skipIf(noSharedGmem)(`closed objects answer KvmError EBADF from every method${skipped(noSharedGmem)}`, async () => {
    const k = open();
    const v = k.createVm();
    const g = v.createGuestMemfd({ size: MiB, mmap: true, initShared: true });
    const p = v.createGuestMemfd({ size: MiB });
    const m = g.map();
    const bytes = m.bytes;
    const c = v.createVcpu(0);

    m.close();
    m.close(); // idempotent
    expect(bytes.length).toBe(0); // detached
    await expectKvmCode(() => m.bytes, 'EBADF', 'mapping.bytes');
    await expectKvmCode(() => m.view(0, 1), 'EBADF', 'mapping.view');

    g.close();
    g.close();
    for (const [label, fn] of [
      ['gmem.fd', () => g.fd], ['gmem.allocate', () => g.allocate(0, PAGE)], ['gmem.punchHole', () => g.punchHole(0, PAGE)],
      ['gmem.map', () => g.map()], ['gmem.stat', () => g.stat()],
      ['memslots.add(closed gmem)', () => v.memslots.add({ guestPhysAddr: 0n, size: PAGE, guestMemfd: g })],
    ] as const) {
      await expectKvmCode(fn, 'EBADF', label);
    }

    c.close();
    c.close();
    for (const [label, fn] of [
      ['vcpu.fd', () => c.fd], ['vcpu.getRegs', () => c.getRegs()], ['vcpu.setRegs', () => c.setRegs({ rip: 0n })],
      ['vcpu.getSregs', () => c.getSregs()], ['vcpu.setSregs', () => c.setSregs({ cr0: 0n })],
      ['vcpu.preFaultMemory', () => c.preFaultMemory(0n, PAGE)], ['vcpu.run', () => c.run({ timeoutMs: 10 })],
      ['vcpu.completeRead', () => c.completeRead([0])], ['vcpu.completeHypercall', () => c.completeHypercall(0n)],
    ] as const) {
      await expectKvmCode(fn, 'EBADF', label);
    }

    v.close();
    v.close();
    expect(p.closed).toBe(true); // the VM closed its gmems
    for (const [label, fn] of [
      ['vm.fd', () => v.fd], ['vm.checkExtension', () => v.checkExtension(constants.Cap.GUEST_MEMFD)], ['vm.capabilities', () => v.capabilities()],
      ['vm.createGuestMemfd', () => v.createGuestMemfd({ size: PAGE })], ['vm.setMemoryAttributes', () => v.setMemoryAttributes(0n, PAGE, 0n)],
      ['vm.setPrivate', () => v.setPrivate(0n, PAGE)], ['vm.setShared', () => v.setShared(0n, PAGE)], ['vm.createVcpu', () => v.createVcpu(1)],
      ['vm.memory.read', () => v.memory.read(0n, 1)], ['vm.memory.write', () => v.memory.write(0n, Uint8Array.of(1))],
      ['memslots.add', () => v.memslots.add({ guestPhysAddr: 0n, size: PAGE, guestMemfd: p })], ['memslots.delete', () => v.memslots.delete(0)],
      ['gmem (closed with its VM).allocate', () => p.allocate(0, PAGE)],
    ] as const) {
      await expectKvmCode(fn, 'EBADF', label);
    }

    k.close();
    k.close();
    for (const [label, fn] of [
      ['kvm.fd', () => k.fd], ['kvm.checkExtension', () => k.checkExtension(constants.Cap.GUEST_MEMFD)],
      ['kvm.capabilities', () => k.capabilities()], ['kvm.createVm', () => k.createVm()],
    ] as const) {
      await expectKvmCode(fn, 'EBADF', label);
    }
  });

  test.skipIf(noSharedGmem)(`objects of another VM are refused${skipped(noSharedGmem)}`, async () => {
    using v2 = kvm.createVm();
    using foreign = v2.createGuestMemfd({ size: MiB, mmap: true, initShared: true });
    const before = vm.memslots.list();
    await expectKvmCode(() => vm.memslots.add({ guestPhysAddr: 512n * MiB, size: PAGE, guestMemfd: foreign }), 'EINVAL', 'slot bound to another VM’s gmem');
    const theirs = v2.memslots.add({ guestPhysAddr: 0n, size: PAGE, guestMemfd: foreign });
    expect(() => vm.memslots.delete(theirs)).toThrow(TypeError);
    expect(vm.memslots.list()).toEqual(before);
    expect(theirs.deleted).toBe(false);
    theirs.delete();
  });

  test('options that contradict each other are refused, not ignored: raw with backend or profile; capabilities() of a VM type the host lacks', async () => {
    const raw = kvm.raw;
    expect(() => openKvm({ raw, backend: 'simulated' })).toThrow(/raw is the backend itself/);
    expect(() => openKvm({ raw, profile: 'pvm-6.18' })).toThrow(TypeError);
    expect(() => openKvm({ raw: 1 as never })).toThrow(TypeError);
    const have = kvm.capabilities().vmTypes;
    const lacking = (['sev', 'sev-es', 'snp', 'tdx'] as const).find((t) => !have.includes(t))!;
    await expectKvmCode(() => kvm.capabilities({ vmType: lacking }), 'EINVAL', `capabilities({ vmType: '${lacking}' }) where the host has ${have.join(', ')}`);
    expect(kvm.capabilities({ vmType: 'default' }).scope).toBe('default');
  });

  test('memslots.get() answers only for the slot asked for (no aliasing through coercion or overflow)', () => {
    // The fixture slot is (asId 0, id 0). None of these names it.
    const aliases: [string, () => unknown][] = [
      ['get(0.5)', () => vm.memslots.get(0.5)],
      ['get({})', () => vm.memslots.get({} as never)],
      ['get("0")', () => vm.memslots.get('0' as never)],
      ['get(null)', () => vm.memslots.get(null as never)],
      ['get(0, 65536)', () => vm.memslots.get(0, 65536)],
      ['get(0, 2 ** 32)', () => vm.memslots.get(0, 2 ** 32)],
      ['get(2 ** 32)', () => vm.memslots.get(2 ** 32)],
    ];
    const bad = aliases.flatMap(([label, fn]) => {
      const o = attempt(fn);
      return o.ok && o.value === slot ? [`${label} returned slot (0, 0)`] : [];
    });
    expect(bad).toEqual([]);
  });

  describe('wrong `this`', () => {
    const classes = { Kvm, Vm, GuestMemfd, Mapping, MemslotTable, AttributeBook, Vcpu } as const;
    /** Public members (methods and getters) declared on each prototype. */
    const members = Object.entries(classes).flatMap(([cls, C]) =>
      Reflect.ownKeys(C.prototype)
        .filter((k) => k !== 'constructor' && !(typeof k === 'string' && k.startsWith('_')))
        .map((k) => [cls, k] as [keyof typeof classes, string | symbol]),
    );
    const strangers = (): [string, unknown][] => [
      ['{}', {}], ['Object.create(null)', Object.create(null)], ['a Date', new Date(0)], ['an EventEmitter', new EventEmitter()],
      ['undefined', undefined], ['a number', 42],
    ];

    test.each(members.map(([c, k]) => [`${c}.prototype.${String(k)}`, c, k] as const))('%s throws TypeError on a stranger', async (_n, cls, key) => {
      const d = Object.getOwnPropertyDescriptor(classes[cls].prototype, key)!;
      const bad: string[] = [];
      for (const [label, self] of strangers()) {
        const args = [0n, PAGE, 0n];
        const o = d.get ? attempt(() => d.get!.call(self)) : await attemptAsync(() => Reflect.apply(d.value as (...a: unknown[]) => unknown, self, args));
        if (!matches(o, 'TypeError')) bad.push(`this = ${label}: ${describeOutcome(o)}`);
      }
      expect(bad).toEqual([]);
    });

    test('methods of one library object applied to an object of another class throw TypeError', async () => {
      const instances = (): Record<keyof typeof classes, object> => ({ Kvm: kvm, Vm: vm, GuestMemfd: plain, Mapping: map, MemslotTable: vm.memslots, AttributeBook: vm.attributes, Vcpu: cpu });
      const bad: string[] = [];
      for (const [cls, key] of members) {
        // [Symbol.dispose]() is `this.close()`: duck-typed on purpose, it would close the other object.
        if (key === Symbol.dispose || key === 'close') continue;
        const d = Object.getOwnPropertyDescriptor(classes[cls].prototype, key)!;
        for (const [other, self] of Object.entries(instances())) {
          if (other === cls) continue;
          const o = d.get ? attempt(() => d.get!.call(self)) : await attemptAsync(() => Reflect.apply(d.value as (...a: unknown[]) => unknown, self, [0n, PAGE, 0n]));
          if (o.ok) dispose(o.value);
          if (!matches(o, 'TypeError')) bad.push(`${cls}.prototype.${String(key)} on a ${other}: ${describeOutcome(o)}`);
        }
      }
      expect(bad).toEqual([]);
      // the objects it was applied to are intact
      expect([kvm.closed, vm.closed, plain.closed, map.closed, cpu.closed]).toEqual([false, false, false, false, false]);
    });

    test('vm.memory.read/write are bound to their VM: another `this` changes nothing', () => {
      vm.memory.write(0x123n, Uint8Array.of(0x5a));
      expect([...(Reflect.apply(vm.memory.read, {}, [0x123n, 1]) as Uint8Array)]).toEqual([0x5a]);
      Reflect.apply(vm.memory.write, Object.create(null), [0x123n, Uint8Array.of(0xa5)]);
      expect([...vm.memory.read(0x123n, 1)]).toEqual([0xa5]);
      expect(slot.deleted).toBe(false);
    });
  });

  test.skipIf(noGuestCode)(`run({ timeoutMs }) beyond setTimeout’s range does not turn into a 1 ms timeout${skipped(noGuestCode)}`, async () => {
    using mem = vm.createSharedMemory({ size: MiB }); // (ordinary memory: every kernel runs it)
    using s = vm.memslots.add({ guestPhysAddr: 16n * MiB, size: MiB, userspace: mem });
    using c = vm.createVcpu(9);
    vm.memory.write(16n * MiB + 0x1000n, Uint8Array.of(0xeb, 0xfe)); // jmp $
    c.setSregs({ cs: { base: 16n * MiB, selector: 0 } });
    c.setRegs({ rip: 0x1000n, rflags: 2n });
    for (const timeoutMs of [2 ** 31, 2 ** 53]) {
      const o = await attemptAsync(async () => {
        const run = c.run({ timeoutMs });
        const early = await Promise.race([run, new Promise((r) => setTimeout(() => r('still running'), 300))]);
        c.cancel();
        await run.catch(() => undefined);
        return early;
      });
      // Either refused up front (RangeError), or the guest really runs on past 300 ms.
      const what = o.ok ? (typeof o.value === 'string' ? o.value : `exited ${JSON.stringify((o.value as { reason: string }).reason)}`) : describeOutcome(o);
      expect(matches(o, 'RangeError') || what === 'still running', `timeoutMs ${timeoutMs}: ${what}`).toBe(true);
    }
    expect(s.deleted).toBe(false);
  });
});

// ---------------------------------------------------------------------------------------------
// The native addon, in this process (every call here is one that must throw, not crash).

/** The native tests run once, in the kvm project (the addon is the same in every project). */
const nativeSkip = backendName !== 'kvm' ? `native addon abuse runs in the kvm project (this is ${backendName})` : unavailable;

const addonPath = (): string => addonCandidates().find((f) => existsSync(f)) ?? addonCandidates()[0]!;

type NativeFn = (...args: unknown[]) => unknown;

describe.skipIf(nativeSkip)(`native addon exports under abuse (${nativeSkip ?? 'kvm'})`, () => {
  const a = () => loadAddon() as unknown as Record<string, NativeFn> & { pageSize: number };
  const fd: Kind = int(-(2 ** 31), 2 ** 31 - 1);
  const u32: Kind = int(0, 2 ** 32 - 1);
  const i32: Kind = int(-(2 ** 31), 2 ** 31 - 1);
  const fds = {} as { kvm: number; vm: number; gmem: number; vcpu: number; area: number; shared: number; memfd: number; mappable: number };

  beforeAll(() => {
    const x = a();
    fds.kvm = x.open!('/dev/kvm') as number;
    fds.vm = x.createVm!(fds.kvm, 0) as number;
    // MMAP | INIT_SHARED where a default VM has them; else (6.12) a flag-less gmem, and the
    // memfd is what gets mapped.
    const sharedGmem = ((x.checkExtension!(fds.vm, constants.Cap.GUEST_MEMFD_FLAGS) as number) & 3) === 3;
    fds.gmem = x.createGuestMemfd!(fds.vm, MiB, sharedGmem ? 3n : 0n) as number;
    fds.vcpu = x.createVcpu!(fds.vm, 0) as number;
    fds.area = x.mmap!(fds.vcpu, x.getVcpuMmapSize!(fds.kvm), 0, 3, 1) as number;
    fds.memfd = x.memfdCreate!('kvm-gmem abuse') as number;
    x.ftruncate!(fds.memfd, MiB);
    fds.mappable = sharedGmem ? fds.gmem : fds.memfd;
    fds.shared = x.mmap!(fds.mappable, PAGE, 0, 3, 1) as number;
  });
  afterAll(() => {
    const x = a();
    for (const m of [fds.area, fds.shared]) if (m !== undefined) x.munmap!(m);
    for (const f of [fds.vcpu, fds.gmem, fds.vm, fds.kvm, fds.memfd]) if (f !== undefined) x.close!(f);
  });

  // Region-like objects: each field as its own row (u32 fields are numbers only).
  const region = (fields: Record<string, unknown>) => ({ slot: 0, flags: 0, guestPhysAddr: 0n, memorySize: PAGE, userspaceAddr: 0n, ...fields });

  /** name -> specs over it (each spec names the export it calls). */
  const nativeSpecs = (): (Spec & { fn: string })[] => {
    const x = a();
    const S = (fn: string, name: string, kinds: Kind[], valid: () => unknown[], call?: (...args: unknown[]) => unknown): Spec & { fn: string } => ({
      fn, name, kinds, valid, call: call ?? ((...args) => x[fn]!(...args)),
    });
    return [
      S('setErrorClass', 'setErrorClass(ctor) (non-functions only: a function would replace KvmError)', [{ t: 'instance', of: Function }], () => [KvmError]),
      S('open', 'open(path)', [{ t: 'string' }], () => ['/nonexistent']),
      S('close', 'close(fd)', [fd], () => [-1]),
      S('getApiVersion', 'getApiVersion(fd)', [fd], () => [fds.kvm]),
      S('checkExtension', 'checkExtension(fd, cap)', [fd, i32], () => [fds.kvm, 0]),
      S('createVm', 'createVm(fd, type)', [fd, u32], () => [fds.kvm, 0]),
      S('getVcpuMmapSize', 'getVcpuMmapSize(fd)', [fd], () => [fds.kvm]),
      S('createVcpu', 'createVcpu(vmFd, id)', [fd, u32], () => [fds.vm, 0]),
      S('createGuestMemfd', 'createGuestMemfd(vmFd, size, flags)', [fd, u64, u64], () => [fds.vm, PAGE, 0n]),
      S('setUserMemoryRegion', 'setUserMemoryRegion(vmFd, region)', [fd, obj], () => [fds.vm, region({})]),
      S('setUserMemoryRegion', 'setUserMemoryRegion(vmFd, {slot, flags, guestPhysAddr, memorySize, userspaceAddr})',
        [u32, { ...u32, opt: true }, u64, u64, u64opt], () => [0, 0, 0n, PAGE, 0n],
        (slot, flags, guestPhysAddr, memorySize, userspaceAddr) => x.setUserMemoryRegion!(fds.vm, { slot, flags, guestPhysAddr, memorySize, userspaceAddr })),
      // (The hot call takes the region's fields flat; lib/raw/native.ts reads the object.)
      S('setUserMemoryRegion2', 'setUserMemoryRegion2(vmFd, slot, flags, guestPhysAddr, memorySize, userspaceAddr, guestMemfdOffset, guestMemfd)',
        [fd, u32, { ...u32, opt: true }, u64, u64, u64opt, u64opt, { ...u32, opt: true }], () => [fds.vm, 0, 4, 0n, PAGE, 0n, 0n, 0]),
      // (The batch takes the regions packed, six u64 words each; lib/raw/native.ts packs them.)
      S('setUserMemoryRegions2', 'setUserMemoryRegions2(vmFd, records)', [fd, { t: 'instance', of: BigUint64Array }], () => [fds.vm, new BigUint64Array(0)]),
      S('setMemoryAttributes', 'setMemoryAttributes(vmFd, attributes)', [fd, obj], () => [fds.vm, { address: 0n, size: PAGE, attributes: 0n }]),
      S('setMemoryAttributes', 'setMemoryAttributes(vmFd, {address, size, attributes, flags})', [u64, u64, u64, u64opt], () => [0n, PAGE, 0n, 0n],
        (address, size, attributes, flags) => x.setMemoryAttributes!(fds.vm, { address, size, attributes, flags })),
      S('preFaultMemory', 'preFaultMemory(vcpuFd, range)', [fd, obj], () => [fds.vcpu, { gpa: 0n, size: PAGE }]),
      S('preFaultMemory', 'preFaultMemory(vcpuFd, {gpa, size, flags})', [u64, u64, u64opt], () => [0n, PAGE, 0n],
        (gpa, size, flags) => x.preFaultMemory!(fds.vcpu, { gpa, size, flags })),
      S('fallocate', 'fallocate(fd, mode, offset, length)', [fd, i32, u64, u64], () => [fds.gmem, 1, 0n, PAGE]),
      S('fstat', 'fstat(fd)', [fd], () => [fds.gmem]),
      S('mmap', 'mmap(fd, length, offset, prot, flags)', [fd, u64, u64, i32, i32], () => [fds.mappable, PAGE, 0n, 3, 1]),
      S('munmap', 'munmap(address)', [u64], () => [0n]),
      S('madvise', 'madvise(address, offset, length, advice)', [u64, u64, u64, i32], () => [fds.shared, 0n, PAGE, 4]),
      S('memfdCreate', 'memfdCreate(name)', [{ t: 'string' }], () => ['kvm-gmem abuse'], (name) => x.close!(x.memfdCreate!(name))),
      S('ftruncate', 'ftruncate(fd, length)', [fd, u64], () => [fds.memfd, PAGE]),
      S('enableCap', 'enableCap(vmFd, cap, args)', [fd, u32], () => [fds.vm, 201], (f, cap) => {
        try {
          return x.enableCap!(f, cap, [0n]);
        } catch (e) {
          if ((e as KvmError).code === 'EINVAL') return undefined; // (the kernel's answer for a capability it cannot enable)
          throw e;
        }
      }),
      S('mappingBuffer', 'mappingBuffer(address)', [u64], () => [fds.shared]),
      S('getRegs', 'getRegs(vcpuFd)', [fd], () => [fds.vcpu]),
      S('setRegs', 'setRegs(vcpuFd, bytes)', [fd, { t: 'instance', of: Uint8Array }], () => [fds.vcpu, new Uint8Array(144)]),
      S('getSregs', 'getSregs(vcpuFd)', [fd], () => [fds.vcpu]),
      S('setSregs', 'setSregs(vcpuFd, bytes)', [fd, { t: 'instance', of: Uint8Array }], () => [fds.vcpu, new Uint8Array(312)]),
      S('run', 'run(vcpuFd, runArea)', [fd, u64], () => [fds.vcpu, fds.area], (f, area) => {
        const r = x.run!(f, area) as { done: Promise<number>; token: object };
        x.kick!(r.token);
        return r.done; // (a hostile value that got through: let the run settle so the area is free again)
      }),
      S('kick', 'kick(token) (anything but a run token)', [{ t: 'instance', of: class Token {} }], () => [undefined]),
    ].map((s) => (s.fn === 'run' ? { ...s, async: true } : s));
  };

  test('every function the addon exports has abuse cases here', () => {
    // (getOwnPropertyNames: node-addon-api's instance methods are not enumerable)
    const exported = Object.getOwnPropertyNames(a()).filter((k) => typeof a()[k] === 'function').sort();
    const covered = [...new Set(nativeSpecs().map((s) => s.fn))].sort();
    expect(covered).toEqual(exported);
    expect(typeof a().pageSize).toBe('number');
  });

  test.each(
    // (names only: the specs need the addon, which loads in the test)
    [
      'setErrorClass', 'open', 'close', 'getApiVersion', 'checkExtension', 'createVm', 'getVcpuMmapSize', 'createVcpu',
      'createGuestMemfd', 'setUserMemoryRegion', 'setUserMemoryRegion2', 'setUserMemoryRegions2', 'setMemoryAttributes', 'preFaultMemory',
      'fallocate', 'fstat', 'mmap', 'munmap', 'madvise', 'memfdCreate', 'ftruncate', 'enableCap', 'mappingBuffer', 'getRegs', 'setRegs', 'getSregs', 'setSregs', 'run', 'kick',
    ],
  )('%s: hostile arguments throw TypeError / RangeError', async (fn) => {
    const specs = nativeSpecs().filter((s) => s.fn === fn);
    const bad: string[] = [];
    for (const s of specs) {
      const kinds = s.kinds.map((k) => (fn === 'kick' ? { ...k, opt: false } : k));
      bad.push(...(await mismatches({ ...s, kinds })));
    }
    // setErrorClass replaced nothing
    expect(() => a().close!(-1)).toThrow(KvmError);
    expect(bad).toEqual([]);
  });

  test('fd -1, 99999 and fds the addon did not open (stdio) are KvmError EBADF for every fd-taking export', async () => {
    const x = a();
    for (const bad of [-1, 99999, 2 ** 31 - 1, 0, 1, 2]) {
      const calls: [string, () => unknown][] = [
        ['close', () => x.close!(bad)],
        ['getApiVersion', () => x.getApiVersion!(bad)],
        ['checkExtension', () => x.checkExtension!(bad, constants.Cap.GUEST_MEMFD)],
        ['createVm', () => x.createVm!(bad, 0)],
        ['getVcpuMmapSize', () => x.getVcpuMmapSize!(bad)],
        ['createVcpu', () => x.createVcpu!(bad, 0)],
        ['createGuestMemfd', () => x.createGuestMemfd!(bad, PAGE, 0n)],
        ['setUserMemoryRegion', () => x.setUserMemoryRegion!(bad, region({}))],
        ['setUserMemoryRegion2', () => x.setUserMemoryRegion2!(bad, 0, 0, 0n, PAGE, 0n)],
        ['setUserMemoryRegions2', () => x.setUserMemoryRegions2!(bad, new BigUint64Array(0))],
        ['setMemoryAttributes', () => x.setMemoryAttributes!(bad, { address: 0n, size: PAGE, attributes: 0n })],
        ['preFaultMemory', () => x.preFaultMemory!(bad, { gpa: 0n, size: PAGE })],
        ['fallocate', () => x.fallocate!(bad, 1, 0n, PAGE)],
        ['fstat', () => x.fstat!(bad)],
        ['mmap', () => x.mmap!(bad, PAGE, 0n, 3, 1)],
        ['ftruncate', () => x.ftruncate!(bad, PAGE)],
        ['enableCap', () => x.enableCap!(bad, 201, [0n])],
        ['getRegs', () => x.getRegs!(bad)],
        ['setRegs', () => x.setRegs!(bad, new Uint8Array(144))],
        ['getSregs', () => x.getSregs!(bad)],
        ['setSregs', () => x.setSregs!(bad, new Uint8Array(312))],
        ['run', () => x.run!(bad, fds.area)],
      ];
      for (const [name, call] of calls) {
        const e = await expectKvmCode(call, 'EBADF', `${name}(fd ${bad})`);
        expect(e.errno).toBe(9);
      }
    }
    // and a closed fd is no longer one of ours
    const g = x.createGuestMemfd!(fds.vm, PAGE, 0n) as number;
    x.close!(g);
    await expectKvmCode(() => x.fstat!(g), 'EBADF', 'fstat(closed fd)');
    await expectKvmCode(() => x.close!(g), 'EBADF', 'close(closed fd)');
  });

  test('stale, foreign and detached mappings', async () => {
    const x = a();
    const addr = x.mmap!(fds.mappable, PAGE, 0n, 3, 1) as number;
    const buf = x.mappingBuffer!(addr) as ArrayBuffer;
    new Uint8Array(buf)[0] = 0x42;
    expect(x.mappingBuffer!(addr)).toBe(buf); // one buffer per mapping
    expect(x.munmap!(addr)).toBeUndefined();
    expect(buf.byteLength).toBe(0); // detached by munmap
    expect(x.munmap!(addr)).toBeUndefined(); // twice: a no-op
    expect(() => x.mappingBuffer!(addr)).toThrow(RangeError);
    expect(() => x.run!(fds.vcpu, addr)).toThrow(TypeError); // no longer a mapping
    // not an address: an ArrayBuffer (mmap'd or not), a typed array, a DataView
    for (const v of [buf, new ArrayBuffer(8), new ArrayBuffer(0), new Uint8Array(8), new DataView(new ArrayBuffer(8)), x.mappingBuffer!(fds.shared)]) {
      expect(() => x.munmap!(v)).toThrow(TypeError);
      expect(() => x.mappingBuffer!(v)).toThrow(TypeError);
    }
    // an address no mmap() returned (or one inside a mapping) is not a mapping
    for (const v of [0n, 12345n, fds.shared + 1, BigInt(fds.shared) + 2048n]) expect(() => x.mappingBuffer!(v)).toThrow(RangeError);
    expect(x.munmap!(fds.shared + 1)).toBeUndefined(); // unknown address: nothing unmapped
    expect(new Uint8Array(x.mappingBuffer!(fds.shared) as ArrayBuffer)[0]).toBe(0x42); // the live mapping survived
    expect(x.mappingBuffer!(BigInt(fds.shared))).toBe(x.mappingBuffer!(fds.shared)); // a bigint address names it too
    // a kvm_run area in use by a KVM_RUN thread cannot be unmapped under it (EBUSY) until
    // the run has settled
    const area = x.mmap!(fds.vcpu, x.getVcpuMmapSize!(fds.kvm), 0n, 3, 1) as number;
    const r = x.run!(fds.vcpu, area) as { done: Promise<number>; token: object };
    const busy = attempt(() => x.munmap!(area));
    expect(busy.ok ? 'unmapped' : (busy.error as KvmError).code).toBe('EBUSY');
    x.kick!(r.token);
    await r.done;
    expect(x.munmap!(area)).toBeUndefined();
    expect(() => x.mappingBuffer!(area)).toThrow(RangeError);
  });

  test('MAP_FIXED and MAP_FIXED_NOREPLACE are refused (RangeError) before mmap', () => {
    const x = a();
    for (const flags of [0x10 | 1, 0x100000 | 1, -1]) expect(() => x.mmap!(fds.mappable, PAGE, 0n, 3, flags)).toThrow(RangeError);
  });

  test('struct arguments: throwing getters and proxies propagate their own error; NUL in a path is a TypeError', () => {
    const x = a();
    class Trap extends Error {}
    const getter = Object.defineProperty(region({}), 'memorySize', { get: () => { throw new Trap('getter'); } });
    expect(() => x.setUserMemoryRegion!(fds.vm, getter)).toThrow(Trap);
    const proxy = new Proxy({}, { get: () => { throw new Trap('proxy'); } });
    for (const fn of ['setUserMemoryRegion', 'setMemoryAttributes', 'preFaultMemory']) {
      expect(() => x[fn]!(fds.vm, proxy)).toThrow(Trap);
    }
    expect(() => x.open!('/dev/kvm\0/etc/passwd')).toThrow(TypeError);
    const e = (() => { try { x.open!(''); } catch (err) { return err; } })() as KvmError;
    expect(e).toBeInstanceOf(KvmError);
    expect(e.code).toBe('ENOENT');
  });

  test('typed arrays of the wrong size or detached are RangeErrors for setRegs/setSregs', () => {
    const x = a();
    const detached = new Uint8Array(144);
    structuredClone(detached.buffer, { transfer: [detached.buffer] });
    for (const [fn, size] of [['setRegs', 144], ['setSregs', 312]] as const) {
      for (const v of [new Uint8Array(size - 1), new Uint8Array(size + 1), new Uint8Array(0), detached]) {
        expect(() => x[fn]!(fds.vcpu, v)).toThrow(RangeError);
      }
      for (const v of [new ArrayBuffer(size), new DataView(new ArrayBuffer(size)), Array(size).fill(0)]) {
        expect(() => x[fn]!(fds.vcpu, v)).toThrow(TypeError);
      }
    }
  });

  // --- child processes: calls that could take the process down ----------------------------

  /** Runs an ESM script in a fresh node with the addon at ADDON; returns the child's result. */
  function child(script: string, env: Record<string, string> = {}, timeout = 60_000) {
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], {
      cwd: root, encoding: 'utf8', timeout, maxBuffer: 64 << 20,
      env: { ...process.env, ADDON: addonPath(), ...env },
    });
    const tail = (s: string) => s.split('\n').slice(-25).join('\n');
    const last = r.stderr.split('\n').filter((l) => l.startsWith('#')).pop();
    const during = last ? `, during call ${last}` : '';
    return {
      status: r.status, signal: r.signal, stdout: r.stdout, stderr: r.stderr,
      why: `child exited with status ${r.status}, signal ${r.signal}${during}\n--- stderr (tail) ---\n${tail(r.stderr)}\n--- stdout (tail) ---\n${tail(r.stdout)}`,
    };
  }

  const PRELUDE = `
    import { createRequire } from 'node:module';
    const require = createRequire(import.meta.url);
    const a = require(process.env.ADDON);
    class KvmError extends Error { constructor(message, init) { super(message); this.name = 'KvmError'; Object.assign(this, init); } }
    a.setErrorClass(KvmError);
    const classify = (e) => e instanceof KvmError ? 'KvmError ' + e.code : e instanceof TypeError ? 'TypeError' : e instanceof RangeError ? 'RangeError' : 'UNEXPECTED ' + (e?.constructor?.name ?? typeof e) + ': ' + (e?.message ?? String(e));
    const attempt = (f) => { try { f(); return 'ok'; } catch (e) { return classify(e); } };
    // names the call about to be made on stderr (a crash then names it: see child())
    const { writeSync: _w } = await import('node:fs');
    const step = (label) => _w(2, '#' + label + '\\n');
  `;

  test('hammer: ~2000 random hostile argument lists over every export; the child exits 0 with no signal', () => {
    const r = child(PRELUDE + HAMMER, { HAMMER_CALLS: '2000', HAMMER_SEED: '20261121' }, 120_000);
    const summary = /^SUMMARY (.*)$/m.exec(r.stdout)?.[1];
    if (summary) console.log(`native hammer: ${summary}`);
    expect(r.signal, r.why).toBeNull();
    expect(r.status, r.why).toBe(0);
    const s = JSON.parse(summary!) as { calls: number; unexpected: string[]; perFunction: Record<string, number> };
    expect(s.calls).toBe(2000);
    expect(s.unexpected).toEqual([]);
    // every export was called
    expect(Object.keys(s.perFunction).sort()).toEqual(Object.getOwnPropertyNames(a()).filter((k) => typeof a()[k] === 'function').sort());
  });

  test('setRegs/setSregs with a Uint8Array over a SharedArrayBuffer throw or work; they must not crash', () => {
    const r = child(PRELUDE + `
      const kvm = a.open('/dev/kvm'); const vm = a.createVm(kvm, 0); const cpu = a.createVcpu(vm, 0);
      for (const [name, fd] of [['a vCPU fd', cpu], ['fd -1', -1]]) {
        step('setRegs(' + name + ', Uint8Array over a SharedArrayBuffer(144))');
        console.log('setRegs', name, attempt(() => a.setRegs(fd, new Uint8Array(new SharedArrayBuffer(144)))));
        step('setSregs(' + name + ', Uint8Array over a SharedArrayBuffer(312))');
        console.log('setSregs', name, attempt(() => a.setSregs(fd, new Uint8Array(new SharedArrayBuffer(312)))));
        const wasm = new WebAssembly.Memory({ initial: 1, maximum: 1, shared: true });
        step('setRegs(' + name + ', Uint8Array over a shared WebAssembly.Memory)');
        console.log('setRegs wasm', name, attempt(() => a.setRegs(fd, new Uint8Array(wasm.buffer, 0, 144))));
      }
      console.log('survived');
    `);
    expect(r.signal, r.why).toBeNull();
    expect(r.status, r.why).toBe(0);
    expect(r.stdout).toMatch(/survived/);
    expect(r.stdout).not.toMatch(/UNEXPECTED/);
  });

  test('run() with a runArea that is not a writable kvm_run mapping: refused, or kick() survives', () => {
    // A guest that spins (jmp $ at the reset vector), so KVM_RUN lasts until kicked.
    const r = child(PRELUDE + `
      const mode = process.env.AREA;
      const kvm = a.open('/dev/kvm'); const vm = a.createVm(kvm, 0);
      const g = a.memfdCreate('code'); // (ordinary memory: every kernel runs it)
      a.ftruncate(g, 0x10000);
      const code = a.mmap(g, 0x10000, 0, 3, 1);
      new Uint8Array(a.mappingBuffer(code)).set([0xeb, 0xfe], 0xfff0);
      a.setUserMemoryRegion(vm, { slot: 0, guestPhysAddr: 0xffff0000n, memorySize: 0x10000n, userspaceAddr: code });
      const cpu = a.createVcpu(vm, 0);
      const size = a.getVcpuMmapSize(kvm);
      const areas = {
        'read-only kvm_run': () => a.mmap(cpu, size, 0, 1, 1),
        'read-only memfd page': () => a.mmap(g, 0x1000, 0, 1, 1),
        'PROT_NONE anonymous page': () => a.mmap(-1, 4096, 0, 0, 0x22),
      };
      for (const [name, make] of Object.entries(areas)) {
        let r;
        step('run(vCPU spinning in jmp $, ' + name + ')');
        const o = attempt(() => { r = a.run(cpu, make()); });
        console.log(name, 'run:', o);
        if (!r) continue;
        await new Promise((res) => setTimeout(res, 100));
        step('kick() of that run');
        console.log(name, 'kick:', attempt(() => a.kick(r.token)));
        console.log(name, 'errno:', await r.done);
      }
      console.log('survived');
      process.exit(0);
    `, {}, 30_000);
    expect(r.signal, r.why).toBeNull();
    expect(r.status, r.why).toBe(0);
    expect(r.stdout).toMatch(/survived/);
  });

  test('setErrorClass is the loader\'s, once: later calls (hostile constructors too) are TypeErrors and change nothing', () => {
    const r = child(PRELUDE + `
      const ctors = {
        KvmError,
        arrow: () => 0,
        throwing: class { constructor() { throw new RangeError('ctor throws'); } },
        'returns a non-Error': function () { return { not: 'an error' }; },
        'bound function': function () {}.bind(null),
        'reentrant proxy': new Proxy(function () {}, { construct() { try { a.close(-1); } catch {} return new Error('proxied'); } }),
      };
      for (const [name, C] of Object.entries(ctors)) {
        console.log(name, '->', attempt(() => a.setErrorClass(C)));
        console.log(name, 'after ->', attempt(() => a.close(-1)));
      }
      console.log('survived');
    `);
    expect(r.signal, r.why).toBeNull();
    expect(r.status, r.why).toBe(0);
    expect(r.stdout).toMatch(/survived/);
    expect(r.stdout.match(/ -> TypeError/g)?.length).toBe(6);
    expect(r.stdout.match(/after -> KvmError EBADF/g)?.length).toBe(6);
  });
});

/**
 * The hammer (runs in a child after PRELUDE): HAMMER_CALLS calls of random exports with random
 * argument lists drawn from hostile values and from live fds/mappings of a pool that is renewed
 * every 100 calls. Each call is written to stderr before it is made, so a crash names its call.
 * Printed: "SUMMARY {json}"; exit 1 if a call threw something other than TypeError, RangeError,
 * KvmError or the Trap of a hostile getter.
 * The pool's vCPU belongs to a VM whose fd is not in the pool: it gets no memslots, so no
 * KVM_RUN can run guest code for long (a vCPU ioctl would wait for it), and read-only or
 * PROT_NONE mappings never reach run().
 */
const HAMMER = `
  import { writeSync } from 'node:fs';
  const N = Number(process.env.HAMMER_CALLS ?? 2000);
  let seed = (Number(process.env.HAMMER_SEED ?? 1) >>> 0) || 1;
  const rnd = () => { seed ^= seed << 13; seed >>>= 0; seed ^= seed >>> 17; seed ^= seed << 5; seed >>>= 0; return seed / 4294967296; };
  const pick = (xs) => xs[Math.floor(rnd() * xs.length)];
  class Trap extends Error {}
  const fns = Object.getOwnPropertyNames(a).filter((k) => typeof a[k] === 'function').sort();

  let pool = { fds: [], addrs: [], tokens: [] };
  const fresh = []; // mappings the hammer made: for munmap / mappingBuffer only
  const runs = [];
  function renew() {
    const p = { fds: [], addrs: [], tokens: pool.tokens.slice(-8) };
    try {
      const kvm = a.open('/dev/kvm');
      const vm = a.createVm(kvm, 0);
      const lonely = a.createVm(kvm, 0); // the vCPU's VM: not in the pool
      const gmem = a.createGuestMemfd(vm, 1 << 20, 3n);
      const plain = a.createGuestMemfd(vm, 1 << 16, 0n);
      const vcpu = a.createVcpu(lonely, 0);
      p.fds.push(kvm, vm, gmem, plain, vcpu);
      p.vcpu = vcpu;
      p.addrs.push(p.area = a.mmap(vcpu, a.getVcpuMmapSize(kvm), 0, 3, 1), a.mmap(gmem, 1 << 16, 0, 3, 1));
    } catch (e) { writeSync(2, 'renew: ' + e.message + '\\n'); }
    pool = p;
  }

  const S = (label, v) => [label, v];
  const scalars = () => [
    S('undefined', undefined), S('null', null), S('true', true), S('0', 0), S('-0', -0), S('1', 1), S('-1', -1), S('3', 3),
    S('4096', 4096), S('1.5', 1.5), S('NaN', NaN), S('Infinity', Infinity), S('-Infinity', -Infinity), S('2**31-1', 2 ** 31 - 1),
    S('2**31', 2 ** 31), S('-(2**31)', -(2 ** 31)), S('-(2**31)-1', -(2 ** 31) - 1), S('2**32', 2 ** 32), S('2**32-1', 2 ** 32 - 1),
    S('2**33', 2 ** 33), S('2**53-1', 2 ** 53 - 1), S('2**53', 2 ** 53), S('MAX_VALUE', Number.MAX_VALUE), S('MIN_VALUE', Number.MIN_VALUE),
    S('0n', 0n), S('1n', 1n), S('-1n', -1n), S('4096n', 4096n), S('2n**32n', 2n ** 32n), S('2n**63n', 2n ** 63n),
    S('2n**64n-1n', 2n ** 64n - 1n), S('2n**64n', 2n ** 64n), S('2n**64n+1n', 2n ** 64n + 1n), S('-(2n**64n)', -(2n ** 64n)),
    S('""', ''), S('"x"', 'x'), S('"4096"', '4096'), S('"/dev/kvm"', '/dev/kvm'), S('"/nonexistent"', '/nonexistent'),
    S('"a\\\\0b"', 'a\\0b'), S('"/"', '/'), S('symbol', Symbol('s')),
  ];
  const detached = () => { const u = new Uint8Array(144); structuredClone(u.buffer, { transfer: [u.buffer] }); return u; };
  const objects = () => [
    S('{}', {}), S('[]', []), S('[1,2,3]', [1, 2, 3]), S('arrow', () => 1), S('function', function f() {}), S('class', class C {}),
    S('Object.create(null)', Object.create(null)), S('Date', new Date(0)), S('ArrayBuffer(0)', new ArrayBuffer(0)),
    S('ArrayBuffer(144)', new ArrayBuffer(144)), S('Uint8Array(0)', new Uint8Array(0)), S('Uint8Array(144)', new Uint8Array(144)),
    S('Uint8Array(312)', new Uint8Array(312)), S('Uint32Array(36)', new Uint32Array(36)), S('Float64Array(18)', new Float64Array(18)),
    S('DataView(144)', new DataView(new ArrayBuffer(144))), S('detached Uint8Array(144)', detached()), S('Buffer(312)', Buffer.alloc(312)),
    S('Uint8Array(144) at offset 8', new Uint8Array(new ArrayBuffer(160), 8, 144)),
    ...(process.env.HAMMER_NO_SAB ? [] : [S('Uint8Array(SAB 144)', new Uint8Array(new SharedArrayBuffer(144))), S('Uint8Array(SAB 312)', new Uint8Array(new SharedArrayBuffer(312)))]),
    S('throwing proxy', new Proxy({}, { get() { throw new Trap('proxy'); } })),
    S('throwing getter', Object.defineProperty({ slot: 0, guestPhysAddr: 0n, memorySize: 4096n }, 'flags', { get() { throw new Trap('getter'); }, enumerable: true })),
    S('valueOf', { valueOf: () => 4096 }), S('Number(7)', new Number(7)), S('Object(1n)', Object(1n)), S('Promise', Promise.resolve()),
    S('WeakRef', new WeakRef({})), S('Map', new Map()),
  ];
  const FIELDS = ['slot', 'flags', 'guestPhysAddr', 'memorySize', 'userspaceAddr', 'guestMemfdOffset', 'guestMemfd', 'address', 'size', 'attributes', 'gpa'];
  function value(depth = 0) {
    const r = rnd();
    if (r < 0.22) { const f = pick(pool.fds.concat([-1, 99999, 2 ** 31 - 1, -(2 ** 31)])); return S('fd ' + f, f); }
    if (r < 0.32 && pool.addrs.length) { const x = pick(pool.addrs); return pick([S('addr', x), S('addr as bigint', BigInt(x)), S('addr+1', x + 1), S('addr+4096', x + 4096)]); }
    if (r < 0.42 && depth === 0) {
      const o = {}; const labels = [];
      for (const k of FIELDS) if (rnd() < 0.5) { const [l, v] = value(1); o[k] = v; labels.push(k + ': ' + l); }
      return S('{ ' + labels.join(', ') + ' }', o);
    }
    if (r < 0.46 && pool.tokens.length) return S('token', pick(pool.tokens));
    if (r < 0.75) return pick(scalars());
    return pick(objects());
  }

  // Plausible arguments per export, so that calls get past the first check: each argument is
  // the plausible kind with probability 0.6, any hostile value otherwise.
  const typed = () => pick([
    S('Uint8Array(144)', new Uint8Array(144)), S('Uint8Array(312)', new Uint8Array(312)), S('Buffer(144)', Buffer.alloc(144)),
    S('Float64Array(18)', new Float64Array(18)), S('Uint8Array(312) at offset 8', new Uint8Array(new ArrayBuffer(320), 8, 312)),
    S('detached Uint8Array(144)', detached()), S('Uint8Array(10)', new Uint8Array(10)),
    ...(process.env.HAMMER_NO_SAB ? [] : [S('Uint8Array(SAB 144)', new Uint8Array(new SharedArrayBuffer(144))), S('Uint8Array(SAB 312)', new Uint8Array(new SharedArrayBuffer(312)))]),
  ]);
  const ints = [0, 1, 2, 3, 4, 7, 8, 0x10, 0x21, 0x22, 0x100000, 233, 234, 244, -1, 2 ** 31 - 1];
  const u64s = [0, 4096, 4095, 65536, 1 << 20, 2 ** 32, 2 ** 33, 0n, 4096n, 1n << 20n, 1n << 40n, 1n << 63n, (1n << 64n) - 4096n, (1n << 64n) - 1n];
  const plausible = {
    fd: () => { const f = rnd() < 0.85 && pool.fds.length ? pick(pool.fds) : pick([-1, 99999, 0, 1]); return S('fd ' + f, f); },
    int: () => { const v = pick(ints); return S(String(v), v); },
    u64: () => { const v = pick(u64s); return S(typeof v === 'bigint' ? v + 'n' : String(v), v); },
    struct: () => {
      const o = {}; const labels = [];
      for (const k of FIELDS) if (rnd() < 0.7) { const [l, v] = rnd() < 0.7 ? (k === 'guestMemfd' || k === 'slot' || k === 'flags' ? plausible.int() : plausible.u64()) : value(1); o[k] = v; labels.push(k + ': ' + l); }
      return S('{ ' + labels.join(', ') + ' }', o);
    },
    records: () => { const n = Math.floor(rnd() * 3); const w = new BigUint64Array(6 * n); for (let k = 0; k < w.length; k++) w[k] = BigInt(plausible.u64()[1]); return S('BigUint64Array(' + w.length + ')', w); },
    addr: () => pool.addrs.length ? S('addr', pick(pool.addrs)) : value(),
    vcpuFd: () => (pool.vcpu !== undefined && rnd() < 0.7 ? S('vcpu fd ' + pool.vcpu, pool.vcpu) : plausible.fd()),
    runArea: () => (pool.area !== undefined && rnd() < 0.7 ? S('its kvm_run area', pool.area) : plausible.addr()),
    bytes: typed,
    token: () => pool.tokens.length ? S('token', pick(pool.tokens)) : value(),
    ctor: () => pick([S('KvmError', KvmError), S('arrow', () => 0), S('class', class {}), S('function', function () {})]),
    path: () => pick([S('"/dev/kvm"', '/dev/kvm'), S('"/nonexistent"', '/nonexistent'), S('""', ''), S('"/"', '/'), S('"a\\\\0b"', 'a\\0b')]),
  };
  const shapes = {
    setErrorClass: ['ctor'], open: ['path'], close: ['fd'], getApiVersion: ['fd'], checkExtension: ['fd', 'int'], createVm: ['fd', 'int'],
    getVcpuMmapSize: ['fd'], createVcpu: ['fd', 'int'], createGuestMemfd: ['fd', 'u64', 'u64'], setUserMemoryRegion: ['fd', 'struct'],
    setUserMemoryRegion2: ['fd', 'int', 'int', 'u64', 'u64', 'u64', 'u64', 'int'], setUserMemoryRegions2: ['fd', 'records'], setMemoryAttributes: ['fd', 'struct'], preFaultMemory: ['vcpuFd', 'struct'],
    fallocate: ['fd', 'int', 'u64', 'u64'], fstat: ['fd'], mmap: ['fd', 'u64', 'u64', 'int', 'int'], munmap: ['addr'], mappingBuffer: ['addr'],
    getRegs: ['vcpuFd'], setRegs: ['vcpuFd', 'bytes'], getSregs: ['vcpuFd'], setSregs: ['vcpuFd', 'bytes'], run: ['vcpuFd', 'runArea'], kick: ['token'],
    madvise: ['addr', 'u64', 'u64', 'int'], memfdCreate: ['path'], ftruncate: ['fd', 'u64'], enableCap: ['fd', 'int'],
  };

  const outcomes = {}; const perFunction = {}; const unexpected = [];
  renew();
  for (let i = 0; i < N; i++) {
    if (i > 0 && i % 100 === 0) renew();
    const fn = pick(fns);
    perFunction[fn] = (perFunction[fn] ?? 0) + 1;
    const shape = shapes[fn] ?? [];
    const n = rnd() < 0.8 ? shape.length : Math.floor(rnd() * 7);
    const args = []; const labels = [];
    for (let k = 0; k < n; k++) {
      let [l, v] = shape[k] && rnd() < 0.6 ? plausible[shape[k]]() : value();
      if ((fn === 'munmap' || fn === 'mappingBuffer') && k === 0 && fresh.length && rnd() < 0.4) { v = pick(fresh); l = 'fresh mapping'; }
      args.push(v); labels.push(l);
    }
    writeSync(2, '#' + i + ' ' + fn + '(' + labels.join(', ') + ')\\n');
    let out;
    try {
      const v = a[fn](...args);
      out = 'ok';
      if (fn === 'mmap') fresh.push(v);
      if (fn === 'run') { pool.tokens.push(v.token); runs.push(v); }
    } catch (e) {
      out = e instanceof Trap ? 'Trap' : classify(e);
      if (out.startsWith('UNEXPECTED')) unexpected.push('#' + i + ' ' + fn + '(' + labels.join(', ') + '): ' + out);
    }
    outcomes[out] = (outcomes[out] ?? 0) + 1;
  }
  // Let every KVM_RUN settle (kicking them, in case one waits), then unmap what is left.
  const settle = Promise.all(runs.map((r) => r.done));
  const kicker = setInterval(() => runs.forEach((r) => a.kick(r.token)), 5);
  let timer;
  await Promise.race([settle, new Promise((res) => { timer = setTimeout(res, 10000); })]);
  clearTimeout(timer);
  clearInterval(kicker);
  for (const m of fresh) try { a.munmap(m); } catch {}
  console.log('SUMMARY ' + JSON.stringify({ calls: N, runs: runs.length, outcomes, perFunction, unexpected }));
  process.exitCode = unexpected.length ? 1 : 0;
`;
