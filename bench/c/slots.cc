// The C side of bench/lab-slots.mjs: N one-page guest_memfd memslots added (slot i at page i,
// file page i) and then deleted in ascending order, as KVM_SET_USER_MEMORY_REGION2 calls in a
// fresh VM. Prints { "n": N, "addMs": ..., "deleteMs": ... }.
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#include "../../native/kvm_uapi.h"

using namespace kvmg;

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void die(const char* what) {
  fprintf(stderr, "slots: %s: %s\n", what, strerror(errno));
  exit(1);
}

int main(int argc, char** argv) {
  long n = argc > 1 ? atol(argv[1]) : 32764;
  int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
  if (kvm < 0) die("/dev/kvm");
  int vm = ioctl(kvm, KVM_CREATE_VM, 0);
  if (vm < 0) die("KVM_CREATE_VM");
  kvm_create_guest_memfd cg = {};
  cg.size = static_cast<uint64_t>(n) * 4096;
  int g = ioctl(vm, KVM_CREATE_GUEST_MEMFD, &cg);
  if (g < 0) die("KVM_CREATE_GUEST_MEMFD");
  kvm_userspace_memory_region2 r = {};
  r.flags = 4;  // KVM_MEM_GUEST_MEMFD
  r.guest_memfd = g;
  double t0 = now_ms();
  for (long i = 0; i < n; i++) {
    r.slot = static_cast<uint32_t>(i);
    r.guest_phys_addr = static_cast<uint64_t>(i) * 4096;
    r.memory_size = 4096;
    r.guest_memfd_offset = static_cast<uint64_t>(i) * 4096;
    if (ioctl(vm, KVM_SET_USER_MEMORY_REGION2, &r) < 0) die("add");
  }
  double t1 = now_ms();
  for (long i = 0; i < n; i++) {
    r.slot = static_cast<uint32_t>(i);
    r.guest_phys_addr = static_cast<uint64_t>(i) * 4096;
    r.memory_size = 0;
    if (ioctl(vm, KVM_SET_USER_MEMORY_REGION2, &r) < 0) die("delete");
  }
  double t2 = now_ms();
  printf("{\"n\": %ld, \"addMs\": %.1f, \"deleteMs\": %.1f}\n", n, t1 - t0, t2 - t1);
  return 0;
}
