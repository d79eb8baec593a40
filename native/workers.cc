#include "workers.h"

#include <signal.h>

#include <algorithm>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "errors.h"
#include "proc.h"
#include "walk.h"

namespace treestate {

namespace {

// Whether a thread the pass may signal is in group-stop (the kept ones stay there).
bool AnyStopped(const WalkResult& r, const WalkOptions& o) {
  for (const ProcessRecord& p : r.processes) {
    if (Kept(o, p.pid, p.startTime)) continue;
    for (const ThreadRecord& t : p.threads) {
      if (t.state == 'T') return true;
    }
  }
  return false;
}

// The processes a SIGCONT pass signalled, none of whose threads it read in
// ptrace-stop (see WalkOptions::resumed).
std::unordered_map<pid_t, uint64_t> Resumed(const WalkResult& r) {
  std::unordered_map<pid_t, const ProcessRecord*> byPid;
  for (const ProcessRecord& p : r.processes) byPid[p.pid] = &p;
  std::unordered_map<pid_t, uint64_t> out;
  for (pid_t pid : r.signalled) {
    auto it = byPid.find(pid);
    if (it == byPid.end()) continue;
    const ProcessRecord& p = *it->second;
    if (std::none_of(p.threads.begin(), p.threads.end(), [](const ThreadRecord& t) { return t.state == 't'; })) {
      out[pid] = p.startTime;
    }
  }
  return out;
}

// The pass kinds JS names (src/native.ts, PassKind); false for an unknown one.
bool KindOf(const Napi::Value& v, PassKind* kind) {
  if (v.IsUndefined()) {
    *kind = PassKind::Look;
    return true;
  }
  std::string s = v.IsString() ? v.As<Napi::String>().Utf8Value() : "";
  static const std::pair<const char*, PassKind> kKinds[] = {
      {"look", PassKind::Look}, {"stop", PassKind::Stop}, {"continue", PassKind::Continue},
      {"kill", PassKind::Kill}, {"kill-stopped", PassKind::KillStopped}};
  for (const auto& [name, k] : kKinds) {
    if (s == name) {
      *kind = k;
      return true;
    }
  }
  return false;
}

std::vector<pid_t> PidArray(const Napi::Value& v) {
  std::vector<pid_t> out;
  if (!v.IsArray()) return out;
  Napi::Array a = v.As<Napi::Array>();
  for (uint32_t i = 0; i < a.Length(); i++) {
    out.push_back(a.Get(i).As<Napi::Number>().Int32Value());
  }
  return out;
}

std::vector<Identity> IdentityArray(const Napi::Value& v) {
  std::vector<Identity> out;
  Napi::Array a = v.As<Napi::Array>();
  for (uint32_t i = 0; i < a.Length(); i++) {
    Napi::Object o = a.Get(i).As<Napi::Object>();
    out.push_back({o.Get("pid").As<Napi::Number>().Int32Value(),
                   static_cast<uint64_t>(o.Get("startTime").As<Napi::Number>().DoubleValue())});
  }
  return out;
}

Napi::Array ToArray(Napi::Env env, const std::vector<pid_t>& pids) {
  Napi::Array a = Napi::Array::New(env, pids.size());
  for (size_t i = 0; i < pids.size(); i++) a.Set(i, Napi::Number::New(env, pids[i]));
  return a;
}

Napi::Array ToArray(Napi::Env env, const std::vector<SysError>& errors) {
  Napi::Array a = Napi::Array::New(env, errors.size());
  for (size_t i = 0; i < errors.size(); i++) a.Set(i, ErrorRecord(env, errors[i]));
  return a;
}

// The processes of a walk, packed: a string of comms joined by NUL, and one
// Float64Array holding, per process in order, pid, ppid, start time, kernel
// thread (0/1), thread count, child count, then (tid, state letter code
// (| 0x100: waits in vfork), tracer pid) per thread, then the child pids. src/native.ts unpacks it into
// objects: building them in JS costs a fraction of one N-API call per
// property (10 ms for 3280 processes, more when the JS thread is starved
// right after a pass has woken thousands of threads).
void Pack(Napi::Env env, const std::vector<ProcessRecord>& processes, Napi::Object out) {
  size_t n = 0;
  std::string comms;
  for (size_t i = 0; i < processes.size(); i++) {
    n += 6 + 3 * processes[i].threads.size() + processes[i].children.size();
    if (i > 0) comms.push_back('\0');
    comms += processes[i].comm;
  }
  Napi::Float64Array packed = Napi::Float64Array::New(env, n);
  double* d = packed.Data();
  for (const ProcessRecord& p : processes) {
    *d++ = p.pid;
    *d++ = p.ppid;
    *d++ = static_cast<double>(p.startTime);
    *d++ = p.kernelThread ? 1 : 0;
    *d++ = static_cast<double>(p.threads.size());
    *d++ = static_cast<double>(p.children.size());
    for (const ThreadRecord& t : p.threads) {
      *d++ = t.tid;
      // The letter, and 0x100 for a thread waiting in vfork.
      *d++ = static_cast<unsigned char>(t.state) | (t.vfork ? 0x100 : 0);
      *d++ = t.tracer;
    }
    for (pid_t c : p.children) *d++ = c;
  }
  out.Set("count", Napi::Number::New(env, static_cast<double>(processes.size())));
  out.Set("packed", packed);
  out.Set("comms", Napi::String::New(env, comms.data(), comms.size()));
}

Napi::Object ResultObject(Napi::Env env, pid_t root, const WalkResult& r) {
  Napi::Object out = Napi::Object::New(env);
  out.Set("root", Napi::Number::New(env, root));
  out.Set("walk", Napi::String::New(env, r.scan ? "scan" : "children"));
  out.Set("walkers", Napi::Number::New(env, static_cast<double>(r.walkers)));
  Pack(env, r.processes, out);
  out.Set("signalled", ToArray(env, r.signalled));
  out.Set("gone", ToArray(env, r.gone));
  out.Set("failures", ToArray(env, r.failures));
  out.Set("unlisted", ToArray(env, r.unlisted));
  return out;
}

// A WalkCache lent to JS as an External: shared, so that a pass in flight
// keeps it alive whatever JS does with the handle meanwhile.
using CacheRef = std::shared_ptr<WalkCache>;

const napi_type_tag kCacheTag = {0x7472656573746174, 0x6557616c6b436163};  // "treestat" "eWalkCac"

CacheRef* CacheOf(const Napi::Value& v) {
  if (!v.IsExternal()) return nullptr;
  auto ext = v.As<Napi::External<CacheRef>>();
  return ext.CheckTypeTag(&kCacheTag) ? ext.Data() : nullptr;
}

class WalkWorker : public Napi::AsyncWorker {
 public:
  WalkWorker(Napi::Env env, WalkOptions options, CacheRef cache)
      : Napi::AsyncWorker(env, "treestate:walk"),
        deferred_(Napi::Promise::Deferred::New(env)),
        options_(std::move(options)),
        cache_(std::move(cache)) {
    options_.cache = cache_.get();
    if (cache_) cache_->busy = true;
  }
  ~WalkWorker() override {
    if (cache_) cache_->busy = false;
  }

