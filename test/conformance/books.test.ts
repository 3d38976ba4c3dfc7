/**
 * The books against a naive per-page reference model: after any sequence of slot adds and
 * deletes, punch-holes and attribute changes on a small address space, the memslot table
 * (find, translate, reverse), the ranges a punch reports and the attribute map equal the
 * model, and every call succeeded or failed as the model says. Pre-checks are off, so on the
 * kvm project each answer is the kernel's own.
 */
import fc from 'fast-check';
import { describe, expect, test } from 'vitest';
import { constants, KvmError, type GuestMemfd, type Memslot, type Vm } from '../../lib/index.js';
import { noGmem, open, PAGE, skipped, unavailable } from '../helpers.js';

const GPA_PAGES = 48; // guest-physical space in pages
const FILE_PAGES = 24; // each of the two gmems
const PRIVATE = constants.MemoryAttribute.PRIVATE;

type Op =
  | { kind: 'add'; gpa: number; pages: number; file: number; off: number }
  | { kind: 'delete'; id: number }
  | { kind: 'punch'; file: number; off: number; pages: number }
  | { kind: 'attrs'; gpa: number; pages: number; priv: boolean };

const opArb: fc.Arbitrary<Op> = fc.oneof(
  { weight: 4, arbitrary: fc.record({ kind: fc.constant('add' as const), gpa: fc.nat(GPA_PAGES - 1), pages: fc.integer({ min: 1, max: 8 }), file: fc.nat(1), off: fc.nat(FILE_PAGES - 1) }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('delete' as const), id: fc.nat(5) }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('punch' as const), file: fc.nat(1), off: fc.nat(FILE_PAGES + 4), pages: fc.integer({ min: 1, max: 12 }) }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('attrs' as const), gpa: fc.nat(GPA_PAGES - 1), pages: fc.integer({ min: 1, max: 10 }), priv: fc.boolean() }) },
);

interface ModelSlot { id: number; gpa: number; pages: number; file: number; off: number }

/** The reference: one entry per page, the kernel's rules in their plainest form. */
class Model {
  slots = new Map<number, ModelSlot>();
  gpaOwner: (number | undefined)[] = new Array(GPA_PAGES + 16).fill(undefined);
  fileOwner: (number | undefined)[][] = [new Array(FILE_PAGES).fill(undefined), new Array(FILE_PAGES).fill(undefined)];
  attrs: bigint[] = new Array(GPA_PAGES + 16).fill(0n);
  constructor(
    readonly attrSupport: 'none' | 'shared-only' | 'private',
    /** What this kernel answers for a second binding of a file range (EINVAL on 6.18, EEXIST on 7.x). */
    readonly boundCode: string,
  ) {}

  add(o: Extract<Op, { kind: 'add' }>): string {
    let id = 0;
    while (this.slots.has(id)) id++;
    for (let p = o.gpa; p < o.gpa + o.pages; p++) if (this.gpaOwner[p] !== undefined) return 'EEXIST';
    if (o.off + o.pages > FILE_PAGES) return 'EINVAL';
    for (let p = o.off; p < o.off + o.pages; p++) if (this.fileOwner[o.file]![p] !== undefined) return this.boundCode;
    this.slots.set(id, { id, ...o });
    for (let p = o.gpa; p < o.gpa + o.pages; p++) this.gpaOwner[p] = id;
    for (let p = o.off; p < o.off + o.pages; p++) this.fileOwner[o.file]![p] = id;
    return 'ok';
  }
  delete(id: number): string {
    const s = this.slots.get(id);
    if (!s) return 'EINVAL';
    this.slots.delete(id);
    for (let p = s.gpa; p < s.gpa + s.pages; p++) this.gpaOwner[p] = undefined;
    for (let p = s.off; p < s.off + s.pages; p++) this.fileOwner[s.file]![p] = undefined;
    return 'ok';
  }
  /** Guest frame ranges a punch of file pages [off, off+pages) invalidates, per slot. */
  punch(file: number, off: number, pages: number): { id: number; gfnStart: number; gfnEnd: number }[] {
    const out: { id: number; gfnStart: number; gfnEnd: number }[] = [];
    for (let p = off; p < Math.min(off + pages, FILE_PAGES); p++) {
      const id = this.fileOwner[file]![p];
      if (id === undefined) continue;
      const s = this.slots.get(id)!;
      const gfn = s.gpa + (p - s.off);
      const last = out[out.length - 1];
      if (last && last.id === id && last.gfnEnd === gfn) last.gfnEnd++;
      else out.push({ id, gfnStart: gfn, gfnEnd: gfn + 1 });
    }
    return out;
  }
  setAttrs(gpa: number, pages: number, value: bigint): string {
    if (this.attrSupport === 'none') return 'ENOTTY';
    if (value !== 0n && this.attrSupport !== 'private') return 'EINVAL';
    for (let p = gpa; p < gpa + pages; p++) this.attrs[p] = value;
    return 'ok';
  }
}

