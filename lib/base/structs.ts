/**
 * Codecs for the x86 register structs of the KVM UAPI (arch/x86/include/uapi/asm/kvm.h),
 * written once for the typed layer and the simulator:
 *   struct kvm_regs      144 bytes: rax..r15, rip, rflags (u64 each)
 *   struct kvm_segment    24 bytes: base u64 @0, limit u32 @8, selector u16 @12, then u8
 *                        type @14, present, dpl, db, s, l, g, avl, unusable @22, padding @23
 *   struct kvm_dtable     16 bytes: base u64 @0, limit u16 @8, padding
 *   struct kvm_sregs     312 bytes: cs, ds, es, fs, gs, ss, tr, ldt (8 segments @0..191),
 *                        gdt @192, idt @208, cr0, cr2, cr3, cr4, cr8, efer, apic_base
 *                        (u64 @224..279), interrupt_bitmap (4 x u64 @280)
 */
import { toOptions, toU64, toInt, type U64 } from './args.js';

export const REG_NAMES = ['rax', 'rbx', 'rcx', 'rdx', 'rsi', 'rdi', 'rsp', 'rbp', 'r8', 'r9', 'r10', 'r11', 'r12', 'r13', 'r14', 'r15', 'rip', 'rflags'] as const;
/** struct kvm_regs, by name. */
export type Regs = Record<(typeof REG_NAMES)[number], bigint>;
export const REGS_SIZE = 144;

/** struct kvm_segment. */
export interface Segment {
  /** Base address (u64). */
  base: bigint;
  /** Segment limit (u32). */
  limit: number;
  /** Selector (u16). */
  selector: number;
  /** Descriptor type (4 bits; e.g. 11 for an accessed read/execute code segment, or a busy TSS). */
  type: number;
  /** Present bit (0 or 1). */
  present: number;
  /** Descriptor privilege level (0 to 3). */
  dpl: number;
  /** Default operation size bit (D/B): 1 for 32-bit code and stack. */
  db: number;
  /** Descriptor type bit: 1 for code or data, 0 for a system segment. */
  s: number;
  /** 64-bit code segment bit (L). */
  l: number;
  /** Granularity bit: 1 scales the limit by 4 KiB. */
  g: number;
  /** Bit available to software (AVL). */
  avl: number;
  /** KVM's flag for a segment that is unusable (not loaded). */
  unusable: number;
}
/** struct kvm_dtable. */
export interface DescriptorTable {
  /** Base address (u64). */
  base: bigint;
  /** Limit (u16). */
  limit: number;
}
export const SEGMENTS = ['cs', 'ds', 'es', 'fs', 'gs', 'ss', 'tr', 'ldt'] as const;
export const CONTROL = ['cr0', 'cr2', 'cr3', 'cr4', 'cr8', 'efer', 'apicBase'] as const;
/** struct kvm_sregs (the interrupt bitmap is kept as read). */
export type Sregs = Record<(typeof SEGMENTS)[number], Segment> & Record<'gdt' | 'idt', DescriptorTable> & Record<(typeof CONTROL)[number], bigint>;
/** Fields of struct kvm_sregs to change: any subset, with any subset of a segment's or table's
 * fields; u64 values as a bigint or a safe-integer number. */
export type SregsUpdate = { [K in (typeof SEGMENTS)[number]]?: Partial<Segment> } & { [K in 'gdt' | 'idt']?: Partial<DescriptorTable> } & { [K in (typeof CONTROL)[number]]?: U64 };
export const SREGS_SIZE = 312;

const SEGMENT_SIZE = 24;
/** The u8 fields of kvm_segment, from offset 14. */
const SEG_BYTES = ['type', 'present', 'dpl', 'db', 's', 'l', 'g', 'avl', 'unusable'] as const;
const DTABLE = { gdt: 192, idt: 208 } as const;
const CONTROL_AT = 224;

const view = (b: Uint8Array) => new DataView(b.buffer, b.byteOffset, b.byteLength);

export function decodeRegs(b: Uint8Array): Regs {
  const v = view(b);
  return Object.fromEntries(REG_NAMES.map((n, i) => [n, v.getBigUint64(i * 8, true)])) as Regs;
}

/** Writes the given registers into `b` (a kvm_regs as read); the others keep their values. */
export function updateRegs(b: Uint8Array, regs: Partial<Record<keyof Regs, U64>>): void {
  const v = view(b);
  for (const [k, val] of Object.entries(toOptions(regs, 'regs'))) {
    const i = REG_NAMES.indexOf(k as never);
    if (i < 0) throw new TypeError(`unknown register '${k}'`);
    if (val !== undefined) v.setBigUint64(i * 8, toU64(val, k), true);
  }
}

function readSegment(v: DataView, o: number): Segment {
  const s: Record<string, unknown> = { base: v.getBigUint64(o, true), limit: v.getUint32(o + 8, true), selector: v.getUint16(o + 12, true) };
  SEG_BYTES.forEach((k, i) => (s[k] = v.getUint8(o + 14 + i)));
  return s as unknown as Segment;
}

