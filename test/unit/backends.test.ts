/** Backend selection: 'auto' falls back to the simulator with the reason; env and options. */
import { expect, test } from 'vitest';
import { openKvm, KvmError } from '../../lib/index.js';
import { profileToJSON } from '../../lib/raw/sim/index.js';
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

test('the simulated handles are far above real fds; a profile makes the simulator answer as that kernel', () => {
  using sim = openKvm({ backend: 'simulated' });
  expect(sim.fd).toBeGreaterThanOrEqual(1_000_000_000);
  expect(sim.capabilities().vmTypes).toEqual(['default', 'sw-protected']);
  // The 6.18 PVM host: only the default VM type, no KVM_SET_MEMORY_ATTRIBUTES, no pre-fault.
  using host = openKvm({ backend: 'simulated', profile: 'pvm-6.18' });
  expect(host.profile().release).toBe('6.18.44-fc-v669');
  using vm = host.createVm();
  expect(() => host.createVm({ type: 'sw-protected' })).toThrow(expect.objectContaining({ code: 'EINVAL' }));
  expect(() => vm.setPrivate(0n, 4096n)).toThrow(expect.objectContaining({ code: 'ENOTTY' }));
  // The same profile as JSON data (kvm-gmem caps --json output) and as a file path.
  using again = openKvm({ backend: 'simulated', profile: JSON.parse(JSON.stringify({ profile: profileToJSON(host.profile()) })) });
  expect(again.profile()).toEqual(host.profile());
  expect(() => openKvm({ backend: 'simulated', profile: 'no-such-profile' })).toThrow(RangeError);
  expect(() => openKvm({ backend: 'simulated', profile: { caps: {} } })).toThrow(/not a kvm-gmem profile/);
});
