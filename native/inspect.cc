#include "inspect.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/sock_diag.h>
#include <linux/unix_diag.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <unordered_set>

#include "errors.h"
#include "proc.h"

namespace treestate {

namespace {

// Reads a small /proc file whole; errno or 0.
int ReadFile(const std::string& path, std::string* out) {
  Fd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.ok()) return errno == ENOENT ? ESRCH : errno;
  char buf[4096];
  out->clear();
  for (;;) {
    ssize_t n = read(fd.get(), buf, sizeof buf);
    if (n < 0) return errno;
    if (n == 0) return 0;
    out->append(buf, static_cast<size_t>(n));
  }
}

// The socket inodes among the fds of /proc/PID/fd.
int SocketInodes(pid_t pid, std::vector<uint64_t>* out) {
  std::string dir = "/proc/" + std::to_string(pid) + "/fd";
  DIR* d = opendir(dir.c_str());
  if (!d) return errno == ENOENT ? ESRCH : errno;
  while (struct dirent* e = readdir(d)) {
    if (e->d_name[0] == '.') continue;
    char link[64];
    ssize_t n = readlinkat(dirfd(d), e->d_name, link, sizeof link - 1);
    if (n <= 0) continue;  // closed meanwhile
    link[n] = '\0';
    unsigned long long inode;
    if (sscanf(link, "socket:[%llu]", &inode) == 1) out->push_back(inode);
  }
  closedir(d);
  return 0;
}

int ReadFacts(pid_t pid, ProcessFacts* f) {
  f->pid = pid;
  std::string stat;
  std::string base = "/proc/" + std::to_string(pid);
  if (int err = ReadFile(base + "/stat", &stat)) return err;
  size_t close = stat.rfind(')');
  if (close == std::string::npos) return EIO;
  // After the comm: state ppid pgrp session tty_nr …
  char state;
  int ppid;
  if (sscanf(stat.c_str() + close + 1, " %c %d %d %d %d", &state, &ppid, &f->pgid, &f->sid, &f->ttyNr) != 5) return EIO;
  std::string status;
  if (int err = ReadFile(base + "/status", &status)) return err;
  f->sidOutsideNs = StatusFieldLast(status.c_str(), "NSsid") == 0;
  f->pgidOutsideNs = StatusFieldLast(status.c_str(), "NSpgid") == 0;
  DIR* tasks = opendir((base + "/task").c_str());
  if (!tasks) return errno == ENOENT ? ESRCH : errno;
  while (struct dirent* e = readdir(tasks)) {
    if (e->d_name[0] == '.') continue;
    pid_t tracer = ReadTracer(pid, atoi(e->d_name));
    if (tracer > 0) f->tracer = tracer;
  }
  closedir(tasks);
  return SocketInodes(pid, &f->sockets);
}

// One sock_diag dump request; `each` is called with every message's payload.
template <typename Req, typename Each>
int Dump(const Req& body, Each each) {
  Fd fd(socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG));
  if (!fd.ok()) return errno;
  struct {
    nlmsghdr nlh;
    Req body;
  } req = {};
  req.nlh.nlmsg_len = sizeof req;
  req.nlh.nlmsg_type = SOCK_DIAG_BY_FAMILY;
  req.nlh.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
  req.body = body;
  if (send(fd.get(), &req, sizeof req, 0) < 0) return errno;
  alignas(nlmsghdr) char buf[32768];
  for (;;) {
    ssize_t n = recv(fd.get(), buf, sizeof buf, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    int len = static_cast<int>(n);
    for (nlmsghdr* h = reinterpret_cast<nlmsghdr*>(buf); NLMSG_OK(h, len); h = NLMSG_NEXT(h, len)) {
      if (h->nlmsg_type == NLMSG_DONE) return 0;
      if (h->nlmsg_type == NLMSG_ERROR) {
        auto* e = static_cast<nlmsgerr*>(NLMSG_DATA(h));
        return e->error ? -e->error : 0;
      }
      each(h);
    }
  }
}

int UnixTable(std::vector<UnixSocketFacts>* out) {
  unix_diag_req r = {};
  r.sdiag_family = AF_UNIX;
  r.udiag_states = ~0U;
  r.udiag_show = UDIAG_SHOW_NAME | UDIAG_SHOW_PEER;
  return Dump(r, [out](nlmsghdr* h) {
    auto* m = static_cast<unix_diag_msg*>(NLMSG_DATA(h));
    UnixSocketFacts s;
    s.inode = m->udiag_ino;
    int len = static_cast<int>(h->nlmsg_len - NLMSG_LENGTH(sizeof *m));
    for (rtattr* a = reinterpret_cast<rtattr*>(m + 1); RTA_OK(a, len); a = RTA_NEXT(a, len)) {
      if (a->rta_type == UNIX_DIAG_PEER) s.peer = *static_cast<uint32_t*>(RTA_DATA(a));
      if (a->rta_type == UNIX_DIAG_NAME) {
        const char* name = static_cast<const char*>(RTA_DATA(a));
        size_t n = RTA_PAYLOAD(a);
        s.path = n > 0 && name[0] == '\0' ? "@" + std::string(name + 1, n - 1) : std::string(name, strnlen(name, n));
      }
    }
    out->push_back(s);
  });
}

std::string Endpoint(int family, const __be32* addr, __be16 port) {
  char text[INET6_ADDRSTRLEN] = "";
  inet_ntop(family, addr, text, sizeof text);
  return (family == AF_INET6 ? "[" + std::string(text) + "]" : std::string(text)) + ":" + std::to_string(ntohs(port));
}

int TcpTable(int family, std::vector<TcpSocketFacts>* out) {
  inet_diag_req_v2 r = {};
  r.sdiag_family = static_cast<uint8_t>(family);
  r.sdiag_protocol = IPPROTO_TCP;
  r.idiag_states = ~0U;
  return Dump(r, [out, family](nlmsghdr* h) {
    auto* m = static_cast<inet_diag_msg*>(NLMSG_DATA(h));
    out->push_back({m->idiag_inode, m->idiag_state, Endpoint(family, m->id.idiag_src, m->id.idiag_sport),
                    Endpoint(family, m->id.idiag_dst, m->id.idiag_dport)});
  });
}

class InspectWorker : public Napi::AsyncWorker {
 public:
  InspectWorker(Napi::Env env, std::vector<pid_t> pids)
      : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)), pids_(std::move(pids)) {}
  Napi::Promise Promise() { return deferred_.Promise(); }
  void Execute() override { result_ = Inspect(pids_); }
  void OnOK() override {
    Napi::Env env = Env();
    Napi::Object out = Napi::Object::New(env);
    Napi::Array processes = Napi::Array::New(env, result_.processes.size());
    for (size_t i = 0; i < result_.processes.size(); i++) {
      const ProcessFacts& f = result_.processes[i];
      Napi::Object o = Napi::Object::New(env);
      o.Set("pid", f.pid);
      o.Set("pgid", f.pgid);
      o.Set("sid", f.sid);
      o.Set("ttyNr", f.ttyNr);
      o.Set("sidOutsideNs", f.sidOutsideNs);
      o.Set("pgidOutsideNs", f.pgidOutsideNs);
      o.Set("tracer", f.tracer);
      Napi::Array sockets = Napi::Array::New(env, f.sockets.size());
      for (size_t j = 0; j < f.sockets.size(); j++) sockets.Set(j, static_cast<double>(f.sockets[j]));
      o.Set("sockets", sockets);
      if (f.err) o.Set("error", ErrorRecord(env, {f.err, nullptr, "open", f.pid}));
      processes.Set(i, o);
    }
    out.Set("processes", processes);
    Napi::Array unix = Napi::Array::New(env, result_.unix.size());
    for (size_t i = 0; i < result_.unix.size(); i++) {
      Napi::Object o = Napi::Object::New(env);
      o.Set("inode", static_cast<double>(result_.unix[i].inode));
      o.Set("peer", static_cast<double>(result_.unix[i].peer));
      o.Set("path", result_.unix[i].path);
      unix.Set(i, o);
    }
    out.Set("unix", unix);
    Napi::Array tcp = Napi::Array::New(env, result_.tcp.size());
    for (size_t i = 0; i < result_.tcp.size(); i++) {
      Napi::Object o = Napi::Object::New(env);
      o.Set("inode", static_cast<double>(result_.tcp[i].inode));
      o.Set("state", result_.tcp[i].state);
      o.Set("local", result_.tcp[i].local);
      o.Set("remote", result_.tcp[i].remote);
      tcp.Set(i, o);
    }
    out.Set("tcp", tcp);
    if (result_.err) {
      deferred_.Reject(MakeError(env, {result_.err, nullptr, "sock_diag", 0}, "cannot read the socket tables").Value());
      return;
    }
    deferred_.Resolve(out);
  }

 private:
  Napi::Promise::Deferred deferred_;
  std::vector<pid_t> pids_;
  Inspection result_;
};