  Napi::Promise Promise() { return deferred_.Promise(); }

  void Execute() override {
    Walk(options_, &result_);
    // A continue that verifies runs its verifying pass (a later continue
    // pass) on this thread at once: handing the first result to the JS
    // thread and waiting for it to ask again means waiting for a core that
    // the threads just continued are all competing for.
    if (!verify_ || !result_.rootFound || !result_.failures.empty() || !AnyStopped(result_, options_)) return;
    WalkOptions again = options_;
    PlanPass(PassKind::Continue, false, &again);
    again.rootStartTime = result_.processes[0].startTime;
    std::unordered_map<pid_t, uint64_t> resumed = Resumed(result_);
    again.resumed = &resumed;
    Walk(again, &verifying_);
    if (!verifying_.rootFound) verifying_ = WalkResult();  // JS asks again and reports it as for any pass
  }

  // Continue only: signal, then verify in the same call (the result's `verifying`).
  void Verify() { verify_ = true; }

  void OnOK() override {
    Napi::Env env = Env();
    if (!result_.rootFound && result_.rootThreadOf != 0) {
      SysError e = result_.rootError;
      e.code = "EINVAL_PID";
      Napi::Error error = MakeError(env, e, std::to_string(options_.root) + " is a thread of process " +
                                                std::to_string(result_.rootThreadOf) + ", not a process");
      error.Value().Set("tgid", Napi::Number::New(env, result_.rootThreadOf));
      deferred_.Reject(error.Value());
      return;
    }
    if (!result_.rootFound) {
      deferred_.Reject(MakeError(env, result_.rootError,
                                 "cannot read process " + std::to_string(options_.root))
                           .Value());
      return;
    }
    Napi::Object out = ResultObject(env, options_.root, result_);
    if (verifying_.rootFound) out.Set("verifying", ResultObject(env, options_.root, verifying_));
    deferred_.Resolve(out);
  }

  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  WalkOptions options_;
  CacheRef cache_;
  WalkResult result_;
  bool verify_ = false;
  WalkResult verifying_;
};

// Closes a released cache's files off the JS thread (there may be thousands);
// the promise says when they are closed.
class ReleaseWorker : public Napi::AsyncWorker {
 public:
  ReleaseWorker(Napi::Env env, CacheRef cache)
      : Napi::AsyncWorker(env, "treestate:releaseWalkCache"),
        deferred_(Napi::Promise::Deferred::New(env)),
        cache_(std::move(cache)) {}
  Napi::Promise Promise() { return deferred_.Promise(); }
  void Execute() override { cache_.reset(); }
  void OnOK() override { deferred_.Resolve(Env().Undefined()); }

