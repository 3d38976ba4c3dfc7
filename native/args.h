// Argument checking shared by the addon's source files, on plain Node-API values (the calls
// are hot: node-addon-api's wrappers cost as much as a cheap ioctl).
#pragma once

#include <napi.h>

#include <cstdint>
#include <string>

namespace kvmg {

class Addon;

inline constexpr double kMaxSafeInteger = 9007199254740991.0;

// Reads a call's arguments. Each accessor validates one argument (wrong type: TypeError;
// does not fit: RangeError); after the first failure it has thrown and every later accessor
// is a no-op, so callers check `ok` once.
class Args {
 public:
  static constexpr size_t kMax = 8;
  // `want`: how many arguments the function reads (fewer slots to fill on hot calls).
  Args(napi_env env, napi_callback_info info, size_t want = kMax) : env(env), argc_(want) {
    napi_get_cb_info(env, info, &argc_, argv_, nullptr, &data_);
  }
  Args(const Napi::CallbackInfo& info, Addon* addon) : env(info.Env()), data_(addon) {
    for (size_t i = 0; i < kMax; i++) argv_[i] = info[i];
  }

  napi_env env;
  bool ok = true;

  // The addon instance: the data pointer every function was created with.
  Addon* addon() const { return static_cast<Addon*>(data_); }
  napi_value arg(size_t i) const { return argv_[i]; }

  int32_t Int32(size_t i, const char* name) { return static_cast<int32_t>(Integer(argv_[i], name, INT32_MIN, INT32_MAX)); }
  // An fd to act on: one this environment opened through the addon, else EBADF without a
  // syscall. The raw layer must not touch the process's other files: fallocate on stdout, an
  // mmap of Node's own files, or a KVM ioctl number on some other driver's device. Checked by
  // Done(), once every argument was read: a getter in a later argument cannot close the fd
  // and open another file at its number between the check and the syscall.
  int Fd(size_t i, const char* name) {
    int fd = Int32(i, name);
    if (ok && nfds_ < 2) {
      fds_[nfds_] = fd;
      fdNames_[nfds_++] = name;
    }
    return fd;
  }
  // Every argument was read: false (an exception pending) when one was bad, or an fd not ours.
  bool Done() {
    if (!ok) return false;
    for (size_t i = 0; i < nfds_; i++) {
      if (!Owned(fds_[i])) {
        NotOurFd(fdNames_[i]);
        return false;
      }
    }
    return true;
  }
  __attribute__((noinline, cold)) void NotOurFd(const char* name);
  uint32_t Uint32(size_t i, const char* name) { return static_cast<uint32_t>(Integer(argv_[i], name, 0, UINT32_MAX)); }
  uint64_t Uint64(size_t i, const char* name) { return Uint64Of(argv_[i], name); }
  // A u64 from any value (an array element).
  uint64_t Uint64Value(napi_value v, const char* name) { return Uint64Of(v, name); }

  // An object argument (nullptr after a failure).
  napi_value Object(size_t i, const char* name) {
    if (!ok) return nullptr;
    napi_valuetype t;
    napi_typeof(env, argv_[i], &t);
    if (t != napi_object) {
      Fail(true, std::string(name) + " must be an object");
      return nullptr;
    }
    return argv_[i];
  }

  // Fields of a struct passed flat, one argument each (hot calls read no properties); an
  // undefined one is 0, as in a C initializer, unless `required`.
  uint32_t Uint32Field(size_t i, const char* name, bool required) {
    return Present(i, name, required) ? Uint32(i, name) : 0;
  }
  uint64_t Uint64Field(size_t i, const char* name, bool required) {
    return Present(i, name, required) ? Uint64(i, name) : 0;
  }

  // Properties of a struct-like object; optional ones default to 0, as in a C initializer.
  uint32_t Uint32Prop(napi_value o, const char* key, bool required) {
    napi_value v = Prop(o, key, required);
    return v ? static_cast<uint32_t>(Integer(v, key, 0, UINT32_MAX)) : 0;
  }
  uint32_t Uint32PropOr(napi_value o, const char* key, uint32_t absent) {
    napi_value v = Prop(o, key, false);
    return v ? static_cast<uint32_t>(Integer(v, key, 0, UINT32_MAX)) : absent;
  }
  uint64_t Uint64Prop(napi_value o, const char* key, bool required) {
    napi_value v = Prop(o, key, required);
    return v ? Uint64Of(v, key) : 0;
  }

