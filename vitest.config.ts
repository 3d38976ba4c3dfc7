import { defineConfig } from 'vitest/config';

/**
 * One suite, every backend: each project runs the same specs with KVM_GMEM_BACKEND set, so
 * `openKvm()` in a test picks that backend. The kvm project skips (with the reason) where
 * /dev/kvm cannot be opened.
 */
export default defineConfig({
  test: {
    pool: 'forks',
    testTimeout: 60_000,
    hookTimeout: 60_000,
    projects: [
      {
        extends: true,
        test: {
          name: 'kvm',
          include: ['test/**/*.test.ts'],
          env: { KVM_GMEM_BACKEND: 'kvm' },
        },
      },
    ],
  },
});