 private:
  Napi::Promise::Deferred deferred_;
  CacheRef cache_;
};

class SignalListWorker : public Napi::AsyncWorker {
 public:
  SignalListWorker(Napi::Env env, std::vector<Identity> targets, int sig, bool perThread,
                   std::vector<pid_t> protect)
      : Napi::AsyncWorker(env, "treestate:signalList"),
        deferred_(Napi::Promise::Deferred::New(env)),
        targets_(std::move(targets)),
        sig_(sig),
        perThread_(perThread),
        protect_(std::move(protect)) {}

  Napi::Promise Promise() { return deferred_.Promise(); }

  void Execute() override { SignalList(targets_, sig_, perThread_, protect_, &result_); }

  void OnOK() override {
    Napi::Env env = Env();
    Napi::Object out = Napi::Object::New(env);
    out.Set("signalled", ToArray(env, result_.signalled));
    out.Set("gone", ToArray(env, result_.gone));
    out.Set("failures", ToArray(env, result_.failures));
    deferred_.Resolve(out);
  }

  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  std::vector<Identity> targets_;
  int sig_;
  bool perThread_;
  std::vector<pid_t> protect_;
  SignalListResult result_;
};

class LeaderStatesWorker : public Napi::AsyncWorker {
 public:
  LeaderStatesWorker(Napi::Env env, std::vector<Identity> targets)
      : Napi::AsyncWorker(env, "treestate:leaderStates"),
        deferred_(Napi::Promise::Deferred::New(env)),
        targets_(std::move(targets)) {}

  Napi::Promise Promise() { return deferred_.Promise(); }

  void Execute() override { states_ = LeaderStates(targets_); }

  void OnOK() override { deferred_.Resolve(Napi::String::New(Env(), states_)); }

  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  std::vector<Identity> targets_;
  std::string states_;
};

class SessionMembersWorker : public Napi::AsyncWorker {
 public:
  SessionMembersWorker(Napi::Env env, pid_t sid)
      : Napi::AsyncWorker(env, "treestate:sessionMembers"),
        deferred_(Napi::Promise::Deferred::New(env)),
        sid_(sid) {}

  Napi::Promise Promise() { return deferred_.Promise(); }

  void Execute() override { err_ = ScanSession(sid_, &members_); }

  void OnOK() override {
    Napi::Env env = Env();
    if (err_) {
      deferred_.Reject(ErrorRecord(env, {err_, nullptr, "opendir", 0}));
      return;
    }
    Napi::Array out = Napi::Array::New(env, members_.size());
    for (size_t i = 0; i < members_.size(); i++) {
      Napi::Object o = Napi::Object::New(env);
      o.Set("pid", members_[i].pid);
      o.Set("startTime", static_cast<double>(members_[i].startTime));
      out.Set(i, o);
    }
    deferred_.Resolve(out);
  }

  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  pid_t sid_;
  int err_ = 0;
  std::vector<Identity> members_;
};

class WaitExitWorker : public Napi::AsyncWorker {
 public:
  WaitExitWorker(Napi::Env env, std::vector<Identity> targets, int timeoutMs)
      : Napi::AsyncWorker(env, "treestate:waitExit"),
        deferred_(Napi::Promise::Deferred::New(env)),
        targets_(std::move(targets)),
        timeoutMs_(timeoutMs) {}

  Napi::Promise Promise() { return deferred_.Promise(); }

  void Execute() override { alive_ = WaitExit(targets_, timeoutMs_); }

