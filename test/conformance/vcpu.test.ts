/**
 * A new vCPU's state, as KVM_GET_REGS and KVM_GET_SREGS read it before anything is set: the
 * architectural reset state (the SDM's and APM's table for INIT) as KVM fills it in
 * kvm_vcpu_reset and the vendor's reset (init_vmcb, vmx_vcpu_reset). The simulator answers
 * from lib/base/structs.ts; this is where that table meets the kernel.
 */
import { readFileSync } from 'node:fs';
import { describe, expect, test } from 'vitest';
import { RESET_SREGS } from '../../lib/base/structs.js';
import { expectCode, open, simulated, unavailable } from '../helpers.js';

describe.skipIf(unavailable)(`a new vCPU${unavailable ? ` (skipped: ${unavailable})` : ''}`, () => {
  test('registers: rip at the reset vector, rflags bit 1, rdx the family/model/stepping 0x600 until KVM_SET_CPUID', () => {
    using kvm = open();
    using vm = kvm.createVm();
    using cpu = vm.createVcpu(0);
    const r = cpu.getRegs();
    expect({ rip: r.rip, rflags: r.rflags, rdx: r.rdx }).toEqual({ rip: 0xfff0n, rflags: 2n, rdx: 0x600n });
    for (const k of ['rax', 'rbx', 'rcx', 'rsi', 'rdi', 'rsp', 'rbp', 'r8', 'r15'] as const) expect(r[k], k).toBe(0n);
  });

  test('special registers: real mode, cs 0xf000 based at 0xffff0000, data segments at 0, CR0 with CD/NW/ET, the APIC enabled for the BSP', () => {
    using kvm = open();
    using vm = kvm.createVm();
    using bsp = vm.createVcpu(0);
    const s = bsp.getSregs();
    expect({ selector: s.cs.selector, base: s.cs.base, limit: s.cs.limit }).toEqual({ selector: 0xf000, base: 0xffff0000n, limit: 0xffff });
    for (const k of ['ds', 'es', 'fs', 'gs', 'ss'] as const) {
      expect({ selector: s[k].selector, base: s[k].base, limit: s[k].limit, present: s[k].present }, k).toEqual({ selector: 0, base: 0n, limit: 0xffff, present: 1 });
    }
    expect({ cr0: s.cr0, cr3: s.cr3, cr4: s.cr4, efer: s.efer }).toEqual({ cr0: 0x60000010n, cr3: 0n, cr4: 0n, efer: 0n });
    expect(s.apicBase).toBe(0xfee00900n);
    // Every field, as the simulator's table has it (one assertion per field: the failure names
    // it). The segment types are the vendor's: the table has kvm_amd's, so on an Intel host
    // only the rest is compared.
    const intel = !simulated && /GenuineIntel/.test(readFileSync('/proc/cpuinfo', 'utf8'));
    const strip = (v: unknown) => (intel && typeof v === 'object' && v !== null && 'type' in v ? { ...v, type: 0 } : v);
    for (const k of Object.keys(RESET_SREGS) as (keyof typeof RESET_SREGS)[]) expect(strip(s[k]), k).toEqual(strip(RESET_SREGS[k]));
    using ap = vm.createVcpu(1);
    expect(ap.getSregs().apicBase, 'an AP: enabled, not the BSP').toBe(0xfee00800n);
  });

  test('answers with nothing to answer: completeRead() and completeHypercall() are EINVAL before any exit; bad data is a TypeError', () => {
    using kvm = open();
    using vm = kvm.createVm();
    using cpu = vm.createVcpu(0);
    expect(() => cpu.completeRead(['a'] as never)).toThrow(TypeError);
    expect(() => cpu.completeRead([256])).toThrow(TypeError);
    expect(() => cpu.completeRead(new Uint16Array(1) as never)).toThrow(TypeError);
    expectCode(() => cpu.completeRead([0]), 'EINVAL');
    expectCode(() => cpu.completeHypercall(0n), 'EINVAL');
    expect(() => cpu.completeHypercall(1n << 64n)).toThrow(RangeError);
  });
});
