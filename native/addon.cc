// Registration only: each operation lives in workers.cc, Linux knowledge in
// proc.cc, signal.cc and walk.cc.
#include <napi.h>
#include <signal.h>

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

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("walk", Napi::Function::New(env, treestate::WalkAsync, "walk"));
  exports.Set("createWalkCache", Napi::Function::New(env, treestate::CreateWalkCache, "createWalkCache"));
  exports.Set("releaseWalkCache", Napi::Function::New(env, treestate::ReleaseWalkCache, "releaseWalkCache"));
  exports.Set("signalList", Napi::Function::New(env, treestate::SignalListAsync, "signalList"));
  exports.Set("waitExit", Napi::Function::New(env, treestate::WaitExitAsync, "waitExit"));
  exports.Set("selfAndAncestors", Napi::Function::New(env, SelfAndAncestors, "selfAndAncestors"));
  exports.Set("childrenFilesSupported",
              Napi::Function::New(env, ChildrenFilesSupported, "childrenFilesSupported"));
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
