/** The kvm-gmem command line, run in-process through its main(). */
import { describe, expect, test } from 'vitest';
import { main } from '../../lib/cli/main.js';
import { noGmem, noSharedGmem, open, simulated, unavailable } from '../helpers.js';

/** The backend this project's tests run on, as the CLI names it. */
const backendName = simulated ? 'simulated' : 'kvm';

const text = (s: string | Uint8Array) => (typeof s === 'string' ? s : Buffer.from(s).toString());

async function run(...args: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = '';
  let err = '';
  const code = await main(args, { out: (s) => (out += text(s)), err: (s) => (err += text(s)) });
  return { code, out, err };
}

describe('kvm-gmem CLI', () => {
  test('--help everywhere; unknown commands are usage errors', async () => {
    expect(await run('--help')).toMatchObject({ code: 0, out: expect.stringMatching(/^usage: kvm-gmem <command>/) });
    expect(await run('caps', '--help')).toMatchObject({ code: 0, out: expect.stringMatching(/^usage: kvm-gmem caps/) });
    expect(await run('demo', '-h')).toMatchObject({ code: 0, out: expect.stringMatching(/^usage: kvm-gmem demo/) });
    expect((await run('frobnicate')).code).toBe(2);
    expect((await run('caps', '--bogus')).code).toBe(2);
    expect((await run()).code).toBe(2);
  });

  describe.skipIf(unavailable)('on the backend', () => {
    test('caps prints the table and, with --json, parseable JSON', async () => {
      // What the table says is what the backend answers on a default VM (Linux 6.12: no
      // guest_memfd there, no creation flags).
      using kvm = open();
      const caps = kvm.capabilities();
      const yes = (b: boolean) => (b ? 'yes' : 'no');
      const t = await run('caps', '--backend', backendName);
      expect(t.code).toBe(0);
      expect(t.out).toMatch(new RegExp(`KVM_CAP_GUEST_MEMFD\\s+234\\s+${yes(caps.guestMemfd)}\n`));
      expect(t.out).toMatch(new RegExp(`KVM_CAP_GUEST_MEMFD_FLAGS\\s+244\\s+mmap ${yes(caps.guestMemfdFlags.mmap)}, initShared ${yes(caps.guestMemfdFlags.initShared)}\n`));
      const j = await run('caps', '--json', '--backend', backendName);
      const parsed = JSON.parse(j.out);
      expect(parsed.backend).toBe(backendName);
      expect(parsed.capabilities.guestMemfd).toBe(caps.guestMemfd);
      expect(parsed.capabilities.maxMemslots).toBe(32764);
    });

    test(`demo tells the story and ends cleanly${noSharedGmem ? ` (here it stops at its guest_memfd, refused: ${noSharedGmem})` : ''}`, async () => {
      using kvm = open();
      const privateVms = kvm.capabilities().vmTypes.includes('sw-protected');
      const attributesCode = kvm.profile().memoryAttributesIoctl ? 'EINVAL' : 'ENOTTY';
      const d = await run('demo', '--backend', backendName);
      if (noSharedGmem) {
        // The demo's memory is an mmap + initShared gmem on a default VM: the kernel refuses it
        // (EINVAL), and the demo ends there with that error, not a crash.
        expect(d.code, d.out + d.err).toBe(1);
        expect(d.out).toMatch(/^2\. Created a default VM/m);
        expect(d.out).not.toMatch(/^3\. /m);
        expect(d.err).toMatch(/^kvm-gmem: KVM_CREATE_GUEST_MEMFD: .*\(EINVAL\)\n$/);
        return;
      }
      expect(d.code, d.out).toBe(0);
      expect(d.out).toMatch(/already bound to slot 1/);
      expect(d.out).toMatch(/slot 1: gfn \[0x100000, 0x100200\)/);
      expect(d.out).toMatch(/now reads all zeros/);
      expect(d.out).toMatch(simulated ? /cannot execute guest code/ : /"hi from the guest" \(then hlt\)/);
      expect(d.out).toMatch(privateVms ? /private ranges \[0x0, 0x100000\) \[0x101000, 0x200000\)/ : new RegExp(`KVM_SET_MEMORY_ATTRIBUTES \\(${attributesCode}\\)`));
      expect(d.out).toMatch(/^9\. Done/m);
    });

    test('selftest prints KTAP with no failure; skips name the missing capability', async () => {
      // (Every case runs in test/conformance/selftest.test.ts; here, the output of a few.)
      const r = await run('selftest', '--backend', backendName, '--filter', 'test_f');
      expect(r.code, r.out).toBe(0);
      expect(r.out).toMatch(/^KTAP version 1\n/);
      const plan = /^1\.\.(\d+)$/m.exec(r.out);
      expect(Number(plan![1])).toBe(5);
      expect(r.out).not.toMatch(/^not ok/m);
      // test_fallocate needs a guest_memfd on a default VM: it runs where there is one, else is
      // skipped naming the capability.
      expect(r.out).toMatch(noGmem ? /^ok \d+ test_fallocate # SKIP requires KVM_CAP_GUEST_MEMFD on a default VM$/m : /^ok \d+ test_fallocate$/m);
      for (const skip of r.out.matchAll(/# SKIP (.*)$/gm)) expect(skip[1]).toMatch(/^requires /);
      const f = await run('selftest', '--backend', backendName, '--filter', 'punch');
      expect(f.out).toMatch(/^1\.\.1$/m);
    });
  });
});
