// One place where errno becomes a JavaScript error (the fs-xattr idea): every
// error we hand to JS has Node's system-error shape (code, errno, syscall)
// plus the pid it concerns.
#pragma once

#include <napi.h>

#include <string>

namespace treestate {

struct SysError {
  int err = 0;              // errno value; 0 when `code` names a policy refusal
  const char* code = nullptr;  // overrides the errno name (e.g. "EREFUSED")
  const char* syscall = "";
  int pid = 0;
};

const char* ErrnoName(int err);

// A plain {code, errno, syscall, pid, message} object, for per-process
// failures that are reported as data inside a result.
Napi::Object ErrorRecord(Napi::Env env, const SysError& e);

// A thrown Error with the same fields; `what` says what it means for the
// operation ("cannot read the tree of pid 42").
Napi::Error MakeError(Napi::Env env, const SysError& e, const std::string& what);

}  // namespace treestate