class HoldersWorker : public Napi::AsyncWorker {
 public:
  HoldersWorker(Napi::Env env, std::vector<uint64_t> inodes)
      : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)), inodes_(std::move(inodes)) {}
  Napi::Promise Promise() { return deferred_.Promise(); }
  void Execute() override { result_ = SocketHolders(inodes_); }
  void OnOK() override {
    Napi::Env env = Env();
    Napi::Array out = Napi::Array::New(env, result_.size());
    for (size_t i = 0; i < result_.size(); i++) {
      Napi::Object o = Napi::Object::New(env);
      o.Set("inode", static_cast<double>(result_[i].first));
      o.Set("pid", result_[i].second);
      out.Set(i, o);
    }
    deferred_.Resolve(out);
  }

 private:
  Napi::Promise::Deferred deferred_;
  std::vector<uint64_t> inodes_;
  std::vector<std::pair<uint64_t, pid_t>> result_;
};

}  // namespace

Inspection Inspect(const std::vector<pid_t>& pids) {
  Inspection out;
  for (pid_t pid : pids) {
    ProcessFacts f;
    f.err = ReadFacts(pid, &f);
    out.processes.push_back(std::move(f));
  }
  out.err = UnixTable(&out.unix);
  if (!out.err) out.err = TcpTable(AF_INET, &out.tcp);
  if (!out.err) out.err = TcpTable(AF_INET6, &out.tcp);
  return out;
}