function writeSegment(v: DataView, o: number, seg: Partial<Segment>, name: string): void {
  const s = toOptions(seg, name);
  if (s.base !== undefined) v.setBigUint64(o, toU64(s.base, `${name}.base`), true);
  if (s.limit !== undefined) v.setUint32(o + 8, toInt(s.limit, `${name}.limit`, 0, 0xffffffff), true);
  if (s.selector !== undefined) v.setUint16(o + 12, toInt(s.selector, `${name}.selector`, 0, 0xffff), true);
  SEG_BYTES.forEach((k, i) => {
    if (s[k] !== undefined) v.setUint8(o + 14 + i, toInt(s[k], `${name}.${k}`, 0, 0xff));
  });
}

export function decodeSregs(b: Uint8Array): Sregs {
  const v = view(b);
  const out: Record<string, unknown> = {};
  SEGMENTS.forEach((n, i) => (out[n] = readSegment(v, i * SEGMENT_SIZE)));
  for (const [n, o] of Object.entries(DTABLE)) out[n] = { base: v.getBigUint64(o, true), limit: v.getUint16(o + 8, true) };
  CONTROL.forEach((n, i) => (out[n] = v.getBigUint64(CONTROL_AT + i * 8, true)));
  return out as Sregs;
}

/** Writes the given fields into `b` (a kvm_sregs as read); segments may be partial. */
export function updateSregs(b: Uint8Array, update: SregsUpdate): void {
  const v = view(b);
  for (const [k, val] of Object.entries(toOptions(update, 'sregs'))) {
    if (val === undefined) continue;
    const seg = SEGMENTS.indexOf(k as never);
    const ctl = CONTROL.indexOf(k as never);
    if (seg >= 0) writeSegment(v, seg * SEGMENT_SIZE, val as Partial<Segment>, k);
    else if (k === 'gdt' || k === 'idt') {
      const o = DTABLE[k];
      const t = toOptions(val as Partial<DescriptorTable>, k);
      if (t.base !== undefined) v.setBigUint64(o, toU64(t.base, `${k}.base`), true);
      if (t.limit !== undefined) v.setUint16(o + 8, toInt(t.limit, `${k}.limit`, 0, 0xffff), true);
    } else if (ctl >= 0) v.setBigUint64(CONTROL_AT + ctl * 8, toU64(val, k), true);
    else throw new TypeError(`unknown sregs field '${k}'`);
  }
}

/** A whole kvm_sregs (interrupt bitmap empty). */
export function encodeSregs(s: Sregs): Uint8Array {
  const b = new Uint8Array(SREGS_SIZE);
  updateSregs(b, s);
  return b;
}

const seg = (selector: number, base: bigint, type: number, s: number): Segment => ({
  base, limit: 0xffff, selector, type, present: 1, dpl: 0, db: 0, s, l: 0, g: 0, avl: 0, unusable: 0,
});

/**
 * A vCPU's special registers after KVM_CREATE_VCPU, as KVM_GET_SREGS reads them on the lab's
 * kernels (kvm_amd: init_vmcb, kvm_vcpu_reset): real mode at the reset vector, cs 0xf000 with
 * base 0xffff0000, data segments 0, the LDT and a busy TSS, CR0 with CD, NW and ET, the BSP's
 * APIC enabled at 0xfee00000. (test/conformance/vcpu.test.ts checks it against the kernel.)
 */
export const RESET_SREGS: Sregs = {
  // Types as kvm_amd reports them (measured on Debian's 7.2 in the lab): code execute/read
  // (10), data read/write accessed (3), ss read/write (2), a busy 16-bit TSS (3), an LDT (2).
  // kvm_intel reports cs 11 (accessed), ss 3 and a busy 32-bit TSS (11).
  cs: seg(0xf000, 0xffff0000n, 10, 1),
  ds: seg(0, 0n, 3, 1),
  es: seg(0, 0n, 3, 1),
  fs: seg(0, 0n, 3, 1),
  gs: seg(0, 0n, 3, 1),
  ss: seg(0, 0n, 2, 1),
  tr: seg(0, 0n, 3, 0),
  ldt: seg(0, 0n, 2, 0),
  gdt: { base: 0n, limit: 0xffff },
  idt: { base: 0n, limit: 0xffff },
  cr0: 0x60000010n,
  cr2: 0n,
  cr3: 0n,
  cr4: 0n,
  cr8: 0n,
  efer: 0n,
  apicBase: 0xfee00900n,
};

/**
 * kvm_regs after KVM_CREATE_VCPU: rip 0xfff0 (with cs.base, the reset vector), rflags bit 1,
 * rdx the CPU signature, which is KVM's 0x600 until KVM_SET_CPUID gives one (kvm_vcpu_reset).
 */
export function resetRegs(): Uint8Array {
  const b = new Uint8Array(REGS_SIZE);
  updateRegs(b, { rip: 0xfff0n, rflags: 2n, rdx: 0x600n });
  return b;
}
