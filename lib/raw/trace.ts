/** NODE_DEBUG=kvm-gmem traces every raw call with its arguments and result. */
import { log } from '../base/log.js';
import { rawFunctionNames, type RawBackend } from './types.js';

function show(v: unknown): string {
  if (typeof v === 'bigint') return `${v}n`;
  if (v instanceof ArrayBuffer) return `ArrayBuffer(${v.byteLength})`;
  if (v && typeof v === 'object') {
    return `{ ${Object.entries(v).map(([k, x]) => `${k}: ${show(x)}`).join(', ')} }`;
  }
  return typeof v === 'string' ? JSON.stringify(v) : String(v);
}

/**
 * Returns `backend` itself when tracing is off (no cost on the hot path), else a copy whose
 * functions log `name(args) -> result` or `name(args) -> CODE (message)`.
 */
export function traced<T extends RawBackend>(backend: T): T {
  if (!log.enabled) return backend;
  const out = { ...backend } as Record<string, unknown>;
  for (const name of rawFunctionNames) {
    const fn = backend[name] as (...a: unknown[]) => unknown;
    out[name] = (...args: unknown[]) => {
      const call = `${backend.kind}.${name}(${args.map(show).join(', ')})`;
      try {
        const r = fn.apply(backend, args);
        log('%s -> %s', call, show(r));
        return r;
      } catch (e) {
        const err = e as { code?: string; message?: string };
        log('%s -> %s (%s)', call, err.code ?? 'throw', err.message);
        throw e;
      }
    };
  }
  return out as T;
}
