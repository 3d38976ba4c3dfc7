import type { Kvm } from '../kvm.js';
import { runSelftests, selftestCases } from '../selftest/index.js';
import type { Io } from './main.js';

/**
 * Runs the selftest cases and prints KTAP (or, with json, one JSON document); 1 if any failed.
 * On a terminal, stderr shows the case in progress.
 */
export async function selftest(kvm: Kvm, io: Io, opts: { filter?: string | undefined; json?: boolean }): Promise<number> {
  const chosen = (name: string) => !opts.filter || name.includes(opts.filter);
  const total = selftestCases.filter((c) => chosen(c.name)).length;
  const tty = io.errIsTTY === true;
  const where = `${kvm.backend} backend${kvm.fallbackReason ? ` (auto fell back: ${kvm.fallbackReason})` : ''}`;
  if (!opts.json) io.out(`KTAP version 1\n# kvm-gmem selftest on the ${where}\n1..${total}\n`);
  const started = performance.now();
  const results = await runSelftests(
    kvm,
    (r, i) => {
      if (tty) io.err('\r\x1b[K');
      if (opts.json) return;
      if (r.status === 'ok') io.out(`ok ${i} ${r.name}\n`);
      else if (r.status === 'skip') io.out(`ok ${i} ${r.name} # SKIP ${r.reason}\n`);
      else io.out(`not ok ${i} ${r.name}\n${r.reason!.split('\n').map((l) => `# ${l}`).join('\n')}\n`);
    },
    (c) => chosen(c.name),
    (c, i) => {
      if (tty) io.err(`[${i}/${total}] ${c.name} ...`);
    },
  );
  const n = (s: string) => results.filter((r) => r.status === s).length;
  const seconds = (performance.now() - started) / 1000;
  if (opts.json) {
    io.out(`${JSON.stringify({ backend: kvm.backend, fallbackReason: kvm.fallbackReason ?? null, seconds, totals: { pass: n('ok'), fail: n('fail'), skip: n('skip') }, results }, null, 2)}\n`);
  } else {
    io.out(`# totals: pass:${n('ok')} fail:${n('fail')} skip:${n('skip')} (${seconds.toFixed(1)} s)\n`);
  }
  return n('fail') ? 1 : 0;
}
