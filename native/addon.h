// kvm-gmem native addon: shared declarations.
//
// The addon is deliberately thin: each exported function checks the JS argument types, makes
// exactly one system call and returns its result, or throws the KvmError class that the
// TypeScript layer registered (errno, code, syscall, request). Policy, validation and
// bookkeeping live in TypeScript, where the simulator shares them.
#pragma once

#include <napi.h>

#include <cstdint>
#include <memory>
#include <unordered_map>
#include <unordered_set>
#include <vector>

namespace kvmg {

struct RunState;

// A mapping made by mmap(), until munmap() (or the environment's end). Its ArrayBuffer is
// made on first request and held until munmap, which detaches it.
struct Mapping {
  void* addr;
  size_t length;
  int fd;
  int prot;
  int flags;
  napi_ref buffer = nullptr;  // the whole-mapping buffer (mappings up to 4 GiB)
  std::vector<napi_ref> windows;  // buffers over parts of it (any size), detached by munmap
  int busy = 0;  // KVM_RUN threads using this (a vCPU's kvm_run area): munmap is refused
};

// What one Node environment (main thread or worker) has open through the addon. The env
// cleanup hook closes and unmaps whatever is still here when the environment ends, so a
// worker that exits does not leak into the process. Shared with each Mapping so that a
// finalizer running after the addon instance is gone never touches freed memory.
struct Registry {
  // owned[fd] != 0 for the fds open through the addon: an O(1) check per call, and no
  // allocation per open/close (the kernel hands out the lowest free numbers, so it stays small).
  std::vector<uint8_t> owned;
  bool Owns(int fd) const { return fd >= 0 && static_cast<size_t>(fd) < owned.size() && owned[fd]; }
  void Add(int fd) {
    if (static_cast<size_t>(fd) >= owned.size()) owned.resize(fd + 64);
    owned[fd] = 1;
  }
  bool Remove(int fd) {
    if (!Owns(fd)) return false;
    owned[fd] = 0;
    return true;
  }
  // By address, while mapped. Held by value (one allocation per mmap); a Mapping's address
  // stays valid until its own erase, whatever else is inserted or erased.
  std::unordered_map<void*, Mapping> mappings;
  std::unordered_set<std::shared_ptr<RunState>> runs;  // KVM_RUN threads in flight
};

// The live mapping at `addr`, or nullptr.
inline Mapping* FindMapping(Registry* registry, uint64_t addr) {
  auto it = registry->mappings.find(reinterpret_cast<void*>(addr));
  return it == registry->mappings.end() ? nullptr : &it->second;
}

// Kicks every vCPU thread of the registry out of KVM_RUN and waits until each has left it.
void StopRuns(Registry* registry);

// Per-environment addon instance (no mutable static state: safe in worker_threads).
class Addon : public Napi::Addon<Addon> {
 public:
  Addon(Napi::Env env, Napi::Object exports);

  std::shared_ptr<Registry> registry = std::make_shared<Registry>();
  Napi::FunctionReference errorClass;  // KvmError, registered by lib/raw/native.ts

  // Throws KvmError(errno) for a failed `syscall` (request: the KVM ioctl name, or null).
  void ThrowErrno(napi_env env, int err, const char* syscall, const char* request, const char* detail = nullptr);
  // Records an fd the addon created and returns it as a JS number.
  napi_value NewFd(napi_env env, int fd);

  // vCPU calls (vcpu.cc), as node-addon-api instance methods.
  Napi::Value GetRegs(const Napi::CallbackInfo& info);
  Napi::Value SetRegs(const Napi::CallbackInfo& info);
  Napi::Value GetSregs(const Napi::CallbackInfo& info);
  Napi::Value SetSregs(const Napi::CallbackInfo& info);
  Napi::Value Run(const Napi::CallbackInfo& info);
  Napi::Value Kick(const Napi::CallbackInfo& info);

 private:
  static void Cleanup(Registry* registry);
};

}  // namespace kvmg
