/**
 * Profiles of real kernels for the simulator: measured with kvm.profile() (`kvm-gmem caps
 * --json`) on a host or in the lab, shipped as JSON in the package's profiles/ directory.
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { profileFromJSON, type SimProfile } from './raw/sim/index.js';

/** A SimProfile, its JSON data, a JSON file's path, or the name of a shipped profile. */
export type ProfileSource = SimProfile | object | string;

/** The package's profiles/ directory (this file is lib/profiles.ts, or dist/profiles.js built). */
const dir = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', 'profiles');

/** Names of the profiles the package ships. */
export function shippedProfiles(): string[] {
  return existsSync(dir) ? readdirSync(dir).filter((f) => f.endsWith('.json')).map((f) => f.slice(0, -5)).sort() : [];
}

export function loadProfile(source: ProfileSource): SimProfile {
  if (typeof source === 'string') {
    const shipped = path.join(dir, `${source}.json`);
    const file = !source.includes('/') && !source.endsWith('.json') ? shipped : path.resolve(source);
    if (!existsSync(file)) {
      throw new RangeError(`no profile '${source}' (a JSON file path, or one of: ${shippedProfiles().join(', ') || 'none shipped'})`);
    }
    return profileFromJSON(JSON.parse(readFileSync(file, 'utf8')));
  }
  if (typeof source !== 'object' || source === null) throw new TypeError('profile must be a SimProfile, its JSON data, a file path or a profile name');
  const p = source as Partial<SimProfile>;
  if (typeof p.userAddressMax === 'bigint' && p.caps && typeof p.memoryAttributesIoctl === 'boolean') return p as SimProfile;
  return profileFromJSON(source);
}
