import type { Kvm } from '../index.js';
import { Cap } from '../base/uapi.js';
import { profileToJSON } from '../raw/sim/index.js';

const yes = (b: boolean) => (b ? 'yes' : 'no');

export function caps(kvm: Kvm, opts: { json: boolean }, out: (s: string) => void): number {
  const c = kvm.capabilities();
  const backend = { backend: kvm.backend, fallbackReason: kvm.fallbackReason ?? null, apiVersion: kvm.apiVersion, pageSize: kvm.pageSize };
  if (opts.json) {
    const profile = profileToJSON(kvm.profile());
    out(JSON.stringify({ ...backend, capabilities: c, profile }, (_k, v) => (typeof v === 'bigint' ? `0x${v.toString(16)}` : v), 2) + '\n');
    return 0;
  }
  const rows: [string, string, string][] = [
    ['KVM_CAP_USER_MEMORY2', String(Cap.USER_MEMORY2), yes(c.userMemory2)],
    ['KVM_CAP_GUEST_MEMFD', String(Cap.GUEST_MEMFD), yes(c.guestMemfd)],
    ['KVM_CAP_GUEST_MEMFD_FLAGS', String(Cap.GUEST_MEMFD_FLAGS), `mmap ${yes(c.guestMemfdFlags.mmap)}, initShared ${yes(c.guestMemfdFlags.initShared)}`],
    ['KVM_CAP_MEMORY_ATTRIBUTES', String(Cap.MEMORY_ATTRIBUTES), c.memoryAttributes ? `0x${c.memoryAttributes.toString(16)} (private ${yes(c.privateMemory)})` : 'none'],
    ['KVM_CAP_MEMORY_FAULT_INFO', String(Cap.MEMORY_FAULT_INFO), yes(c.memoryFaultInfo)],
    ['KVM_CAP_PRE_FAULT_MEMORY', String(Cap.PRE_FAULT_MEMORY), yes(c.preFaultMemory)],
    ['KVM_CAP_READONLY_MEM', String(Cap.READONLY_MEM), yes(c.readonlyMem)],
    ['KVM_CAP_NR_MEMSLOTS', String(Cap.NR_MEMSLOTS), String(c.maxMemslots)],
    ['KVM_CAP_MULTI_ADDRESS_SPACE', String(Cap.MULTI_ADDRESS_SPACE), String(c.addressSpaces)],
    ['KVM_CAP_VM_TYPES', String(Cap.VM_TYPES), c.vmTypes.join(', ')],
  ];
  const w = Math.max(...rows.map((r) => r[0].length));
  out(`backend: ${kvm.backend}${kvm.fallbackReason ? ` (auto fell back: ${kvm.fallbackReason})` : ''}; KVM API ${kvm.apiVersion}; page size ${kvm.pageSize}\n`);
  out(`capabilities (read on a ${c.scope} VM):\n`);
  for (const [name, num, v] of rows) out(`  ${name.padEnd(w)}  ${num.padStart(3)}  ${v}\n`);
  return 0;
}