  __attribute__((noinline, cold)) void Fail(bool type, const std::string& msg) {
    if (!ok) return;
    ok = false;
    if (type)
      napi_throw_type_error(env, nullptr, msg.c_str());
    else
      napi_throw_range_error(env, nullptr, msg.c_str());
  }

 private:
  // Whether argument i is given (not undefined); a missing required one fails.
  bool Present(size_t i, const char* name, bool required) {
    if (!ok) return false;
    napi_valuetype t;
    napi_typeof(env, argv_[i], &t);
    if (t != napi_undefined) return true;
    if (required) Fail(true, std::string(name) + " is required");
    return false;
  }

  // The property's value, or nullptr when absent (undefined) or after a failure.
  napi_value Prop(napi_value o, const char* key, bool required) {
    if (!ok) return nullptr;
    napi_value v;
    if (napi_get_named_property(env, o, key, &v) != napi_ok) {  // a throwing getter
      ok = false;
      return nullptr;
    }
    napi_valuetype t;
    napi_typeof(env, v, &t);
    if (t == napi_undefined) {
      if (required) Fail(true, std::string(key) + " is required");
      return nullptr;
    }
    return v;
  }

  // The accessors' common case is inline and small; a value that fails goes to the cold
  // out-of-line half, which builds the message. (The hot calls cost about as much as the
  // ioctl they make: a fat frame here shows in every one of them.)
  double Integer(napi_value v, const char* name, double lo, double hi) {
    double d;
    if (ok && napi_get_value_double(env, v, &d) == napi_ok && d >= lo && d <= hi &&
        d == static_cast<double>(static_cast<int64_t>(d)))
      return d;
    return IntegerFailed(v, name, lo, hi);
  }

  // A safe-integer number, or a bigint that fits (the typed layer passes bigints).
  uint64_t Uint64Of(napi_value v, const char* name) {
    if (ok) {
      double d;
      napi_status s = napi_get_value_double(env, v, &d);
      if (s == napi_ok && d >= 0 && d <= kMaxSafeInteger && d == static_cast<double>(static_cast<uint64_t>(d)))
        return static_cast<uint64_t>(d);
      uint64_t u;
      bool lossless = false;
      if (s == napi_number_expected && napi_get_value_bigint_uint64(env, v, &u, &lossless) == napi_ok && lossless) return u;
    }
    return Uint64Slow(v, name);
  }

  __attribute__((noinline, cold)) double IntegerFailed(napi_value v, const char* name, double lo, double hi) {
    if (!ok) return 0;
    double d;
    if (napi_get_value_double(env, v, &d) != napi_ok) {
      Fail(true, std::string(name) + " must be a number");
      return 0;
    }
    Fail(false, std::string(name) + " must be an integer in [" + std::to_string(static_cast<int64_t>(lo)) + ", " +
                    std::to_string(static_cast<int64_t>(hi)) + "]");
    return 0;
  }

  // Not a safe-integer number: a bigint (lossless), or an error.
  __attribute__((noinline)) uint64_t Uint64Slow(napi_value v, const char* name) {
    if (!ok) return 0;
    double d;
    if (napi_get_value_double(env, v, &d) == napi_ok) {
      Fail(false, std::string(name) + " must be a non-negative safe integer (use a bigint for larger values)");
      return 0;
    }
    uint64_t u;
    bool lossless = false;
    if (napi_get_value_bigint_uint64(env, v, &u, &lossless) != napi_ok) {
      Fail(true, std::string(name) + " must be a bigint or a number");
      return 0;
    }
    if (!lossless) Fail(false, std::string(name) + " does not fit in a u64");
    return u;
  }

  bool Owned(int fd) const;

  size_t argc_ = kMax;
  napi_value argv_[kMax];
  void* data_ = nullptr;
  int fds_[2] = {-1, -1};
  const char* fdNames_[2] = {nullptr, nullptr};
  size_t nfds_ = 0;
};

}  // namespace kvmg
