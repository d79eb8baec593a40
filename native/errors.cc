#include "errors.h"

#include <string.h>

namespace treestate {

const char* ErrnoName(int err) {
  // strerrorname_np is glibc >= 2.32; the addon is built where it runs.
  const char* name = strerrorname_np(err);
  return name ? name : "EUNKNOWN";
}

static std::string Describe(const SysError& e) {
  std::string msg = e.code ? e.code : ErrnoName(e.err);
  if (e.err != 0) {
    msg += ": ";
    msg += strerror(e.err);
  }
  if (e.syscall && *e.syscall) {
    msg += " (";
    msg += e.syscall;
    msg += ")";
  }
  if (e.pid > 0) msg += ", pid " + std::to_string(e.pid);
  return msg;
}

static void Fill(Napi::Env env, Napi::Object o, const SysError& e) {
  o.Set("code", Napi::String::New(env, e.code ? e.code : ErrnoName(e.err)));
  // Node's system errors carry a negative errno (uv convention).
  o.Set("errno", Napi::Number::New(env, -e.err));
  o.Set("syscall", Napi::String::New(env, e.syscall ? e.syscall : ""));
  o.Set("pid", Napi::Number::New(env, e.pid));
  // The errno's own words, as a field: nothing needs to parse the message.
  o.Set("description", Napi::String::New(env, e.err != 0 ? strerror(e.err) : ""));
}

Napi::Object ErrorRecord(Napi::Env env, const SysError& e) {
  Napi::Object o = Napi::Object::New(env);
  Fill(env, o, e);
  o.Set("message", Napi::String::New(env, Describe(e)));
  return o;
}

Napi::Error MakeError(Napi::Env env, const SysError& e, const std::string& what) {
  Napi::Error error = Napi::Error::New(env, what + ": " + Describe(e));
  Fill(env, error.Value(), e);
  return error;
}

}  // namespace treestate
