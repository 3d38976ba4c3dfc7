/** Argument conversion for every layer: u64s, integers, options objects, with the errors they raise. */
import { U64_MAX } from './uapi.js';

/** A kernel u64 as the API accepts it: a bigint, or a non-negative safe-integer number. */
export type U64 = bigint | number;

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