std::vector<std::pair<uint64_t, pid_t>> SocketHolders(const std::vector<uint64_t>& inodes) {
  std::unordered_set<uint64_t> wanted(inodes.begin(), inodes.end());
  std::vector<std::pair<uint64_t, pid_t>> out;
  DIR* d = opendir("/proc");
  if (!d) return out;
  while (struct dirent* e = readdir(d)) {
    pid_t pid = atoi(e->d_name);
    if (pid <= 0) continue;
    std::vector<uint64_t> held;
    if (SocketInodes(pid, &held)) continue;  // gone, or not ours to read
    for (uint64_t inode : held) {
      if (wanted.count(inode)) out.push_back({inode, pid});
    }
  }
  closedir(d);
  return out;
}

Napi::Value InspectAsync(const Napi::CallbackInfo& info) {
  std::vector<pid_t> pids;
  if (info.Length() < 1 || !info[0].IsArray()) {
    Napi::TypeError::New(info.Env(), "inspect(pids: number[])").ThrowAsJavaScriptException();
    return info.Env().Undefined();
  }
  Napi::Array a = info[0].As<Napi::Array>();
  for (uint32_t i = 0; i < a.Length(); i++) pids.push_back(a.Get(i).As<Napi::Number>().Int32Value());
  auto* w = new InspectWorker(info.Env(), std::move(pids));
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

Napi::Value SocketHoldersAsync(const Napi::CallbackInfo& info) {
  std::vector<uint64_t> inodes;
  if (info.Length() < 1 || !info[0].IsArray()) {
    Napi::TypeError::New(info.Env(), "socketHolders(inodes: number[])").ThrowAsJavaScriptException();
    return info.Env().Undefined();
  }
  Napi::Array a = info[0].As<Napi::Array>();
  for (uint32_t i = 0; i < a.Length(); i++) inodes.push_back(static_cast<uint64_t>(a.Get(i).As<Napi::Number>().DoubleValue()));
  auto* w = new HoldersWorker(info.Env(), std::move(inodes));
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

}  // namespace treestate
