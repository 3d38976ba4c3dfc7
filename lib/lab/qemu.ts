/**
 * QEMU for the lab: the binary, the accelerator (KVM where the host has a usable /dev/kvm,
 * else TCG with `-cpu max`, whose emulated AMD SVM with nested paging lets kvm_amd bind in
 * the guest), and the command line that boots a kernel with the host's root over 9p and three
 * serial ports: the console (ttyS0), the command's stdout (ttyS1) and stderr (ttyS2).
 */
import { closeSync, existsSync, openSync } from 'node:fs';
import path from 'node:path';
import { LabError } from './errors.js';

export type Accel = 'kvm' | 'tcg';

export function findQemu(env: NodeJS.ProcessEnv = process.env): string {
  if (env.KVM_GMEM_QEMU) {
    if (existsSync(env.KVM_GMEM_QEMU)) return env.KVM_GMEM_QEMU;
    throw new LabError('LAB_NO_QEMU', `KVM_GMEM_QEMU=${env.KVM_GMEM_QEMU} does not exist`, 'point KVM_GMEM_QEMU at qemu-system-x86_64, or unset it');
  }
  for (const dir of (env.PATH ?? '').split(':')) {
    const p = path.join(dir || '.', 'qemu-system-x86_64');
    if (dir && existsSync(p)) return p;
  }
  throw new LabError('LAB_NO_QEMU', 'qemu-system-x86_64 is not installed: the lab boots kernels under QEMU',
    'install it: sudo apt-get install qemu-system-x86 (Debian, Ubuntu), sudo dnf install qemu-system-x86 (Fedora); or set KVM_GMEM_QEMU');
}

/** Whether this host's /dev/kvm opens read-write. */
export function hostKvmUsable(): boolean {
  try {
    closeSync(openSync('/dev/kvm', 'r+'));
    return true;
  } catch {
    return false;
  }
}

/** KVM when the host's /dev/kvm opens read-write (and the host is x86-64), else TCG. */
export function pickAccel(requested: Accel | 'auto' = 'auto'): Accel {
  if (requested !== 'auto') return requested;
  return process.arch === 'x64' && hostKvmUsable() ? 'kvm' : 'tcg';
}

export interface QemuMachine {
  accel: Accel;
  cpus: number;
  /** QEMU's -m value ('4G'). */
  memory: string;
  image: string;
  initrd: string;
  /** Read-only root share, then the writable shares: [tag, host path]. */
  shares: readonly (readonly [string, string, 'ro' | 'rw'])[];
  /** Unix sockets QEMU connects the three serial ports to. */
  serial: readonly [string, string, string];
}

export function qemuArgs(m: QemuMachine): string[] {
  // TCG runs the vCPUs on one host thread: with one thread per vCPU (thread=multi) the guest
  // kernel crashes now and then in __schedule or finish_task_switch (2 runs of 3 in the lab)
  // when KVM flips the preempt-notifier static key of a CPU that is in those functions:
  // the cross-modified code is not seen consistently.
  // No PKU under TCG: QEMU empties its whole software TLB on every PKRU write, and Linux writes
  // PKRU at each switch between a task holding a protection key and a kernel thread. V8
  // allocates a key in every Node process, so a memslot ioctl (which waits on SRCU workers)
  // cost 2.5x as much from Node as from a C process, and only under emulation.
  const accel = m.accel === 'kvm' ? ['-accel', 'kvm', '-cpu', 'host'] : ['-accel', 'tcg,thread=single', '-cpu', 'max,pku=off'];
  const append = ['console=ttyS0', 'quiet', 'loglevel=4', 'panic=-1', 'rdinit=/init', 'tsc=reliable', 'mitigations=off'];
  return [
    '-nodefaults', '-no-user-config', '-display', 'none', '-no-reboot',
    '-machine', 'q35', ...accel, '-smp', String(m.cpus), '-m', m.memory,
    '-kernel', m.image, '-initrd', m.initrd, '-append', append.join(' '),
    ...m.serial.flatMap((p, i) => ['-chardev', `socket,id=s${i},path=${p.replace(/,/g, ',,')},server=off`, '-serial', `chardev:s${i}`]),
    ...m.shares.flatMap(([tag, p, mode], i) => [
      '-fsdev', `local,id=fs${i},path=${p.replace(/,/g, ',,')},security_model=none,multidevs=remap${mode === 'ro' ? ',readonly=on' : ''}`,
      '-device', `virtio-9p-pci,fsdev=fs${i},mount_tag=${tag}`,
    ]),
  ];
}
