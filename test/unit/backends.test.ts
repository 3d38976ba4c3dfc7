/** Backend selection: 'auto' falls back to the simulator with the reason; env and options. */
import { expect, test } from 'vitest';
import { openKvm, KvmError } from '../../lib/index.js';
import { kvmUnavailable } from '../helpers.js';

test("'auto' with a device path that does not exist falls back to the simulator, naming ENOENT", () => {
  using kvm = openKvm({ backend: 'auto', path: '/nonexistent' });
  expect(kvm.backend).toBe('simulated');
  expect(kvm.fallbackReason).toBe('ENOENT: /nonexistent');
  expect(kvm.apiVersion).toBe(12);
});

test("'kvm' with a device path that does not exist is a KvmError ENOENT", () => {
  const e = (() => {
    try {
      openKvm({ backend: 'kvm', path: '/nonexistent' });
    } catch (err) {
      return err;
    }
  })();
  expect(e).toBeInstanceOf(KvmError);
  expect((e as KvmError).code).toBe('ENOENT');
});

test.skipIf(kvmUnavailable)("'auto' on a host with /dev/kvm picks the kernel, with no fallback reason", () => {
  using kvm = openKvm({ backend: 'auto' });
  expect(kvm.backend).toBe('kvm');
  expect(kvm.fallbackReason).toBeUndefined();
});

test('the simulated handles are far above real fds; the profile can be a real host\'s capabilities', () => {
  using sim = openKvm({ backend: 'simulated' });
  expect(sim.fd).toBeGreaterThanOrEqual(1_000_000_000);
  const caps = sim.capabilities();
  expect(caps.vmTypes).toEqual(['default', 'sw-protected']);
  // A profile from a host with only the default VM type and no memory attributes:
  using host = openKvm({ backend: 'simulated', profile: { ...caps, vmTypes: ['default'], vmTypesMask: 1, systemMemoryAttributes: 0n, memoryAttributes: 0n, preFaultMemory: false } });
  using vm = host.createVm();
  expect(() => host.createVm({ type: 'sw-protected' })).toThrow(expect.objectContaining({ code: 'EINVAL' }));
  expect(() => vm.setPrivate(0n, 4096n)).toThrow(expect.objectContaining({ code: 'ENOTTY' }));
});