function outcome(fn: () => void): string {
  try {
    fn();
    return 'ok';
  } catch (e) {
    if (e instanceof KvmError) return e.code;
    throw e;
  }
}

function checkBooks(vm: Vm, model: Model, gmems: GuestMemfd[]): void {
  const page = PAGE;
  const byId = (s: Memslot | undefined) => s?.id;
  for (let p = 0; p < GPA_PAGES + 8; p++) {
    expect(byId(vm.memslots.find(BigInt(p) * page)), `find gpa page ${p}`).toBe(model.gpaOwner[p]);
    const t = vm.memslots.translate(BigInt(p) * page + 5n);
    const s = model.gpaOwner[p] === undefined ? undefined : model.slots.get(model.gpaOwner[p]!);
    if (!s) expect(t).toBeUndefined();
    else {
      expect(t!.guestMemfd).toBe(gmems[s.file]);
      expect(t!.offset).toBe(BigInt(s.off + (p - s.gpa)) * page + 5n);
    }
    expect(vm.attributes.get(BigInt(p) * page), `attributes of page ${p}`).toBe(model.attrs[p]);
  }
  for (let f = 0; f < 2; f++) {
    for (let p = 0; p < FILE_PAGES; p++) {
      const r = vm.memslots.reverse(gmems[f]!, BigInt(p) * page);
      const id = model.fileOwner[f]![p];
      if (id === undefined) expect(r).toBeUndefined();
      else expect(r).toEqual({ slot: vm.memslots.get(id), gpa: BigInt(model.slots.get(id)!.gpa + (p - model.slots.get(id)!.off)) * page });
    }
  }
  expect(vm.memslots.list().map((s) => s.id).sort()).toEqual([...model.slots.keys()].sort());
  // merged attribute ranges: no two adjacent ranges with equal attributes
  const ranges = vm.attributes.ranges();
  for (let i = 1; i < ranges.length; i++) {
    if (ranges[i]!.start === ranges[i - 1]!.end) expect(ranges[i]!.attributes).not.toBe(ranges[i - 1]!.attributes);
  }
}

/** Whether the backend creates sw-protected VMs (the model runs on one where it can). */
function hasPrivateVms(): boolean {
  if (unavailable) return false;
  using kvm = open();
  return kvm.capabilities().vmTypes.includes('sw-protected');
}
// The specs bind gmem slots (KVM_MEM_GUEST_MEMFD): on a sw-protected VM where there is one (it
// always has guest_memfd), else on a default VM, which needs guest_memfd there.
const modelSkip = hasPrivateVms() ? undefined : noGmem;

