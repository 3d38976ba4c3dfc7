import { readdirSync } from 'node:fs';
import { defineConfig } from 'vitest/config';

/**
 * One suite, every backend: the backend projects run the same specs with KVM_GMEM_BACKEND
 * set, so `open()` in test/helpers.ts picks that backend.
 *   unit           what needs no backend: indexes, backend selection, the lab's parts
 *   kvm            the real kernel: conformance, API, addon, guests, differential. Where this
 *                  host has no usable /dev/kvm, `npm test` runs this project inside the lab
 *                  (scripts/test.mjs); run directly here, its specs skip, saying so.
 *   sim            the simulator (default profile: 6.18+ with KVM_X86_SW_PROTECTED_VM)
 *   auto-fallback  backend 'auto' with a device path that does not exist: the simulator
 *   sim:<profile>  the simulator answering as each kernel the project measured (profiles/)
 *   lab            real kernels booted under QEMU from here (`kvm-gmem lab run`, its errors)
 */
const conformance = ['test/conformance/**/*.test.ts'];
const api = ['test/api/**/*.test.ts'];
const profiles = readdirSync(new URL('./profiles/', import.meta.url)).filter((f) => f.endsWith('.json')).map((f) => f.slice(0, -5));

export default defineConfig({
  test: {
    pool: 'forks',
    // Inside the lab (TCG) everything runs 5-50x slower than on hardware.
    testTimeout: process.env.KVM_GMEM_LAB ? 900_000 : 60_000,
    hookTimeout: process.env.KVM_GMEM_LAB ? 900_000 : 60_000,
    projects: [
      { extends: true, test: { name: 'unit', include: ['test/unit/**/*.test.ts'] } },
      {
        extends: true,
        test: {
          name: 'kvm',
          include: [...conformance, ...api, 'test/native/**/*.test.ts', 'test/guest/**/*.test.ts', 'test/differential/**/*.test.ts'],
          env: { KVM_GMEM_BACKEND: 'kvm' },
        },
      },
      { extends: true, test: { name: 'sim', include: [...conformance, ...api, 'test/sim/**/*.test.ts'], env: { KVM_GMEM_BACKEND: 'simulated' } } },
      {
        extends: true,
        test: { name: 'auto-fallback', include: conformance, env: { KVM_GMEM_BACKEND: 'auto', KVM_GMEM_TEST_PATH: '/nonexistent' } },
      },
      ...profiles.map((p) => ({
        extends: true as const,
        test: { name: `sim:${p}`, include: conformance, env: { KVM_GMEM_BACKEND: 'simulated', KVM_GMEM_PROFILE: p } },
      })),
      { extends: true, test: { name: 'lab', include: ['test/lab/**/*.test.ts'], testTimeout: 600_000 } },
    ],
  },
});
