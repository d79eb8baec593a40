#include "rpc.h"

#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <utility>

namespace treestate {

namespace {

// SCM_RIGHTS carries at most SCM_MAX_FD (253) descriptors per message.
constexpr size_t kMaxFds = 253;

}  // namespace

int SeqpacketPair(int fds[2], SysError* err) {
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, fds) < 0) {
    *err = {errno, nullptr, "socketpair", 0};
    return -1;
  }
  return 0;
}

int SendMessage(int sock, const std::string& data, const std::vector<int>& fds, SysError* err) {
  if (fds.size() > kMaxFds) {
    *err = {EINVAL, nullptr, "sendmsg", 0};
    return -1;
  }
  struct iovec iov = {const_cast<char*>(data.data()), data.size()};
  struct msghdr msg = {};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  std::vector<char> control;
  if (!fds.empty()) {
    control.assign(CMSG_SPACE(sizeof(int) * fds.size()), 0);
    msg.msg_control = control.data();
    msg.msg_controllen = control.size();
    struct cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
  }
  for (;;) {
    ssize_t n = sendmsg(sock, &msg, MSG_NOSIGNAL);
    if (n >= 0) return 0;
    if (errno == EINTR) continue;
    *err = {errno, nullptr, "sendmsg", 0};
    return -1;
  }
}

int ReceiveMessage(int sock, Message* out, SysError* err) {
  // CRIU sizes its own reads the same way (cr-service.c, recv_criu_msg): a
  // peek with MSG_TRUNC returns the length of the whole next message without
  // consuming it or the descriptors that travel with it.
  ssize_t len;
  do {
    len = recv(sock, nullptr, 0, MSG_PEEK | MSG_TRUNC);
  } while (len < 0 && errno == EINTR);
  if (len < 0) {
    *err = {errno, nullptr, "recv", 0};
    return -1;
  }
  out->data.assign(static_cast<size_t>(len), '\0');
  struct iovec iov = {out->data.empty() ? nullptr : &out->data[0], out->data.size()};
  std::vector<char> control(CMSG_SPACE(sizeof(int) * kMaxFds), 0);
  struct msghdr msg = {};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control.data();
  msg.msg_controllen = control.size();
  ssize_t n;
  do {
    n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    *err = {errno, nullptr, "recvmsg", 0};
    return -1;
  }
  for (struct cmsghdr* c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    const unsigned char* p = CMSG_DATA(c);
    for (size_t i = 0; i < count; i++) {
      int fd;
      memcpy(&fd, p + i * sizeof(int), sizeof(int));
      out->fds.push_back(fd);
    }
  }
  out->data.resize(static_cast<size_t>(n));
  out->eof = n == 0 && out->fds.empty();
  return 0;
}

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
  void Execute() override { SendMessage(sock_, data_, fds_, &err_); }
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
  void Execute() override { ReceiveMessage(sock_, &message_, &err_); }
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
  SysError err;
  if (SeqpacketPair(fds, &err) < 0) {
    MakeError(info.Env(), err, "cannot create a socket pair").ThrowAsJavaScriptException();
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
