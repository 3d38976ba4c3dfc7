/**
 * The lab's /init, a busybox shell script. It loads the modules, makes the host's root the
 * guest's (read-only over 9p, made writable by an overlay on tmpfs where the kernel has
 * overlayfs), mounts the writable shares at their host paths, checks KVM, then runs the
 * command in that root with the host's working directory and environment: stdout on ttyS1,
 * stderr on ttyS2 (both raw), and its exit status reported on the console (ttyS0) between
 * markers the host reads. Everything it needs comes from /lab/ in the initramfs:
 *   /lab/config   LAB_MODULES, LAB_OPTIONAL_MODULES, LAB_REQUIRE, LAB_CWD (shell assignments)
 *   /lab/shares   one writable share per line: "<mount tag> <path>"
 *   /lab/env      the command's environment (export lines)
 *   /lab/argv     the command (a `set --` line)
 */
export const MARK = '@@kvm-gmem-lab:';

export const INIT_SCRIPT = `#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
con=/dev/ttyS0
say() { echo "${MARK} $*@@" > $con; }
halt() { sync; poweroff -f; sleep 10; }
say "init $(cut -d' ' -f1 /proc/uptime)"
say "release $(uname -r)"
. /lab/config
for m in $LAB_MODULES; do insmod /lab/modules/$m.ko > $con 2>&1 || say "warn insmod $m failed"; done
for m in $LAB_OPTIONAL_MODULES; do
  case $m in kvm_amd) grep -qw svm /proc/cpuinfo || continue;; kvm_intel) grep -qw vmx /proc/cpuinfo || continue;; esac
  insmod /lab/modules/$m.ko > /dev/null 2>&1
done
hostname kvm-gmem-lab
ip link set lo up 2>/dev/null
stty -F /dev/ttyS1 raw -echo 2>/dev/null
stty -F /dev/ttyS2 raw -echo 2>/dev/null
opts=trans=virtio,version=9p2000.L,msize=512000
mkdir -p /lower /upper /newroot
mount -t 9p -o $opts,ro,cache=loose hostroot /lower || { say "fail cannot mount the host's root over 9p"; halt; }
if mount -t tmpfs -o mode=755 tmpfs /upper && mkdir -p /upper/u /upper/w &&
   mount -t overlay -o lowerdir=/lower,upperdir=/upper/u,workdir=/upper/w overlay /newroot 2>/dev/null; then :
else
  mount --bind /lower /newroot
  say "warn no overlayfs in this kernel: the host's files are read-only here (the writable shares still are)"
fi
while read -r tag path; do
  [ -n "$tag" ] || continue
  mkdir -p "/newroot$path" 2>/dev/null
  mount -t 9p -o $opts,rw "$tag" "/newroot$path" || say "fail cannot mount the writable share $path"
done < /lab/shares
mount -t proc proc /newroot/proc
mount -t sysfs sysfs /newroot/sys
mount -t devtmpfs devtmpfs /newroot/dev
mkdir -p /newroot/dev/pts /newroot/dev/shm
mount -t devpts devpts /newroot/dev/pts
mount -t tmpfs -o mode=1777 tmpfs /newroot/dev/shm
mount -t tmpfs -o mode=755 tmpfs /newroot/run 2>/dev/null
if [ "$LAB_REQUIRE" != none ] && [ ! -c /dev/kvm ]; then
  say "no-kvm"
  dmesg | grep -iE 'kvm|svm|vmx|virtuali' | tail -n 20 > $con
  halt
fi
if [ "$LAB_REQUIRE" = guest_memfd ] && ! grep -q ' kvm_gmem_' /proc/kallsyms; then
  say "no-gmem"
  halt
fi
. /lab/argv
say "ready $(cut -d' ' -f1 /proc/uptime)"
# stdout and stderr are pipes, as they are for the host side (a program that sees a tty
# behaves differently); cat copies them to the serial ports.
mkfifo /lab/out /lab/err
cat /lab/out > /dev/ttyS1 & out=$!
cat /lab/err > /dev/ttyS2 & err=$!
( . /lab/env; exec chroot /newroot /bin/sh -c 'cd "$0" || exit 126; exec "$@"' "$LAB_CWD" "$@" ) < /dev/null > /lab/out 2> /lab/err
status=$?
# (A process the command left behind may hold the pipes open: wait at most 5 s for the rest.)
i=0; while [ $i -lt 50 ] && { kill -0 $out || kill -0 $err; } 2>/dev/null; do sleep 0.1; i=$((i+1)); done
say "exit $status"
halt
`;
