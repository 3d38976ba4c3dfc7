/** Argument conversion for every layer: u64s, integers, options objects, with the errors they raise. */
import { U64_MAX } from './uapi.js';

/** A kernel u64 as the API accepts it: a bigint, or a non-negative safe-integer number. */
export type U64 = bigint | number;

// One u64 seen as two u32 halves: bigint <-> double without Number(bigint) or BigInt(number),
// calls into V8's runtime whose cost grows with the value (a lookup of a gpa at 64 GiB paid
// 13 ns more than one at 16 MiB, and the whole lookup costs 25 ns).
const WORD = new BigUint64Array(1);
const HALVES = new Uint32Array(WORD.buffer);
const LO = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1 ? 0 : 1;

/**
 * A u64 argument (checked as checkU64 does) as an exact double, or -1 where it is above
 * 2^53 - 1 (the caller then takes the BigInt path).
 */
export function safeNumber(value: unknown, name: string): number {
  // (A literal bound: V8 compiles a comparison with a constant BigInt inline, not with a
  // BigInt held in a variable.)
  if (typeof value === 'bigint' && value >= 0n && value <= 9007199254740991n) {
    WORD[0] = value;
    return HALVES[1 - LO]! * 4294967296 + HALVES[LO]!;
  }
  const v = checkU64(value, name);
  return typeof v === 'number' ? v : -1;
}

/** A non-negative safe integer as a bigint (what BigInt(n) gives, at a flat cost). */
export function bigOf(n: number): bigint {
  const lo = n % 4294967296;
  HALVES[LO] = lo;
  HALVES[1 - LO] = (n - lo) / 4294967296;
  return WORD[0]!;
}

/**
 * Converts a u64 argument to bigint. An unsafe number is a RangeError rather than a silent
 * rounding; a value of another type is a TypeError.
 */
export function toU64(value: unknown, name: string): bigint {
  const v = checkU64(value, name);
  return typeof v === 'bigint' ? v : BigInt(v);
}

/**
 * The same check, keeping the value as given: for values passed straight to the backend,
 * which reads a number without making a BigInt (BigInt(number) is a call into V8's C++).
 */
export function checkU64(value: unknown, name: string): U64 {
  if (typeof value === 'bigint') {
    if (value < 0n || value > U64_MAX) throw new RangeError(`${name} does not fit in a u64: ${value}`);
    return value;
  }
  if (typeof value === 'number') {
    if (!Number.isSafeInteger(value) || value < 0) {
      throw new RangeError(`${name} must be a non-negative safe integer or a bigint, got ${value}`);
    }
    return value;
  }
  throw new TypeError(`${name} must be a bigint or a number, got ${typeName(value)}`);
}

/** An integer number within [min, max]. */
export function toInt(value: unknown, name: string, min: number, max: number): number {
  if (typeof value !== 'number') throw new TypeError(`${name} must be a number, got ${typeName(value)}`);
  if (!Number.isInteger(value) || value < min || value > max) {
    throw new RangeError(`${name} must be an integer in [${min}, ${max}], got ${value}`);
  }
  return value;
}

/** An options argument: undefined gives {}; anything but a plain (non-array) object is a TypeError. */
export function toOptions<T extends object>(value: T | undefined, name: string): Partial<T> {
  if (value === undefined) return {};
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new TypeError(`${name} must be an object, got ${typeName(value)}`);
  return value;
}

export function toBool(value: unknown, name: string, fallback = false): boolean {
  if (value === undefined) return fallback;
  if (typeof value !== 'boolean') throw new TypeError(`${name} must be a boolean, got ${typeName(value)}`);
  return value;
}

export function typeName(v: unknown): string {
  if (v === null) return 'null';
  if (typeof v === 'object') return (v as object).constructor?.name ?? 'object';
  return typeof v;
}

export const hex = (v: bigint | number): string => `0x${v.toString(16)}`;
