/**
 * KVM_SET_MEMORY_ATTRIBUTES where the host has no memory attributes (this project's 6.18
 * host: CONFIG_KVM_GENERIC_MEMORY_ATTRIBUTES off): the ioctl does not exist (ENOTTY) and the
 * books stay as they were.
 */
import { describe, expect, test } from 'vitest';
import { constants, type ConvertEvent, type Kvm, type Vm } from '../../lib/index.js';
import { expectCode, MiB, PAGE, unavailable, eachVm } from '../helpers.js';

describe.skipIf(unavailable)('memory attributes', () => {
  let kvm: Kvm;
  let vm: Vm;
  eachVm((k, v) => {
    kvm = k;
    vm = v;
  });

  const noAttributes = () => kvm.checkExtension(constants.Cap.MEMORY_ATTRIBUTES) === 0;

  test('capabilities: memoryAttributes agrees with KVM_CHECK_EXTENSION on the VM', () => {
    const caps = vm.capabilities();
    expect(caps.memoryAttributes).toBe(BigInt(vm.checkExtension(constants.Cap.MEMORY_ATTRIBUTES)));
    expect(caps.privateMemory).toBe((caps.memoryAttributes & constants.MemoryAttribute.PRIVATE) !== 0n);
  });

  test('without memory attributes support the ioctl is ENOTTY and the books do not change', (ctx) => {
    ctx.skip(!noAttributes(), 'this host supports KVM_SET_MEMORY_ATTRIBUTES (the private-memory suite covers it)');
    const events: ConvertEvent[] = [];
    vm.on('convert', (e: ConvertEvent) => events.push(e));
    expectCode(() => vm.setPrivate(0n, 2n * MiB), 'ENOTTY');
    expectCode(() => vm.setShared(0n, PAGE), 'ENOTTY');
    expectCode(() => vm.setMemoryAttributes(0n, PAGE, 0n), 'ENOTTY');
    expect(vm.attributes.ranges()).toEqual([]);
    expect(vm.attributes.get(0n)).toBe(0n);
    expect(events).toEqual([]);
  });
});
