// The N-API face of native/rpc.h: one AsyncWorker per send and per receive,
// so a message criu takes its time over never blocks the JS thread.
#include "rpc_workers.h"

#include <sys/socket.h>

#include <string>
#include <utility>
#include <vector>

#include "errors.h"
#include "rpc.h"

namespace treestate {

namespace {

int FdArg(const Napi::CallbackInfo& info, size_t i) {
  return info.Length() > i && info[i].IsNumber() ? info[i].As<Napi::Number>().Int32Value() : -1;
}

class SendWorker : public Napi::AsyncWorker {
 public:
  SendWorker(Napi::Env env, int sock, std::string data, std::vector<int> fds)
      : Napi::AsyncWorker(env, "treestate:sendMessage"),
        deferred_(Napi::Promise::Deferred::New(env)),
        sock_(sock),
        data_(std::move(data)),
        fds_(std::move(fds)) {}
  Napi::Promise Promise() { return deferred_.Promise(); }
  void Execute() override { err_ = {SendMessage(sock_, data_, fds_), nullptr, "sendmsg", 0}; }
  void OnOK() override {
    if (err_.err) {
      deferred_.Reject(MakeError(Env(), err_, "cannot send a message").Value());
    } else {
      deferred_.Resolve(Env().Undefined());
    }
  }

 private:
  Napi::Promise::Deferred deferred_;
  int sock_;
  std::string data_;
  std::vector<int> fds_;
  SysError err_;
};

class ReceiveWorker : public Napi::AsyncWorker {
 public:
  ReceiveWorker(Napi::Env env, int sock)
      : Napi::AsyncWorker(env, "treestate:receiveMessage"), deferred_(Napi::Promise::Deferred::New(env)), sock_(sock) {}
  Napi::Promise Promise() { return deferred_.Promise(); }
  void Execute() override {
    const char* syscall = "recvmsg";
    err_ = {ReceiveMessage(sock_, &message_, &syscall), nullptr, "", 0};
    err_.syscall = syscall;
  }
  void OnOK() override {
    Napi::Env env = Env();
    if (err_.err) {
      deferred_.Reject(MakeError(env, err_, "cannot receive a message").Value());
      return;
    }
    if (message_.eof) {
      deferred_.Resolve(env.Null());
      return;
    }
    Napi::Object out = Napi::Object::New(env);
    out.Set("data", Napi::Buffer<char>::Copy(env, message_.data.data(), message_.data.size()));
    Napi::Array fds = Napi::Array::New(env, message_.fds.size());
    for (size_t i = 0; i < message_.fds.size(); i++) fds.Set(i, Napi::Number::New(env, message_.fds[i]));
    out.Set("fds", fds);
    deferred_.Resolve(out);
  }

 private:
  Napi::Promise::Deferred deferred_;
  int sock_;
  Message message_;
  SysError err_;
};

}  // namespace

Napi::Value SeqpacketPairSync(const Napi::CallbackInfo& info) {
  int fds[2];
  if (int e = SeqpacketPair(fds)) {
    MakeError(info.Env(), {e, nullptr, "socketpair", 0}, "cannot create a socket pair").ThrowAsJavaScriptException();
    return info.Env().Undefined();
  }
  Napi::Array out = Napi::Array::New(info.Env(), 2);
  out.Set(0u, Napi::Number::New(info.Env(), fds[0]));
  out.Set(1u, Napi::Number::New(info.Env(), fds[1]));
  return out;
}

Napi::Value SendMessageAsync(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (FdArg(info, 0) < 0 || info.Length() < 2 || !info[1].IsBuffer()) {
    Napi::TypeError::New(env, "sendMessage(fd, buffer, fds?)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  auto buffer = info[1].As<Napi::Buffer<char>>();
  std::vector<int> fds;
  if (info.Length() > 2 && info[2].IsArray()) {
    Napi::Array a = info[2].As<Napi::Array>();
    for (uint32_t i = 0; i < a.Length(); i++) fds.push_back(a.Get(i).As<Napi::Number>().Int32Value());
  }
  auto* worker = new SendWorker(env, FdArg(info, 0), std::string(buffer.Data(), buffer.Length()), std::move(fds));
  Napi::Promise promise = worker->Promise();
  worker->Queue();
  return promise;
}

Napi::Value ReceiveMessageAsync(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (FdArg(info, 0) < 0) {
    Napi::TypeError::New(env, "receiveMessage(fd)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  auto* worker = new ReceiveWorker(env, FdArg(info, 0));
  Napi::Promise promise = worker->Promise();
  worker->Queue();
  return promise;
}

// Wakes a receive blocked on the socket (it then sees EOF): closing the fd
// would not, and would let the number be reused under the blocked recvmsg.
Napi::Value ShutdownSocket(const Napi::CallbackInfo& info) {
  int fd = FdArg(info, 0);
  if (fd >= 0) shutdown(fd, SHUT_RDWR);
  return info.Env().Undefined();
}

}  // namespace treestate
