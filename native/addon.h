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
#include <unordered_set>

namespace kvmg {

struct Mapping;
struct RunState;

// What one Node environment (main thread or worker) has open through the addon. The env
// cleanup hook closes and unmaps whatever is still here when the environment ends, so a
// worker that exits does not leak into the process. Shared with each Mapping so that a
// finalizer running after the addon instance is gone never touches freed memory.
struct Registry {
  std::unordered_set<int> fds;
  std::unordered_set<Mapping*> mappings;
  std::unordered_set<std::shared_ptr<RunState>> runs;  // KVM_RUN threads in flight
};

// Kicks every vCPU thread of the registry out of KVM_RUN and waits until each has left it.
void StopRuns(Registry* registry);

struct Mapping {
  void* addr;
  size_t length;
  bool mapped;
  std::shared_ptr<Registry> registry;
  int busy = 0;  // KVM_RUN threads using this (a vCPU's kvm_run area): munmap is refused
};

// Per-environment addon instance (no mutable static state: safe in worker_threads).
class Addon : public Napi::Addon<Addon> {
 public:
  Addon(Napi::Env env, Napi::Object exports);

  std::shared_ptr<Registry> registry = std::make_shared<Registry>();
  Napi::FunctionReference errorClass;  // KvmError, registered by lib/raw/native.ts

  // Throws KvmError(errno) for a failed `syscall` (request: the KVM ioctl name, or null).
  void ThrowErrno(Napi::Env env, int err, const char* syscall, const char* request);

 private:
  Napi::Value SetErrorClass(const Napi::CallbackInfo& info);
  Napi::Value Open(const Napi::CallbackInfo& info);
  Napi::Value Close(const Napi::CallbackInfo& info);
  Napi::Value GetApiVersion(const Napi::CallbackInfo& info);
  Napi::Value CheckExtension(const Napi::CallbackInfo& info);
  Napi::Value CreateVm(const Napi::CallbackInfo& info);
  Napi::Value GetVcpuMmapSize(const Napi::CallbackInfo& info);
  Napi::Value CreateVcpu(const Napi::CallbackInfo& info);
  Napi::Value CreateGuestMemfd(const Napi::CallbackInfo& info);
  Napi::Value SetUserMemoryRegion(const Napi::CallbackInfo& info);
  Napi::Value SetUserMemoryRegion2(const Napi::CallbackInfo& info);
  Napi::Value SetMemoryAttributes(const Napi::CallbackInfo& info);
  Napi::Value PreFaultMemory(const Napi::CallbackInfo& info);
  Napi::Value Fallocate(const Napi::CallbackInfo& info);
  Napi::Value Fstat(const Napi::CallbackInfo& info);
  Napi::Value Mmap(const Napi::CallbackInfo& info);
  Napi::Value Munmap(const Napi::CallbackInfo& info);
  Napi::Value MappingAddress(const Napi::CallbackInfo& info);
  Napi::Value GetRegs(const Napi::CallbackInfo& info);
  Napi::Value SetRegs(const Napi::CallbackInfo& info);
  Napi::Value GetSregs(const Napi::CallbackInfo& info);
  Napi::Value SetSregs(const Napi::CallbackInfo& info);
  Napi::Value Run(const Napi::CallbackInfo& info);
  Napi::Value Kick(const Napi::CallbackInfo& info);

  Napi::Value NewFd(Napi::Env env, int fd);
  static void Cleanup(Registry* registry);
};

}  // namespace kvmg
