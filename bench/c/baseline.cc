// The C baseline for `npm run bench`: the same loops as bench/ops.mjs, as direct syscalls.
// Prints one JSON object: { op: ns_per_op, ... }. Built by scripts/bench.mjs with c++ -O2.
//
// `baseline [scale] [threads] [op]`: with threads = 1 an idle second thread runs during the
// loops; with an op name, only that loop runs.
// That matters: in a single-threaded process the kernel's fdget() skips the atomic reference
// count on the file, so every fd syscall is cheaper than in any multi-threaded process, and a
// Node process always has several threads. The threaded run is the like-for-like baseline.
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <pthread.h>
#include <time.h>
#include <unistd.h>

#include "../../native/kvm_uapi.h"

using namespace kvmg;

static double now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static void die(const char* what) {
  fprintf(stderr, "baseline: %s: %s\n", what, strerror(errno));
  exit(1);
}

static const char* only = nullptr;  // run just this op (argv[3])

#define BENCH(name, iters, body)                              \
  do {                                                        \
    if (only && strcmp(only, name) != 0) break;               \
    for (long i = 0; i < (iters) / 10; i++) { body; }         \
    double t0 = now_ns();                                     \
    for (long i = 0; i < (iters); i++) { body; }              \
    printf("%s\"%s\": %.1f", first ? "" : ", ", name, (now_ns() - t0) / (iters)); \
    first = 0;                                                \
  } while (0)

static void* idle(void*) {
  for (;;) pause();
  return nullptr;
}

int main(int argc, char** argv) {
  double scale = argc > 1 ? atof(argv[1]) : 1.0;
  if (argc > 3) only = argv[3];
  if (argc > 2 && atoi(argv[2]) != 0) {
    pthread_t t;
    pthread_create(&t, nullptr, idle, nullptr);
  }
  int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
  if (kvm < 0) die("/dev/kvm");
  int vm = ioctl(kvm, KVM_CREATE_VM, 0);
  if (vm < 0) die("KVM_CREATE_VM");
  kvm_create_guest_memfd cg = {};
  cg.size = 2 << 20;
  cg.flags = 3;  // MMAP | INIT_SHARED
  int g = ioctl(vm, KVM_CREATE_GUEST_MEMFD, &cg);
  if (g < 0) die("KVM_CREATE_GUEST_MEMFD");
  int first = 1;
  printf("{");
  BENCH("checkExtension", (long)(2e6 * scale), if (ioctl(kvm, KVM_CHECK_EXTENSION, 234) < 0) die("check"));
  BENCH("punchHole empty 4 KiB", (long)(1e6 * scale), if (fallocate(g, 3, 0, 4096) < 0) die("punch"));
  BENCH("allocate+punch 4 KiB", (long)(2e5 * scale), {
    if (fallocate(g, 1, 0, 4096) < 0) die("allocate");
    if (fallocate(g, 3, 0, 4096) < 0) die("punch");
  });
  BENCH("gmem create+close", (long)(1e5 * scale), {
    kvm_create_guest_memfd c = {};
    c.size = 2 << 20;
    c.flags = 3;
    int fd = ioctl(vm, KVM_CREATE_GUEST_MEMFD, &c);
    if (fd < 0) die("create");
    fcntl(fd, F_SETFD, FD_CLOEXEC);
    close(fd);
  });
  BENCH("memslot add+delete", (long)(2e4 * scale), {
    kvm_userspace_memory_region2 r = {};
    r.slot = 0;
    r.flags = 4;
    r.guest_phys_addr = 0;
    r.memory_size = 2 << 20;
    r.guest_memfd = g;
    if (ioctl(vm, KVM_SET_USER_MEMORY_REGION2, &r) < 0) die("add");
    r.memory_size = 0;
    r.flags = 0;
    if (ioctl(vm, KVM_SET_USER_MEMORY_REGION2, &r) < 0) die("delete");
  });
  BENCH("map+unmap 2 MiB", (long)(1e5 * scale), {
    void* p = mmap(NULL, 2 << 20, PROT_READ | PROT_WRITE, MAP_SHARED, g, 0);
    if (p == MAP_FAILED) die("mmap");
    munmap(p, 2 << 20);
  });
  printf("}\n");
  return 0;
}