describe.skipIf(unavailable)('books against a per-page model', () => {
  test.skipIf(modelSkip)(`any sequence of add/delete/punch/attributes keeps the books equal to the model (and to the backend)${skipped(modelSkip)}`, () => {
    using kvm = open({ precheck: false });
    const caps = kvm.capabilities();
    const type = caps.vmTypes.includes('sw-protected') ? 'sw-protected' : 'default';
    const profile = kvm.profile();
    const attrSupport = !profile.memoryAttributesIoctl ? 'none' : type === 'sw-protected' ? 'private' : 'shared-only';
    const boundCode = profile.gmemBoundErrno ?? 'EINVAL';
    fc.assert(
      fc.property(fc.array(opArb, { minLength: 1, maxLength: 25 }), (ops) => {
        using vm = kvm.createVm({ type });
        const gmems = [0, 1].map(() => vm.createGuestMemfd({ size: BigInt(FILE_PAGES) * PAGE }));
        const model = new Model(attrSupport, boundCode);
        for (const op of ops) {
          if (op.kind === 'add') {
            const want = model.add(op);
            const got = outcome(() =>
              vm.memslots.add({ guestPhysAddr: BigInt(op.gpa) * PAGE, size: BigInt(op.pages) * PAGE, guestMemfd: gmems[op.file], guestMemfdOffset: BigInt(op.off) * PAGE }),
            );
            expect(got, JSON.stringify(op)).toBe(want);
          } else if (op.kind === 'delete') {
            expect(outcome(() => vm.memslots.delete(op.id)), JSON.stringify(op)).toBe(model.delete(op.id));
          } else if (op.kind === 'punch') {
            const ranges = gmems[op.file]!.punchHole(BigInt(op.off) * PAGE, BigInt(op.pages) * PAGE);
            expect(ranges.map((r) => ({ id: r.slot.id, gfnStart: Number(r.gfnStart), gfnEnd: Number(r.gfnEnd) })), JSON.stringify(op)).toEqual(model.punch(op.file, op.off, op.pages));
          } else {
            const value = op.priv ? PRIVATE : 0n;
            const got = outcome(() => vm.setMemoryAttributes(BigInt(op.gpa) * PAGE, BigInt(op.pages) * PAGE, value));
            expect(got, JSON.stringify(op)).toBe(model.setAttrs(op.gpa, op.pages, value));
          }
        }
        checkBooks(vm, model, gmems);
      }),
      { numRuns: 60 },
    );
  });

  test.skipIf(noGmem)(`up to the kernel's 32,764 user slots${skipped(noGmem)}`, () => {
    using kvm = open();
    using vm = kvm.createVm();
    using g = vm.createGuestMemfd({ size: BigInt(constants.KVM_USER_MEM_SLOTS) * PAGE });
    for (let i = 0; i < constants.KVM_USER_MEM_SLOTS; i++) {
      vm.memslots.add({ guestPhysAddr: BigInt(i) * 2n * PAGE, size: PAGE, guestMemfd: g, guestMemfdOffset: BigInt(i) * PAGE });
    }
    expect(vm.memslots.size).toBe(constants.KVM_USER_MEM_SLOTS);
    const e = (() => {
      try {
        vm.memslots.add({ guestPhysAddr: 1n << 40n, size: PAGE, guestMemfd: g });
      } catch (err) {
        return err as KvmError;
      }
    })();
    expect(e?.code).toBe('EINVAL'); // no free slot id left
    expect(vm.memslots.find(12345n * 2n * PAGE + 7n)?.id).toBe(12345);
    expect(vm.memslots.find(12345n * 2n * PAGE + PAGE)).toBeUndefined();
    expect(vm.memslots.reverse(g, 30000n * PAGE)?.slot.id).toBe(30000);
    // Deletes spread over the id space (deleting all 32,764 one by one is the kernel's slowest
    // memslot path; the VM's close below ends them all, as the kernel's own test does).
    for (let i = 0; i < constants.KVM_USER_MEM_SLOTS; i += 97) vm.memslots.delete(i);
    expect(vm.memslots.size).toBe(constants.KVM_USER_MEM_SLOTS - Math.ceil(constants.KVM_USER_MEM_SLOTS / 97));
    expect(vm.memslots.find(97n * 2n * PAGE)).toBeUndefined();
    expect(vm.memslots.add({ slot: 97, guestPhysAddr: 97n * 2n * PAGE, size: PAGE, guestMemfd: g, guestMemfdOffset: 97n * PAGE }).id).toBe(97);
  });
});
