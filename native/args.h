// Argument checking shared by the addon's source files.
#pragma once

#include <napi.h>

#include <cstdint>
#include <string>

#include "addon.h"

namespace kvmg {

// Identifies ArrayBuffers created by mmap() below (Node-API 8 type tags).
inline constexpr napi_type_tag kMappingTag = {0x6b766d2d676d656dULL, 0x6d617070696e6721ULL};

inline constexpr double kMaxSafeInteger = 9007199254740991.0;

// Argument reader: each accessor validates one argument; after the first failure it has
// thrown and every later accessor is a no-op, so callers check `ok` once.
class Args {
 public:
  explicit Args(const Napi::CallbackInfo& info) : info_(info), env_(info.Env()) {}
  bool ok = true;

  int32_t Int32(size_t i, const char* name) { return Int32Of(info_[i], name); }
  uint32_t Uint32(size_t i, const char* name) { return Uint32Of(info_[i], name); }
  uint64_t Uint64(size_t i, const char* name) { return Uint64Of(info_[i], name); }

  Napi::Object Object(size_t i, const char* name) {
    if (!ok) return Napi::Object();
    Napi::Value v = info_[i];
    if (!v.IsObject()) {
      Fail(true, std::string(name) + " must be an object");
      return Napi::Object();
    }
    return v.As<Napi::Object>();
  }

  // Optional properties default to 0, as in a C designated initializer.
  uint32_t Uint32Prop(Napi::Object o, const char* key, bool required) {
    Napi::Value v = Prop(o, key, required);
    return (ok && !v.IsUndefined()) ? Uint32Of(v, key) : 0;
  }
  uint64_t Uint64Prop(Napi::Object o, const char* key, bool required) {
    Napi::Value v = Prop(o, key, required);
    return (ok && !v.IsUndefined()) ? Uint64Of(v, key) : 0;
  }

  // Throws TypeError (type=true) or RangeError (type=false) and marks the call failed.
  void Fail(bool type, const std::string& msg) {
    if (!ok) return;
    ok = false;
    if (type)
      Napi::TypeError::New(env_, msg).ThrowAsJavaScriptException();
    else
      Napi::RangeError::New(env_, msg).ThrowAsJavaScriptException();
  }

 private:
  Napi::Value Prop(Napi::Object o, const char* key, bool required) {
    if (!ok) return Napi::Value();
    Napi::Value v = o.Get(key);
    if (env_.IsExceptionPending()) {  // a throwing getter
      ok = false;
      return Napi::Value();
    }
    if (required && v.IsUndefined()) Fail(true, std::string(key) + " is required");
    return v;
  }

  // A JS number that is an integer in [lo, hi].
  double IntegerOf(Napi::Value v, const char* name, double lo, double hi) {
    if (!ok) return 0;
    double d;
    if (napi_get_value_double(env_, v, &d) != napi_ok) {
      Fail(true, std::string(name) + " must be a number");
      return 0;
    }
    if (!(d >= lo && d <= hi) || d != static_cast<double>(static_cast<int64_t>(d))) {
      Fail(false, std::string(name) + " must be an integer in [" + std::to_string((int64_t)lo) +
                      ", " + std::to_string((int64_t)hi) + "]");
      return 0;
    }
    return d;
  }
  int32_t Int32Of(Napi::Value v, const char* name) {
    return static_cast<int32_t>(IntegerOf(v, name, INT32_MIN, INT32_MAX));
  }
  uint32_t Uint32Of(Napi::Value v, const char* name) {
    return static_cast<uint32_t>(IntegerOf(v, name, 0, UINT32_MAX));
  }
  uint64_t Uint64Of(Napi::Value v, const char* name) {
    if (!ok) return 0;
    if (v.IsBigInt()) {
      bool lossless = false;
      uint64_t u = v.As<Napi::BigInt>().Uint64Value(&lossless);
      if (!lossless) Fail(false, std::string(name) + " does not fit in a u64");
      return u;
    }
    if (!v.IsNumber()) {
      Fail(true, std::string(name) + " must be a bigint or a number");
      return 0;
    }
    double d = v.As<Napi::Number>().DoubleValue();
    if (!(d >= 0 && d <= kMaxSafeInteger) || d != static_cast<double>(static_cast<uint64_t>(d))) {
      Fail(false, std::string(name) +
                      " must be a non-negative safe integer (use a bigint for larger values)");
      return 0;
    }
    return static_cast<uint64_t>(d);
  }

  const Napi::CallbackInfo& info_;
  Napi::Env env_;
};

// The Mapping record of an ArrayBuffer returned by mmap(), or nullptr (TypeError thrown).
Mapping* UnwrapMapping(Napi::Env env, Napi::Value v);

}  // namespace kvmg
