import { defineConfig } from 'vitest/config';

/**
 * One suite, every backend: each project runs the same specs with KVM_GMEM_BACKEND set, so
 * `open()` in test/helpers.ts picks that backend.
 *   kvm            the real kernel (skips, with the reason, where /dev/kvm cannot be opened)
 *   sim            the simulator (default profile: 6.18 with KVM_X86_SW_PROTECTED_VM)
 *   auto-fallback  backend 'auto' with a device path that does not exist: the simulator
 * test/native/ (loader, finalizers, fds) and test/guest/ (guest code on a real vCPU) need the
 * addon: kvm project only.
 */
const shared = ['test/conformance/**/*.test.ts', 'test/unit/**/*.test.ts'];

export default defineConfig({
  test: {
    pool: 'forks',
    testTimeout: 60_000,
    hookTimeout: 60_000,
    projects: [
      { extends: true, test: { name: 'kvm', include: [...shared, 'test/native/**/*.test.ts', 'test/guest/**/*.test.ts', 'test/differential/**/*.test.ts'], env: { KVM_GMEM_BACKEND: 'kvm' } } },
      { extends: true, test: { name: 'sim', include: shared, env: { KVM_GMEM_BACKEND: 'simulated' } } },
      {
        extends: true,
        test: { name: 'auto-fallback', include: shared, env: { KVM_GMEM_BACKEND: 'auto', KVM_GMEM_TEST_PATH: '/nonexistent' } },
      },
    ],
  },
});
