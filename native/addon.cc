// Registration only: each operation lives in workers.cc, Linux knowledge in
// proc.cc, signal.cc and walk.cc.
#include <napi.h>
#include <errno.h>
#include <signal.h>
#include <unistd.h>

#include "cgroup.h"
#include "errors.h"
#include "inspect.h"
#include "proc.h"
#include "rpc_workers.h"
#include "workers.h"

namespace {

Napi::Value SelfAndAncestors(const Napi::CallbackInfo& info) {
  std::vector<pid_t> chain = treestate::SelfAndAncestors();
  Napi::Array a = Napi::Array::New(info.Env(), chain.size());
  for (size_t i = 0; i < chain.size(); i++) a.Set(i, Napi::Number::New(info.Env(), chain[i]));
  return a;
}

Napi::Value ChildrenFilesSupported(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), treestate::ChildrenFilesSupported());
}

// null when no cgroup2 hierarchy is mounted.
Napi::Value Cgroup2MountOf(const Napi::CallbackInfo& info) {
  treestate::Cgroup2Mount mount;
  int e = treestate::FindCgroup2Mount(&mount);
  if (e == ENOENT) return info.Env().Null();
  if (e) {
    treestate::MakeError(info.Env(), {e, nullptr, "open", 0}, "cannot read /proc/self/mountinfo").ThrowAsJavaScriptException();
    return info.Env().Undefined();
  }
  Napi::Object o = Napi::Object::New(info.Env());
  o.Set("path", mount.path);
  o.Set("root", mount.root);
  return o;
}

// null when the process has no cgroup v2 line (a v1-only system).
Napi::Value CgroupOf(const Napi::CallbackInfo& info) {
  pid_t pid = info[0].As<Napi::Number>().Int32Value();
  std::string path;
  int e = treestate::CgroupOf(pid, &path);
  if (e == ENOENT) return info.Env().Null();
  if (e) {
    treestate::MakeError(info.Env(), {e, nullptr, "open", pid}, "cannot read the cgroup of pid " + std::to_string(pid))
        .ThrowAsJavaScriptException();
    return info.Env().Undefined();
  }
  return Napi::String::New(info.Env(), path);
}

// One small read, like selfAndAncestors: for naming the tracer of a process
// criu could not seize, after the fact.
Napi::Value TracerOf(const Napi::CallbackInfo& info) {
  pid_t pid = static_cast<pid_t>(info[0].As<Napi::Number>().Int32Value());
  return Napi::Number::New(info.Env(), treestate::ReadTracer(pid, pid));
}

// The session of a process (its stat line), -1 when it cannot be read.
Napi::Value SessionOf(const Napi::CallbackInfo& info) {
  pid_t pid = static_cast<pid_t>(info[0].As<Napi::Number>().Int32Value());
  treestate::ProcStat st;
  return Napi::Number::New(info.Env(), treestate::ReadStat(pid, &st) == 0 ? st.sid : -1);
}

// Whether a process has a handler for a signal: criu is interrupted with
// SIGALRM only once it catches it (src/criu/interrupt.ts).
Napi::Value CatchesSignal(const Napi::CallbackInfo& info) {
  pid_t pid = static_cast<pid_t>(info[0].As<Napi::Number>().Int32Value());
  int signo = info[1].As<Napi::Number>().Int32Value();
  bool caught = signo >= 1 && signo <= 64 && ((treestate::ReadSignalsCaught(pid) >> (signo - 1)) & 1);
  return Napi::Boolean::New(info.Env(), caught);
}

// isatty(3): the CLI asks it of a character device on its standard output
// or error instead of loading node:tty (which loads net: ~2 ms).
Napi::Value IsTerminal(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), isatty(info[0].As<Napi::Number>().Int32Value()) == 1);
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("walk", Napi::Function::New(env, treestate::WalkAsync, "walk"));
  exports.Set("createWalkCache", Napi::Function::New(env, treestate::CreateWalkCache, "createWalkCache"));
  exports.Set("releaseWalkCache", Napi::Function::New(env, treestate::ReleaseWalkCache, "releaseWalkCache"));
  exports.Set("signalList", Napi::Function::New(env, treestate::SignalListAsync, "signalList"));
  exports.Set("leaderStates", Napi::Function::New(env, treestate::LeaderStatesAsync, "leaderStates"));
  exports.Set("waitExit", Napi::Function::New(env, treestate::WaitExitAsync, "waitExit"));
  exports.Set("inspect", Napi::Function::New(env, treestate::InspectAsync, "inspect"));
  exports.Set("socketHolders", Napi::Function::New(env, treestate::SocketHoldersAsync, "socketHolders"));
  exports.Set("selfAndAncestors", Napi::Function::New(env, SelfAndAncestors, "selfAndAncestors"));
  exports.Set("tracerOf", Napi::Function::New(env, TracerOf, "tracerOf"));
  exports.Set("sessionOf", Napi::Function::New(env, SessionOf, "sessionOf"));
  exports.Set("sessionMembers", Napi::Function::New(env, treestate::SessionMembersAsync, "sessionMembers"));
  exports.Set("catchesSignal", Napi::Function::New(env, CatchesSignal, "catchesSignal"));
  exports.Set("isTerminal", Napi::Function::New(env, IsTerminal, "isTerminal"));
  exports.Set("childrenFilesSupported",
              Napi::Function::New(env, ChildrenFilesSupported, "childrenFilesSupported"));
  exports.Set("cgroup2Mount", Napi::Function::New(env, Cgroup2MountOf, "cgroup2Mount"));
  exports.Set("cgroupOf", Napi::Function::New(env, CgroupOf, "cgroupOf"));
  exports.Set("seqpacketPair", Napi::Function::New(env, treestate::SeqpacketPairSync, "seqpacketPair"));
  exports.Set("sendMessage", Napi::Function::New(env, treestate::SendMessageAsync, "sendMessage"));
  exports.Set("receiveMessage", Napi::Function::New(env, treestate::ReceiveMessageAsync, "receiveMessage"));
  exports.Set("shutdownSocket", Napi::Function::New(env, treestate::ShutdownSocket, "shutdownSocket"));
  Napi::Object signals = Napi::Object::New(env);
  signals.Set("SIGSTOP", SIGSTOP);
  signals.Set("SIGCONT", SIGCONT);
  signals.Set("SIGKILL", SIGKILL);
  exports.Set("signals", signals);
  return exports;
}

}  // namespace

NODE_API_MODULE(treestate, Init)
