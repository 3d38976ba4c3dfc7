#!/usr/bin/env node
/**
 * kvm-gmem: the command-line face of the library.
 *   kvm-gmem caps [--json] [--backend B]   what this host's KVM supports, and what 'auto' picks
 *   kvm-gmem selftest [--backend B]        the kernel selftests' guest_memfd cases, as TAP
 *   kvm-gmem demo [--backend B]            a narrated walk-through of guest_memfd
 */
import { parseArgs } from 'node:util';
import { openKvm, type BackendName, type Kvm } from '../index.js';
import { caps } from './caps.js';
import { demo } from './demo.js';
import { selftest } from './selftest.js';

const USAGE = `usage: kvm-gmem <command> [options]

Drive Linux KVM guest_memfd from Node.js (real /dev/kvm, or the simulator where it is absent).

commands:
  caps      print the host's KVM capabilities and which backend 'auto' picks (--json for JSON)
  selftest  run the kernel selftests' guest_memfd cases and print TAP (exit 1 on a failure)
  demo      a short narrated walk-through: VM, guest_memfd, two memslots, data, punch-hole

options:
  --backend auto|kvm|simulated   which backend (default: auto, or $KVM_GMEM_BACKEND)
  -h, --help                     this text (also: kvm-gmem <command> --help)
`;

const HELP: Record<string, string> = {
  caps: `usage: kvm-gmem caps [--json] [--backend auto|kvm|simulated]

Prints a table of the KVM capabilities that matter to guest_memfd (read on a default VM),
the VM types the host can create, and which backend 'auto' picks (and why).
  --json   the same as JSON
`,
  selftest: `usage: kvm-gmem selftest [--backend auto|kvm|simulated] [--filter TEXT]

Runs the guest_memfd cases of the kernel's KVM selftests (guest_memfd_test.c,
set_memory_region_test.c, private_mem_conversions_test.c, private_mem_kvm_exits_test.c,
pre_fault_memory_test.c) and prints TAP: 'ok N name', 'not ok N name' with the reason, and
'# SKIP <missing capability>' for a case this backend cannot run. Exit status 1 on a failure.
  --filter TEXT   only the cases whose name contains TEXT
`,
  demo: `usage: kvm-gmem demo [--backend auto|kvm|simulated]

Walks through guest_memfd step by step, explaining each: a VM, an 8 MiB guest_memfd, two
memslots on it around a hole, host writes seen at guest addresses, a punch-hole and the
guest ranges it invalidated, and memory attributes where the host has them.
`,
};

export async function main(argv: string[], out: (s: string) => void = (s) => process.stdout.write(s)): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      options: { help: { type: 'boolean', short: 'h' }, json: { type: 'boolean' }, backend: { type: 'string' }, filter: { type: 'string' } },
    });
  } catch (e) {
    out(`kvm-gmem: ${(e as Error).message}\n\n${USAGE}`);
    return 2;
  }
  const { values, positionals } = parsed;
  const [command, ...rest] = positionals;
  if (!command || command === 'help') {
    out(USAGE);
    return values.help || command === 'help' ? 0 : 2;
  }
  if (!(command in HELP) || rest.length) {
    out(`kvm-gmem: unknown command or argument '${[command, ...rest].join(' ')}'\n\n${USAGE}`);
    return 2;
  }
  if (values.help) {
    out(HELP[command]!);
    return 0;
  }
  const backend = (values.backend ?? process.env.KVM_GMEM_BACKEND ?? 'auto') as BackendName;
  let kvm: Kvm;
  try {
    kvm = openKvm({ backend });
  } catch (e) {
    out(`kvm-gmem: ${(e as Error).message}\n`);
    return 1;
  }
  try {
    if (command === 'caps') return caps(kvm, { json: values.json ?? false }, out);
    if (command === 'selftest') return await selftest(kvm, out, values.filter);
    return await demo(kvm, out);
  } finally {
    kvm.close();
  }
}

if (import.meta.url === `file://${process.argv[1]}` || process.argv[1]?.endsWith('/kvm-gmem')) {
  process.exitCode = await main(process.argv.slice(2));
}