  void OnOK() override { deferred_.Resolve(ToArray(Env(), alive_)); }

  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  std::vector<Identity> targets_;
  int timeoutMs_;
  std::vector<pid_t> alive_;
};

}  // namespace

Napi::Value WalkAsync(const Napi::CallbackInfo& info) {
  // The library checks pids before it gets here; this keeps a direct
  // caller's mistake a TypeError instead of a fatal N-API error.
  if (!info[0].IsObject() || !info[0].As<Napi::Object>().Get("root").IsNumber()) {
    Napi::TypeError::New(info.Env(), "treestate: walk needs { root: number }").ThrowAsJavaScriptException();
    return info.Env().Undefined();
  }
  Napi::Object o = info[0].As<Napi::Object>();
  WalkOptions options;
  options.root = o.Get("root").As<Napi::Number>().Int32Value();
  if (o.Has("rootStartTime") && o.Get("rootStartTime").IsNumber()) {
    options.rootStartTime =
        static_cast<uint64_t>(o.Get("rootStartTime").As<Napi::Number>().DoubleValue());
  }
  options.scan = o.Get("scan").ToBoolean();
  PassKind kind;
  if (!KindOf(o.Get("kind"), &kind)) {
    Napi::TypeError::New(info.Env(), "treestate: walk kind must be look, stop, continue, kill or kill-stopped")
        .ThrowAsJavaScriptException();
    return info.Env().Undefined();
  }
  bool verify = o.Get("verify").ToBoolean();
  if (verify && kind != PassKind::Continue) {
    Napi::TypeError::New(info.Env(), "treestate: only a continue pass verifies").ThrowAsJavaScriptException();
    return info.Env().Undefined();
  }
  PlanPass(kind, o.Get("first").ToBoolean(), &options);
  options.protect = PidArray(o.Get("protect"));
  if (o.Get("keep").IsArray()) {
    for (const Identity& k : IdentityArray(o.Get("keep"))) options.keep[k.pid] = k.startTime;
  }
  CacheRef cache;
  if (o.Has("cache") && !o.Get("cache").IsUndefined()) {
    CacheRef* ref = CacheOf(o.Get("cache"));
    if (!ref || !*ref || (*ref)->busy) {
      Napi::TypeError::New(info.Env(), ref && *ref ? "treestate: a walk cache serves one pass at a time"
                                                   : "treestate: not a live walk cache")
          .ThrowAsJavaScriptException();
      return info.Env().Undefined();
    }
    cache = *ref;
  }
  auto* worker = new WalkWorker(info.Env(), std::move(options), std::move(cache));
  if (verify) worker->Verify();
  Napi::Promise promise = worker->Promise();
  worker->Queue();
  return promise;
}

Napi::Value CreateWalkCache(const Napi::CallbackInfo& info) {
  // 8192 files hold about 32 MB of kernel memory (a page of seq_file
  // buffer each); and a quarter of the fd limit at most, after the first 64
  // (Node itself holds 20 or so): the cache must never be why the program
  // around it, or the pass it serves, runs out of descriptors.
  size_t maxFiles = info[0].IsNumber() ? info[0].As<Napi::Number>().Uint32Value() : 8192;
  if (size_t limit = FdLimit()) maxFiles = std::min<size_t>(maxFiles, limit > 64 ? (limit - 64) / 4 : 0);
  auto ext = Napi::External<CacheRef>::New(info.Env(), new CacheRef(std::make_shared<WalkCache>(maxFiles)),
                                           [](Napi::Env, CacheRef* ref) { delete ref; });
  ext.TypeTag(&kCacheTag);
  return ext;
}

Napi::Value ReleaseWalkCache(const Napi::CallbackInfo& info) {
  CacheRef* ref = CacheOf(info[0]);
  if (!ref || !*ref) {
    auto done = Napi::Promise::Deferred::New(info.Env());
    done.Resolve(info.Env().Undefined());
    return done.Promise();  // released before: nothing left to close
  }
  auto* worker = new ReleaseWorker(info.Env(), std::move(*ref));
  Napi::Promise promise = worker->Promise();
  worker->Queue();
  return promise;
}

Napi::Value SignalListAsync(const Napi::CallbackInfo& info) {
  auto* worker = new SignalListWorker(info.Env(), IdentityArray(info[0]),
                                      info[1].As<Napi::Number>().Int32Value(),
                                      info[2].ToBoolean(), PidArray(info[3]));
  Napi::Promise promise = worker->Promise();
  worker->Queue();
  return promise;
}

Napi::Value LeaderStatesAsync(const Napi::CallbackInfo& info) {
  auto* worker = new LeaderStatesWorker(info.Env(), IdentityArray(info[0]));
  Napi::Promise promise = worker->Promise();
  worker->Queue();
  return promise;
}

Napi::Value SessionMembersAsync(const Napi::CallbackInfo& info) {
  auto* worker = new SessionMembersWorker(info.Env(), static_cast<pid_t>(info[0].As<Napi::Number>().Int32Value()));
  Napi::Promise promise = worker->Promise();
  worker->Queue();
  return promise;
}

Napi::Value WaitExitAsync(const Napi::CallbackInfo& info) {
  auto* worker = new WaitExitWorker(info.Env(), IdentityArray(info[0]),
                                    info[1].As<Napi::Number>().Int32Value());
  Napi::Promise promise = worker->Promise();
  worker->Queue();
  return promise;
}

}  // namespace treestate
