/**
 * The kernel selftests' guest_memfd cases (lib/selftest/), the very cases `kvm-gmem
 * selftest` runs, on this project's backend. A case the backend cannot run is skipped with
 * the capability it lacks.
 */
import { afterAll, describe, test } from 'vitest';
import { selftestCases, skipReason } from '../../lib/selftest/index.js';
import { open, unavailable } from '../helpers.js';

describe.skipIf(unavailable)('kernel selftest cases', () => {
  if (unavailable) return;
  const kvm = open();
  const caps = kvm.capabilities();
  afterAll(() => kvm.close());
  for (const c of selftestCases) {
    const why = skipReason(c, kvm, caps);
    test(`${c.source}: ${c.name}${why ? ` (${why})` : ''}`, async (ctx) => {
      ctx.skip(why !== undefined, why);
      await c.run({ kvm, caps });
    });
  }
});
