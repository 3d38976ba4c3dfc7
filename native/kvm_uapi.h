// The subset of the Linux KVM UAPI (include/uapi/linux/kvm.h, arch/x86/include/uapi/asm/kvm.h)
// that kvm-gmem uses, as of Linux 6.18 (the same in 7.2 and 7.3).
//
// Carried here because distribution headers may predate guest_memfd (Debian 12 ships 6.1,
// which has none of it). Every struct layout is pinned with static_asserts on size and field
// offsets, so a mismatch with the kernel ABI fails the build instead of corrupting an ioctl.
// Names live in namespace kvmg to avoid clashing with a system <linux/kvm.h>.
#pragma once

#include <cstddef>
#include <cstdint>
#include <sys/ioctl.h>

namespace kvmg {

constexpr unsigned kKvmIo = 0xAE;

// ---- structs ----------------------------------------------------------------------------

struct kvm_userspace_memory_region {
  uint32_t slot;                // bits 15:0 slot id, bits 31:16 address-space id
  uint32_t flags;
  uint64_t guest_phys_addr;
  uint64_t memory_size;
  uint64_t userspace_addr;
};
static_assert(sizeof(kvm_userspace_memory_region) == 32, "kvm_userspace_memory_region size");
static_assert(offsetof(kvm_userspace_memory_region, flags) == 4, "flags offset");
static_assert(offsetof(kvm_userspace_memory_region, guest_phys_addr) == 8, "guest_phys_addr offset");
static_assert(offsetof(kvm_userspace_memory_region, memory_size) == 16, "memory_size offset");
static_assert(offsetof(kvm_userspace_memory_region, userspace_addr) == 24, "userspace_addr offset");

struct kvm_userspace_memory_region2 {
  uint32_t slot;
  uint32_t flags;
  uint64_t guest_phys_addr;
  uint64_t memory_size;
  uint64_t userspace_addr;
  uint64_t guest_memfd_offset;
  uint32_t guest_memfd;
  uint32_t pad1;
  uint64_t pad2[14];
};
static_assert(sizeof(kvm_userspace_memory_region2) == 160, "kvm_userspace_memory_region2 size");
static_assert(offsetof(kvm_userspace_memory_region2, guest_phys_addr) == 8, "guest_phys_addr offset");
static_assert(offsetof(kvm_userspace_memory_region2, memory_size) == 16, "memory_size offset");
static_assert(offsetof(kvm_userspace_memory_region2, userspace_addr) == 24, "userspace_addr offset");
static_assert(offsetof(kvm_userspace_memory_region2, guest_memfd_offset) == 32, "guest_memfd_offset");
static_assert(offsetof(kvm_userspace_memory_region2, guest_memfd) == 40, "guest_memfd offset");
static_assert(offsetof(kvm_userspace_memory_region2, pad1) == 44, "pad1 offset");
static_assert(offsetof(kvm_userspace_memory_region2, pad2) == 48, "pad2 offset");

struct kvm_create_guest_memfd {
  uint64_t size;
  uint64_t flags;
  uint64_t reserved[6];
};
static_assert(sizeof(kvm_create_guest_memfd) == 64, "kvm_create_guest_memfd size");
static_assert(offsetof(kvm_create_guest_memfd, flags) == 8, "flags offset");

struct kvm_memory_attributes {
  uint64_t address;
  uint64_t size;
  uint64_t attributes;
  uint64_t flags;
};
static_assert(sizeof(kvm_memory_attributes) == 32, "kvm_memory_attributes size");
static_assert(offsetof(kvm_memory_attributes, attributes) == 16, "attributes offset");
static_assert(offsetof(kvm_memory_attributes, flags) == 24, "flags offset");

struct kvm_pre_fault_memory {
  uint64_t gpa;
  uint64_t size;
  uint64_t flags;
  uint64_t padding[5];
};
static_assert(sizeof(kvm_pre_fault_memory) == 64, "kvm_pre_fault_memory size");
static_assert(offsetof(kvm_pre_fault_memory, flags) == 16, "flags offset");

struct kvm_regs {  // x86: general-purpose registers
  uint64_t rax, rbx, rcx, rdx, rsi, rdi, rsp, rbp;
  uint64_t r8, r9, r10, r11, r12, r13, r14, r15;
  uint64_t rip, rflags;
};
static_assert(sizeof(kvm_regs) == 144, "kvm_regs size");
static_assert(offsetof(kvm_regs, rip) == 128, "rip offset");

struct kvm_segment {
  uint64_t base;
  uint32_t limit;
  uint16_t selector;
  uint8_t type, present, dpl, db, s, l, g, avl;
  uint8_t unusable, padding;
};
static_assert(sizeof(kvm_segment) == 24, "kvm_segment size");

struct kvm_dtable {
  uint64_t base;
  uint16_t limit;
  uint16_t padding[3];
};
static_assert(sizeof(kvm_dtable) == 16, "kvm_dtable size");

struct kvm_sregs {  // x86: segment and control registers
  kvm_segment cs, ds, es, fs, gs, ss, tr, ldt;
  kvm_dtable gdt, idt;
  uint64_t cr0, cr2, cr3, cr4, cr8, efer, apic_base;
  uint64_t interrupt_bitmap[4];  // (KVM_NR_INTERRUPTS + 63) / 64
};
static_assert(sizeof(kvm_sregs) == 312, "kvm_sregs size");
static_assert(offsetof(kvm_sregs, gdt) == 192, "gdt offset");
static_assert(offsetof(kvm_sregs, cr0) == 224, "cr0 offset");
static_assert(offsetof(kvm_sregs, interrupt_bitmap) == 280, "interrupt_bitmap offset");

struct kvm_enable_cap {
  uint32_t cap;
  uint32_t flags;
  uint64_t args[4];
  uint8_t pad[64];
};
static_assert(sizeof(kvm_enable_cap) == 104, "kvm_enable_cap size");
static_assert(offsetof(kvm_enable_cap, args) == 8, "args offset");

// struct kvm_run: the header fields kvm-gmem touches (the union is decoded in TypeScript).
constexpr size_t kRunImmediateExit = 1;  // __u8 immediate_exit
constexpr size_t kRunExitReason = 8;     // __u32 exit_reason

// ---- ioctl numbers (asm-generic/ioctl.h encoding, x86-64) --------------------------------

constexpr unsigned long IoctlNr(unsigned dir, unsigned nr, unsigned size) {
  return (static_cast<unsigned long>(dir) << 30) | (static_cast<unsigned long>(size) << 16) |
         (kKvmIo << 8) | nr;
}
constexpr unsigned kDirNone = 0, kDirWrite = 1, kDirRead = 2;

constexpr unsigned long KVM_GET_API_VERSION = IoctlNr(kDirNone, 0x00, 0);
constexpr unsigned long KVM_CREATE_VM = IoctlNr(kDirNone, 0x01, 0);
constexpr unsigned long KVM_CHECK_EXTENSION = IoctlNr(kDirNone, 0x03, 0);
constexpr unsigned long KVM_GET_VCPU_MMAP_SIZE = IoctlNr(kDirNone, 0x04, 0);
constexpr unsigned long KVM_CREATE_VCPU = IoctlNr(kDirNone, 0x41, 0);
constexpr unsigned long KVM_RUN = IoctlNr(kDirNone, 0x80, 0);
constexpr unsigned long KVM_GET_REGS = IoctlNr(kDirRead, 0x81, sizeof(kvm_regs));
constexpr unsigned long KVM_SET_REGS = IoctlNr(kDirWrite, 0x82, sizeof(kvm_regs));
constexpr unsigned long KVM_GET_SREGS = IoctlNr(kDirRead, 0x83, sizeof(kvm_sregs));
constexpr unsigned long KVM_SET_SREGS = IoctlNr(kDirWrite, 0x84, sizeof(kvm_sregs));
constexpr unsigned long KVM_SET_USER_MEMORY_REGION =
    IoctlNr(kDirWrite, 0x46, sizeof(kvm_userspace_memory_region));
constexpr unsigned long KVM_SET_USER_MEMORY_REGION2 =
    IoctlNr(kDirWrite, 0x49, sizeof(kvm_userspace_memory_region2));
constexpr unsigned long KVM_SET_MEMORY_ATTRIBUTES =
    IoctlNr(kDirWrite, 0xd2, sizeof(kvm_memory_attributes));
constexpr unsigned long KVM_CREATE_GUEST_MEMFD =
    IoctlNr(kDirRead | kDirWrite, 0xd4, sizeof(kvm_create_guest_memfd));
constexpr unsigned long KVM_PRE_FAULT_MEMORY =
    IoctlNr(kDirRead | kDirWrite, 0xd5, sizeof(kvm_pre_fault_memory));
constexpr unsigned long KVM_ENABLE_CAP = IoctlNr(kDirWrite, 0xa3, sizeof(kvm_enable_cap));
constexpr uint64_t kGuestMemfdFlagInitShared = 1ull << 1;

// Values the kernel documents (docs/kernel-rules.md, UAPI); a wrong encoder fails here.
static_assert(KVM_CHECK_EXTENSION == 0xAE03, "KVM_CHECK_EXTENSION");
static_assert(KVM_RUN == 0xAE80, "KVM_RUN");
static_assert(KVM_GET_REGS == 0x8090AE81, "KVM_GET_REGS");
static_assert(KVM_SET_SREGS == 0x4138AE84, "KVM_SET_SREGS");
static_assert(KVM_CREATE_VM == 0xAE01, "KVM_CREATE_VM");
static_assert(KVM_SET_USER_MEMORY_REGION == 0x4020AE46, "KVM_SET_USER_MEMORY_REGION");
static_assert(KVM_SET_USER_MEMORY_REGION2 == 0x40A0AE49, "KVM_SET_USER_MEMORY_REGION2");
static_assert(KVM_SET_MEMORY_ATTRIBUTES == 0x4020AED2, "KVM_SET_MEMORY_ATTRIBUTES");
static_assert(KVM_CREATE_GUEST_MEMFD == 0xC040AED4, "KVM_CREATE_GUEST_MEMFD");
static_assert(KVM_PRE_FAULT_MEMORY == 0xC040AED5, "KVM_PRE_FAULT_MEMORY");
static_assert(KVM_ENABLE_CAP == 0x4068AEA3, "KVM_ENABLE_CAP");

}  // namespace kvmg
