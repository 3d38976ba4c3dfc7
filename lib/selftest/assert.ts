/** The few assertions the selftest cases need (they also run outside vitest, in the CLI). */
import { KvmError } from '../base/errors.js';

export class SelftestFailure extends Error {
  override name = 'SelftestFailure';
}

export function check(cond: unknown, message: string): asserts cond {
  if (!cond) throw new SelftestFailure(message);
}

export function equal<T>(actual: T, expected: T, what: string): void {
  const show = (v: unknown) => (typeof v === 'bigint' ? `${v}n` : JSON.stringify(v, (_k, x) => (typeof x === 'bigint' ? `${x}n` : x)));
  if (show(actual) !== show(expected)) throw new SelftestFailure(`${what}: expected ${show(expected)}, got ${show(actual)}`);
}

/** fn must fail with the kernel's `code` (a KvmError, or a Node fs error for file syscalls). */
export function fails(fn: () => unknown, code: string, what: string): void {
  try {
    fn();
  } catch (e) {
    const got = e instanceof KvmError || (e as NodeJS.ErrnoException)?.code ? (e as { code: string }).code : `${(e as Error)?.name}: ${(e as Error)?.message}`;
    if (got !== code) throw new SelftestFailure(`${what}: expected ${code}, got ${got}`);
    return;
  }
  throw new SelftestFailure(`${what}: expected ${code}, but it succeeded`);
}

export function throwsType(fn: () => unknown, ctor: new (...a: never[]) => Error, what: string): void {
  try {
    fn();
  } catch (e) {
    if (e instanceof ctor) return;
    throw new SelftestFailure(`${what}: expected ${ctor.name}, got ${(e as Error)?.name}: ${(e as Error)?.message}`);
  }
  throw new SelftestFailure(`${what}: expected ${ctor.name}, but it succeeded`);
}
