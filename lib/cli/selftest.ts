import type { Kvm } from '../kvm.js';
import { runSelftests, selftestCases } from '../selftest/index.js';

/** Runs the selftest cases and prints TAP (KTAP-compatible); 1 if any failed. */
export async function selftest(kvm: Kvm, out: (s: string) => void, filter?: string): Promise<number> {
  const chosen = (name: string) => !filter || name.includes(filter);
  const total = selftestCases.filter((c) => chosen(c.name)).length;
  out('TAP version 13\n');
  out(`# kvm-gmem selftest on the ${kvm.backend} backend${kvm.fallbackReason ? ` (auto fell back: ${kvm.fallbackReason})` : ''}\n`);
  out(`1..${total}\n`);
  const results = await runSelftests(
    kvm,
    (r, i) => {
      if (r.status === 'ok') out(`ok ${i} ${r.name}\n`);
      else if (r.status === 'skip') out(`ok ${i} ${r.name} # SKIP ${r.reason}\n`);
      else out(`not ok ${i} ${r.name}\n${r.reason!.split('\n').map((l) => `# ${l}`).join('\n')}\n`);
    },
    (c) => chosen(c.name),
  );
  const n = (s: string) => results.filter((r) => r.status === s).length;
  out(`# totals: pass:${n('ok')} fail:${n('fail')} skip:${n('skip')}\n`);
  return n('fail') ? 1 : 0;
}
