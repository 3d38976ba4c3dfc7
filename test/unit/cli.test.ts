/** The kvm-gmem command line, run in-process through its main(). */
import { describe, expect, test } from 'vitest';
import { main } from '../../lib/cli/main.js';
import { simulated, unavailable } from '../helpers.js';

/** The backend this project's tests run on, as the CLI names it. */
const backendName = simulated ? 'simulated' : 'kvm';

function run(...args: string[]): { code: number; out: string } {
  let out = '';
  const code = main(args, (s) => (out += s));
  return { code, out };
}

describe('kvm-gmem CLI', () => {
  test('--help everywhere; unknown commands are usage errors', () => {
    expect(run('--help')).toMatchObject({ code: 0, out: expect.stringMatching(/^usage: kvm-gmem <command>/) });
    expect(run('caps', '--help')).toMatchObject({ code: 0, out: expect.stringMatching(/^usage: kvm-gmem caps/) });
    expect(run('demo', '-h')).toMatchObject({ code: 0, out: expect.stringMatching(/^usage: kvm-gmem demo/) });
    expect(run('frobnicate').code).toBe(2);
    expect(run('caps', '--bogus').code).toBe(2);
    expect(run().code).toBe(2);
  });

  describe.skipIf(unavailable)('on the backend', () => {
    test('caps prints the table and, with --json, parseable JSON', () => {
      const t = run('caps', '--backend', backendName);
      expect(t.code).toBe(0);
      expect(t.out).toMatch(/KVM_CAP_GUEST_MEMFD\s+234\s+yes/);
      const j = run('caps', '--json', '--backend', backendName);
      const parsed = JSON.parse(j.out);
      expect(parsed.backend).toBe(backendName);
      expect(parsed.capabilities.maxMemslots).toBe(32764);
    });

    test('demo tells the story and ends cleanly', () => {
      const d = run('demo', '--backend', backendName);
      expect(d.code, d.out).toBe(0);
      expect(d.out).toMatch(/already bound to slot 1/);
      expect(d.out).toMatch(/slot 1: gfn \[0x100000, 0x100200\)/);
      expect(d.out).toMatch(/now reads all zeros/);
      expect(d.out).toMatch(/^8\. Done/m);
    });
  });
});
