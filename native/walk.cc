#include "walk.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <condition_variable>
#include <mutex>
#include <unordered_map>
#include <unordered_set>
#include <utility>

#include "proc.h"
#include "signal.h"

namespace treestate {

namespace {

bool Live(char state) { return state != 'Z' && state != 'X' && state != 'x'; }

bool Protected(pid_t pid, const std::vector<pid_t>& protect) {
  return pid <= 1 || std::find(protect.begin(), protect.end(), pid) != protect.end();
}

ThreadFiles& FilesOf(ProcessFiles* pf, pid_t tid, uint64_t pass) {
  for (ThreadFiles& t : pf->threads) {
    if (t.tid == tid) {
      t.pass = pass;
      return t;
    }
  }
  pf->threads.push_back({});
  pf->threads.back().tid = tid;
  pf->threads.back().pass = pass;
  return pf->threads.back();
}

// Whether an error means the process or thread is gone (it exited while we
// looked), as opposed to a read that failed (EMFILE, ENOMEM, EACCES …): a
// pass must never mistake the second for the first, or it would report a
// running process as exited.
bool Gone(int err) { return err == ESRCH || err == ENOENT; }

// A process that could not be opened or read, as a failure of the pass.
SysError ReadFailure(pid_t pid, int err) {
  SysError e;
  e.err = err;
  e.syscall = "open";
  e.pid = pid;
  return e;
}

// Appends the children of every thread of the process pinned by `pin`, each
// file opened, read and closed. `taskfd` is its task directory if one is
// open, else -1. Returns 0 or an errno value.
int ReadAllChildren(int pin, int taskfd, std::vector<pid_t>* children) {
  Fd own;
  if (taskfd < 0) {
    own.Reset(OpenTaskDir(pin));
    if (!own.ok()) return -own.get();
    taskfd = own.get();
  }
  std::vector<pid_t> tids;
  if (int err = ListThreadsAt(taskfd, !own.ok(), &tids)) return err;
  for (pid_t tid : tids) {
    int err = ReadChildrenAt(pin, taskfd, tid, children);
    if (err && !Gone(err)) return err;
  }
  return 0;
}

// Whether `child` is listed in a children file of any thread of the process
// pinned by `parentPin`. Returns 0 or an errno value.
int ListedAsChild(int parentPin, pid_t child, bool* listed) {
  std::vector<pid_t> children;
  int err = ReadAllChildren(parentPin, -1, &children);
  *listed = std::find(children.begin(), children.end(), child) != children.end();
  return err;
}

// /proc mounted with hidepid=invisible answers ENOENT for a live process
// that the caller may not ptrace-read (another user's, or one that is not
// dumpable), exactly as for one that is gone. pidfd_open asks no
// permission: it tells them apart. Called when /proc says `pid` is not
// there; returns EPERM when it is alive all the same, ESRCH when it is
// gone (or a zombie), or the errno of a check that failed. A child
// (`parentPin` >= 0) counts only if it is still listed by its parent once
// its pidfd is open, and still alive after that: then the pidfd names that
// very child, not a process that took its pid since.
int HiddenOrGone(pid_t pid, int parentPin) {
  Pidfd fd(pid);
  if (!fd.ok()) {
    int err = fd.error();
    return err == EMFILE || err == ENFILE || err == ENOMEM ? err : ESRCH;
  }
  if (parentPin >= 0) {
    bool listed = false;
    int err = ListedAsChild(parentPin, pid, &listed);
    if (err) return Gone(err) ? ESRCH : err;
    if (!listed) return ESRCH;
  }
  // A pidfd polls readable once its process has exited: a zombie is gone.
  struct pollfd p = {fd.fd(), POLLIN, 0};
  int n;
  do {
    n = poll(&p, 1, 0);
  } while (n < 0 && errno == EINTR);
  if (n < 0) return errno;
  return n == 0 ? EPERM : ESRCH;
}

// Pins the process with an fd of its /proc directory and reads its stat line
// through that fd: what is read can only be that process (a reaped one
// answers ESRCH, never its pid's next owner), and the same fd signals it.
// A pid /proc does not show may be hidden rather than gone (HiddenOrGone):
// `parentPin` is the pin of the process whose children file listed it, or
// -1 for the root and processes known by identity.
int PinAndRead(pid_t pid, ProcessFiles* pf, ProcStat* st, int parentPin = -1) {
  pf->pin = Pidfd::OfProcDir(pid);
  if (!pf->pin.ok()) return Gone(pf->pin.error()) ? HiddenOrGone(pid, parentPin) : pf->pin.error();
  return ReadStatAt(pf->pin.fd(), pid, st, &pf->stat);
}

// Pins a process known from an earlier read, by pid and start time. False
// (recorded in `outcome` as gone, or as a failure) if it cannot be read or
// its pid now names another process.
bool Repin(const Identity& known, ProcessFiles* pf, ProcStat* st, SignalOutcome* outcome) {
  int err = PinAndRead(known.pid, pf, st);
  if (err && !Gone(err)) {
    outcome->failures.push_back(ReadFailure(known.pid, err));
    return false;
  }
  if (err || st->startTime != known.startTime) {
    outcome->gone.push_back(known.pid);
    return false;
  }
  return true;
}

// Reads the threads of a process whose stat line is `st`, and the children
// of each (a child belongs to the thread that forked it). Returns 0, or the
// first error that was not a thread going away. A thread's files are left
// open in `pf` only with `keepThreadFiles` (or if they already were): a
// process may have more threads than the program has descriptors, and each
// of them is then opened, read and closed in turn. With `statesOptional`, a
// thread whose state cannot be read is reported as kUnreadState instead of
// failing the read.
int ReadThreadsAndChildren(const ProcStat& st, ProcessFiles* pf, uint64_t pass,
                           const ChildMap* scanned, char unread, ProcessRecord* rec,
                           bool keepThreadFiles, bool statesOptional = false) {
  int procfd = pf->pin.fd();
  std::vector<pid_t> tids;
  if (st.numThreads <= 1) {
    // One thread: the process's own stat line is the leader's, no task/ listing.
    tids.push_back(st.pid);
  } else {
    bool again = pf->task.ok();
    if (!again) {
      int fd = OpenTaskDir(procfd);
      if (fd < 0) return -fd;
      pf->task.Reset(fd);
    }
    int err = ListThreadsAt(pf->task.get(), again, &tids);
    if (err) {
      pf->task.Reset();
      return err;
    }
  }
  for (pid_t tid : tids) {
    ThreadFiles& files = FilesOf(pf, tid, pass);
    char state = st.state;
    // The state in /proc/PID/stat is the leader's own (the kernel formats
    // both files from the same task): no need to read it twice. A thread
    // that exits while we look is simply no longer there.
    if (tid != st.pid && unread) {
      state = unread;
    } else if (tid != st.pid) {
      int err = ReadThreadStateAt(pf->task.get(), tid, &state, keepThreadFiles || files.stat.ok() ? &files.stat : nullptr);
      if (Gone(err)) continue;
      if (err && !statesOptional) return err;
      if (err) state = kUnreadState;
    }
    rec->threads.push_back({tid, state, 0});
    if (state == 't') rec->threads.back().tracer = ReadTracer(st.pid, tid);
    if (state == 'D') rec->threads.back().vfork = WaitsInVfork(st.pid, tid);
    if (!scanned) {
      Fd* kept = keepThreadFiles || files.children.ok() ? &files.children : nullptr;
      int err = ReadChildrenAt(procfd, st.numThreads <= 1 ? -1 : pf->task.get(), tid, &rec->children, kept);
      if (err && !Gone(err)) return err;
    }
  }
  if (scanned) {
    auto it = scanned->find(st.pid);
    if (it != scanned->end()) rec->children = it->second;
  }
  // Threads gone since the last pass.
  pf->threads.erase(std::remove_if(pf->threads.begin(), pf->threads.end(),
                                   [pass](const ThreadFiles& t) { return t.pass != pass; }),
                    pf->threads.end());
  return 0;
}

bool Selected(const ProcessRecord& rec, Select select) {
  bool anyLive = false, anyStopped = false, anyNotStopped = false;
  for (const ThreadRecord& t : rec.threads) {
    if (!Live(t.state)) continue;
    anyLive = true;
    if (t.state == 'T') anyStopped = true;
    else anyNotStopped = true;
  }
  switch (select) {
    case Select::All: return anyLive;
    case Select::NotStopped: return anyNotStopped;
    case Select::Stopped: return anyStopped;
  }
  return false;
}

void SignalThreads(pid_t pid, const std::vector<ThreadRecord>& threads, int sig) {
  for (const ThreadRecord& t : threads) {
    if (t.tid != pid && Live(t.state)) ThreadSignal(pid, t.tid, sig);
  }
}

// The one signal path: refuses what must never be signalled, signals through
// the fd that pins the process, and sorts the outcome. Returns whether the
// signal was delivered.
bool SignalPinned(int pinfd, pid_t pid, bool refused, int sig, SignalOutcome* outcome) {
  SysError e;
  e.syscall = "pidfd_send_signal";
  e.pid = pid;
  if (refused) {
    e.code = "EREFUSED";
    outcome->failures.push_back(e);
    return false;
  }
  int r = PidfdSignal(pinfd, sig);
  if (r == -ESRCH) {
    outcome->gone.push_back(pid);
    return false;
  }
  if (r < 0) {
    e.err = -r;
    outcome->failures.push_back(e);
    return false;
  }
  outcome->signalled.push_back(pid);
  return true;
}

// Sends the pass's signal to one process of the walk, if the pass selects it.
// Returns whether it was signalled.
bool Deliver(const WalkOptions& o, int pinfd, const ProcessRecord& rec, SignalOutcome* outcome) {
  if (o.signal == 0 || !Selected(rec, o.select) || Kept(o, rec.pid, rec.startTime)) return false;
  bool refused = rec.kernelThread || Protected(rec.pid, o.protect);
  if (!SignalPinned(pinfd, rec.pid, refused, o.signal, outcome)) return false;
  if (o.perThread) SignalThreads(rec.pid, rec.threads, o.signal);
  return true;
}

void Append(SignalOutcome* to, const SignalOutcome& from) {
  to->signalled.insert(to->signalled.end(), from.signalled.begin(), from.signalled.end());
  to->gone.insert(to->gone.end(), from.gone.begin(), from.gone.end());
  to->failures.insert(to->failures.end(), from.failures.begin(), from.failures.end());
}

// relistAfterSignal: the children of a process just sent SIGKILL, listed
// again and added to those read before the signal. Returns whether some may
// be missing: its exit moves its children to a subreaper or init (all of a
// thread's at once, in exit_notify), so a child of the first listing
// missing from the second, from a process that has exited since, means the
// move came first, and one forked just before the signal may have gone
// unseen with them. (A process that had no child at the first listing
// leaves no such trace: a child it forked in the microseconds between that
// listing and the signal, if it exits before the second, goes unseen.)
bool ListAgain(const ProcessFiles& pf, ProcessRecord* rec, SignalOutcome* outcome) {
  rec->childrenListedAt = BootTicks();
  std::vector<pid_t> after;
  int err = ReadAllChildren(pf.pin.fd(), pf.task.get(), &after);
  if (err && !Gone(err)) outcome->failures.push_back(ReadFailure(rec->pid, err));
  auto listed = [](const std::vector<pid_t>& in, pid_t c) { return std::find(in.begin(), in.end(), c) != in.end(); };
  bool moved = std::any_of(rec->children.begin(), rec->children.end(), [&](pid_t c) { return !listed(after, c); });
  for (pid_t c : after) {
    if (!listed(rec->children, c)) rec->children.push_back(c);
  }
  ProcStat now;
  return moved && (ReadStatAt(pf.pin.fd(), rec->pid, &now) != 0 || !Live(now.state));
}

constexpr size_t kNone = static_cast<size_t>(-1);

// Descriptors held (by the walk cache, or as a pass's pins) past which the
// descriptor table is grown in one step (GrowFdTableInBackground): below a
// few hundred the table Node starts with holds them.
constexpr size_t kManyFiles = 192;

struct Frame {
  pid_t pid;
  pid_t parent;        // 0 for the root
  size_t from;         // index of the parent's record
  int parentPin = -1;  // the parent's pin, open until its children are done
  uint64_t listedAt = 0;  // relistAfterSignal: when its parent, signalled, last listed it
};

// The pin of a process whose signal waits for its children (children
// first): owned here unless the cache holds it.
struct Pending {
  Pidfd owned{-1};
  int fd = -1;
};

// Reads one process of the pass, pinned (PinAndRead). A process the cache
// already holds is read through its kept files; if they fail, the pid is
// looked up afresh.
// A root that is a thread of another process fails with EINVAL, `threadOf`
// naming the process.
int Visit(const WalkOptions& o, const Frame& f, const ChildMap* scanned, ProcessFiles* temp,
          ProcessFiles** used, ProcessRecord* rec, pid_t* threadOf) {
  WalkCache* cache = o.cache;
  uint64_t pass = cache ? cache->pass : 0;
  ProcessFiles* pf = nullptr;
  ProcStat st;
  if (cache) {
    {
      std::lock_guard<std::mutex> hold(cache->mu);
      auto it = cache->processes.find(f.pid);
      if (it != cache->processes.end()) pf = &it->second;
    }
    // No other thread of the pass visits this pid: the entry is ours. If
    // its kept files fail, look the pid up afresh (and fail there if it is
    // a real error, not an exit).
    if (pf && ReadStatAt(pf->pin.fd(), f.pid, &st, &pf->stat) != 0) {
      std::lock_guard<std::mutex> hold(cache->mu);
      cache->files -= pf->Count();
      cache->processes.erase(f.pid);
      pf = nullptr;
    }
  }
  if (!pf) {
    pf = temp;
    int err = PinAndRead(f.pid, pf, &st, f.parentPin);
    if (err) return err;
  }
  if (f.parent != 0 && st.ppid != f.parent && !(f.listedAt != 0 && st.startTime <= f.listedAt)) return ESRCH;
  if (f.parent == 0 && o.rootStartTime != 0 && st.startTime != o.rootStartTime) return ESRCH;
  // Only the root can be a thread: children files list thread-group
  // leaders alone (copy_process links a child into its parent's children
  // only if it leads its group), and so does the /proc readdir of a scan.
  if (f.parent == 0) {
    pid_t tgid = 0;
    if (int err = ReadTgidAt(pf->pin.fd(), &tgid)) return err;
    if (tgid != f.pid) {
      *threadOf = tgid;
      return EINVAL;
    }
  }
  size_t before = pf == temp ? 0 : pf->Count();
  pf->pass = pass;
  rec->pid = st.pid;
  rec->ppid = st.ppid;
  rec->startTime = st.startTime;
  rec->comm = st.comm;
  rec->kernelThread = (st.flags & kKernelThreadFlag) != 0;
  // The other threads' states are not read when they cannot change what
  // this pass does nor prove anything: see kResumedState and kUnreadState.
  char unread = 0;
  if (o.resumed) {
    auto it = o.resumed->find(st.pid);
    if (it != o.resumed->end() && it->second == st.startTime) unread = kResumedState;
  }
  if (o.leaderSelects && o.signal != 0 && o.select == Select::NotStopped && (st.state == 'R' || st.state == 'S')) {
    unread = kUnreadState;
  }
  // Each thread's files are kept only if the cache can take them all: the
  // rest of the descriptors belong to the program, the pass's pins and
  // other processes. Without a cache they would be closed after this visit
  // anyway.
  bool keep = false;
  if (cache) {
    size_t wanted = 3 + 2 * static_cast<size_t>(std::max(st.numThreads, 1L));
    std::lock_guard<std::mutex> hold(cache->mu);
    size_t room = cache->maxFiles - std::min(cache->maxFiles, cache->files);
    keep = wanted <= room + before;
  }
  // A SIGKILL for every process needs no thread's state, only its children:
  // a state that cannot be read (EMFILE …) does not spare the process, its
  // pin is enough to kill it. (A process whose children cannot be read is
  // not killed: they would be orphaned, and escape.)
  bool statesOptional = o.signal == SIGKILL && o.select == Select::All;
  int err = ReadThreadsAndChildren(st, pf, pass, scanned, unread, rec, keep, statesOptional);
  if (err) return err;
  if (cache) {
    std::lock_guard<std::mutex> hold(cache->mu);
    if (pf != temp) {
      cache->files += pf->Count() - before;
    } else if (cache->files + temp->Count() <= cache->maxFiles) {
      cache->files += temp->Count();
      pf = &(cache->processes[f.pid] = std::move(*temp));
    }
    if (cache->files >= kManyFiles) GrowFdTableInBackground();
  }
  *used = pf;
  return 0;
}

// One pass over the tree, by the calling thread and, once the tree proves
// big, helper threads: reading /proc is CPU work in the kernel, and it
// spreads over cores. Frames wait on one shared stack; the order rules hold
// whatever thread visits what: parents first signals a process before its
// children are even on the stack, and children first queues a process for
// the signals once the last of its children is done (a count per process),
// and signals the queue in order once the whole tree is read.
class Pass {
 public:
  Pass(const WalkOptions& o, const ChildMap* scanned, WalkResult* result)
      : o_(o), scanned_(scanned), result_(result) {}

  void Run() {
    stack_.push_back({o_.root, 0, kNone});
    Work(true);
    for (pthread_t t : helpers_) pthread_join(t, nullptr);
    result_->walkers = 1 + helpers_.size();
    SignalReady();
    if (!helpers_.empty()) InVisitingOrder();
  }

 private:
  struct Node {
    size_t from = kNone;
    size_t waiting = 0;  // children not done yet (children first)
    Pending pin;
    bool queued = false;  // children first: waits in ready_ with its pin
    bool repin = false;   // its pin was closed: look it up again to signal it
    bool deferred = false;     // relistAfterSignal: stopped, signalled once its children are done
    bool childUnread = false;  // a process below it could not be read
  };

  // Helpers join once this many processes are read and frames wait.
  static constexpr size_t kParallelAfter = 48;

  static void* Helper(void* pass) {
    static_cast<Pass*>(pass)->Work(false);
    return nullptr;
  }

  void Work(bool caller) {
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      while (stack_.empty() && busy_ > 0) wake_.wait(lock);
      if (stack_.empty()) break;
      Frame f = stack_.back();
      stack_.pop_back();
      if (!seen_.insert(f.pid).second) {
        Done(f.from);  // reached twice (it moved while we looked): once is enough
        continue;
      }
      busy_++;
      lock.unlock();
      ProcessFiles temp;
      ProcessFiles* pf = nullptr;
      ProcessRecord rec;
      SignalOutcome outcome;
      pid_t threadOf = 0;
      int err = Visit(o_, f, scanned_, &temp, &pf, &rec, &threadOf);
      // relistAfterSignal: a process that may fork is signalled before its
      // children are visited, and they are listed again; a stopped one waits
      // for its children, like children first, so that it is spared if one
      // cannot be read.
      bool deferred = false;
      bool unlisted = false;
      if (!err && !rec.kernelThread && o_.order == Order::ParentsFirst) {
        deferred = o_.relistAfterSignal && !Selected(rec, Select::NotStopped);
        if (!deferred && Deliver(o_, pf->pin.fd(), rec, &outcome) && o_.relistAfterSignal) {
          unlisted = ListAgain(*pf, &rec, &outcome);
        }
      }
      lock.lock();
      busy_--;
      Append(result_, outcome);
      if (unlisted) result_->unlisted.push_back(rec.pid);
      if (err && f.parent == 0) {
        result_->rootError = ReadFailure(f.pid, err);
        result_->rootThreadOf = threadOf;
      } else if (err) {
        if (Gone(err)) {
          result_->gone.push_back(f.pid);
        } else {
          result_->failures.push_back(ReadFailure(f.pid, err));
          if (f.from != kNone) nodes_[f.from].childUnread = true;
        }
        Done(f.from);
      } else {
        Add(f, std::move(rec), pf, &temp, deferred);
      }
      if (caller && !helped_ && result_->processes.size() >= kParallelAfter && stack_.size() > 1) {
        helped_ = true;
        // pthread_create, not std::thread: built without exceptions, a
        // refused thread must mean fewer helpers, not an abort.
        cpu_set_t cpus;
        int cores = sched_getaffinity(0, sizeof cpus, &cpus) == 0 ? CPU_COUNT(&cpus) : 1;
        for (int i = 1; i < std::min(cores, 4); i++) {
          pthread_t t;
          if (pthread_create(&t, nullptr, &Pass::Helper, this) == 0) helpers_.push_back(t);
        }
      }
      wake_.notify_all();
    }
  }

  void Add(const Frame& f, ProcessRecord rec, ProcessFiles* pf, ProcessFiles* temp, bool deferred) {
    if (f.parent == 0) result_->rootFound = true;
    size_t index = result_->processes.size();
    result_->processes.push_back(std::move(rec));
    const ProcessRecord& added = result_->processes[index];
    nodes_.emplace_back();
    Node& node = nodes_.back();
    node.from = f.from;
    node.deferred = deferred;
    if (added.kernelThread) {  // never descend into kthreadd's tree, nor signal it
      Done(f.from);
      return;
    }
    node.pin.fd = pf->pin.fd();
    if (pf == temp) node.pin.owned = std::move(temp->pin);
    node.waiting = added.children.size();
    for (auto it = added.children.rbegin(); it != added.children.rend(); ++it) {
      stack_.push_back({*it, added.pid, index, node.pin.fd, added.childrenListedAt});
    }
    if (node.waiting == 0) Done(Finish(index));
  }

  // A child of `from` is done (visited with all its subtree, gone, or seen).
  // A process whose last child is done is done itself: up the chain, in a
  // loop, since a tree may be a chain thousands of processes deep.
  void Done(size_t from) {
    while (from != kNone && --nodes_[from].waiting == 0) from = Finish(from);
  }

  // Every child of `index` is done: signal it now if children go first.
  // Returns its parent's record.
  size_t Finish(size_t index) {
    Node& node = nodes_[index];
    // A SIGKILL would orphan the children of a process it could not read
    // (they move to a subreaper or init, out of the tree's reach): a
    // process waiting for its children is spared, and so are its own
    // parents, if one below could not be read.
    bool spare = o_.signal == SIGKILL && node.childUnread;
    if (node.childUnread && node.from != kNone) nodes_[node.from].childUnread = true;
    if (spare) {
      // left alone: the failure names the process that could not be read
    } else if (o_.order == Order::ChildrenFirst) {
      Queue(index);
    } else if (node.deferred) {
      Deliver(o_, node.pin.fd, result_->processes[index], result_);
    }
    if (!node.queued) node.pin = Pending();
    return node.from;
  }

  // Children first: `index` is next in signalling order (the order
  // processes are finished in). Its pin stays open for the
  // signal while the pass's budget of descriptors lasts (a pin the walk
  // cache holds costs nothing); past it, the pin is closed now and the
  // process is looked up again by pid and start time when signalled.
  void Queue(size_t index) {
    Node& node = nodes_[index];
    const ProcessRecord& rec = result_->processes[index];
    if (o_.signal == 0 || !Selected(rec, o_.select) || Kept(o_, rec.pid, rec.startTime)) return;
    ready_.push_back(index);
    node.queued = true;
    if (node.pin.owned.ok() && ++heldPins_ == kManyFiles) GrowFdTableInBackground();
    if (node.pin.owned.ok() && heldPins_ > PinBudget()) {
      node.pin = Pending();
      node.repin = true;
    }
  }

  // How many pins a children-first pass may hold: half of the
  // descriptors still free once the walk cache is full and the readers have
  // theirs, at most 8192; counted the first time a pin the cache does not
  // hold is queued (a small tree is all in the cache). A pin kept saves a
  // lookup (open and read) made while the processes already signalled wake
  // up: at 3280 processes the signals took ~70 ms with pins kept, ~150 ms
  // looking each up again.
  size_t PinBudget() {
    if (pinBudget_ != kNone) return pinBudget_;
    pinBudget_ = 0;
    size_t limit = std::min(FdLimit(), size_t{1} << 20);
    if (limit == 0) return pinBudget_;
    size_t cacheGrowth = 0;
    if (o_.cache) {
      std::lock_guard<std::mutex> hold(o_.cache->mu);
      cacheGrowth = o_.cache->maxFiles - std::min(o_.cache->maxFiles, o_.cache->files);
    }
    size_t reserved = CountOpenFds() + cacheGrowth + 64;
    if (reserved < limit) pinBudget_ = std::min<size_t>(8192, (limit - reserved) / 2);
    return pinBudget_;
  }

  // The signals of a children-first pass, in order, by the calling thread
  // once every helper has stopped reading.
  void SignalReady() {
    for (size_t index : ready_) {
      Node& node = nodes_[index];
      const ProcessRecord& rec = result_->processes[index];
      if (!node.repin) {
        Deliver(o_, node.pin.fd, rec, result_);
      } else {
        ProcessFiles pf;
        ProcStat st;
        if (Repin({rec.pid, rec.startTime}, &pf, &st, result_)) Deliver(o_, pf.pin.fd(), rec, result_);
      }
      node.pin = Pending();
    }
  }

  // Helpers append records as they finish them: put them back in the order
  // one thread would have visited them (depth first, children in the order
  // their parent lists them), so a pass reads the same whoever walked it.
  void InVisitingOrder() {
    std::vector<ProcessRecord>& records = result_->processes;
    std::unordered_map<pid_t, size_t> byPid;
    for (size_t i = 0; i < records.size(); i++) byPid[records[i].pid] = i;
    std::vector<ProcessRecord> ordered;
    ordered.reserve(records.size());
    std::vector<size_t> todo{0};
    while (!todo.empty()) {
      size_t i = todo.back();
      todo.pop_back();
      ordered.push_back(std::move(records[i]));
      const std::vector<pid_t>& children = ordered.back().children;
      for (auto it = children.rbegin(); it != children.rend(); ++it) {
        auto found = byPid.find(*it);
        if (found != byPid.end() && nodes_[found->second].from == i) todo.push_back(found->second);
      }
    }
    records = std::move(ordered);
  }

  const WalkOptions& o_;
  const ChildMap* scanned_;
  WalkResult* result_;
  std::mutex mu_;
  std::condition_variable wake_;
  std::vector<Frame> stack_;
  std::vector<Node> nodes_;  // parallel to result_->processes
  std::vector<size_t> ready_;  // children first: records to signal, in order
  size_t heldPins_ = 0;
  size_t pinBudget_ = kNone;  // not counted yet
  std::unordered_set<pid_t> seen_;
  size_t busy_ = 0;
  bool helped_ = false;  // helpers were asked for (some may have been refused)
  std::vector<pthread_t> helpers_;
};

}  // namespace

void PlanPass(PassKind kind, bool first, WalkOptions* o) {
  switch (kind) {
    case PassKind::Look:
      o->signal = 0;
      break;
    case PassKind::Stop:
      o->signal = SIGSTOP;
      o->select = Select::NotStopped;
      o->order = Order::ParentsFirst;
      // The first pass signals nearly everything anyway; the later ones
      // read every thread, so that one of them can prove the tree stopped.
      o->leaderSelects = first;
      break;
    case PassKind::Continue:
      o->signal = SIGCONT;
      // The first pass sends every thread of every process SIGCONT; the
      // later ones only what is still stopped.
      o->select = first ? Select::All : Select::Stopped;
      o->order = Order::ChildrenFirst;
      // Read, then signal (children first does): a SIGCONT wakes its
      // process, and reading the rest of the tree while the woken ones run
      // is slower on every core count (what runs meanwhile only forks
      // running children, which need no SIGCONT).
      o->perThread = true;
      break;
    case PassKind::Kill:
      o->signal = SIGKILL;
      o->select = Select::All;
      o->order = Order::ParentsFirst;
      o->relistAfterSignal = true;
      break;
    case PassKind::KillStopped:
      o->signal = SIGKILL;
      o->select = Select::All;
      o->order = Order::ChildrenFirst;
      break;
  }
}

bool Kept(const WalkOptions& o, pid_t pid, uint64_t startTime) {
  if (o.keep.empty()) return false;
  auto it = o.keep.find(pid);
  return it != o.keep.end() && it->second == startTime;
}

size_t ProcessFiles::Count() const {
  size_t n = (pin.ok() ? 1 : 0) + (stat.ok() ? 1 : 0) + (task.ok() ? 1 : 0);
  for (const ThreadFiles& t : threads) n += (t.stat.ok() ? 1 : 0) + (t.children.ok() ? 1 : 0);
  return n;
}

void Walk(const WalkOptions& o, WalkResult* result) {
  ChildMap scanned;
  result->scan = o.scan || !ChildrenFilesSupported();
  if (result->scan) ScanChildren(&scanned);
  if (o.cache) o.cache->pass++;
  Pass(o, result->scan ? &scanned : nullptr, result).Run();
  if (!o.cache) return;
  // What this pass did not reach has left the tree (or this pass ended early).
  WalkCache& cache = *o.cache;
  for (auto it = cache.processes.begin(); it != cache.processes.end();) {
    if (it->second.pass == cache.pass) {
      ++it;
      continue;
    }
    cache.files -= it->second.Count();
    it = cache.processes.erase(it);
  }
}

std::string LeaderStates(const std::vector<Identity>& targets) {
  std::string states(targets.size(), '-');
  for (size_t i = 0; i < targets.size(); i++) {
    ProcStat st;
    if (ReadStat(targets[i].pid, &st) == 0 && st.startTime == targets[i].startTime) states[i] = st.state;
  }
  return states;
}

void SignalList(const std::vector<Identity>& targets, int sig, bool perThread,
                const std::vector<pid_t>& protect, SignalListResult* result) {
  for (const Identity& target : targets) {
    ProcessFiles pf;
    ProcStat st;
    if (!Repin(target, &pf, &st, result)) continue;
    bool refused = Protected(target.pid, protect) || (st.flags & kKernelThreadFlag);
    if (SignalPinned(pf.pin.fd(), target.pid, refused, sig, result) && perThread) {
      // The signal to the process has resumed or stopped the whole group;
      // the threads are signalled too when they can be read.
      ProcessRecord rec;
      ChildMap none;  // the threads are wanted, not the children
      if (ReadThreadsAndChildren(st, &pf, 0, &none, 0, &rec, false) == 0) SignalThreads(target.pid, rec.threads, sig);
    }
  }
}

static int64_t NowMs() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
}

// Watches as many targets as descriptors allow at once: a tree may have
// more processes than the program has descriptors, and a target that could
// not be watched would be reported alive.
std::vector<pid_t> WaitExit(const std::vector<Identity>& targets, int timeoutMs) {
  int64_t deadline = NowMs() + timeoutMs;
  std::vector<pid_t> alive;
  size_t next = 0;
  while (next < targets.size()) {
    std::vector<Pidfd> fds;
    std::vector<pid_t> pids;
    for (; next < targets.size(); next++) {
      const Identity& target = targets[next];
      // poll(2) reports exits only on a real pidfd: open one, then make sure
      // the process it names is still the target (alive after the check, so
      // the pid was not reused in between).
      Pidfd fd(target.pid);
      ProcStat st;
      int err = fd.ok() ? ReadStat(target.pid, &st) : fd.error();
      if ((err == EMFILE || err == ENFILE) && !fds.empty()) break;  // watch these first
      if (err && !Gone(err)) {
        alive.push_back(target.pid);  // cannot watch it: do not call it exited
        continue;
      }
      if (err || st.startTime != target.startTime || !fd.Alive()) {
        continue;  // already reaped
      }
      fds.push_back(std::move(fd));
      pids.push_back(target.pid);
    }
    std::vector<struct pollfd> polled;
    std::vector<bool> exited(fds.size(), false);
    size_t remaining = fds.size();
    while (remaining > 0) {
      polled.clear();
      std::vector<size_t> which;
      for (size_t i = 0; i < fds.size(); i++) {
        if (exited[i]) continue;
        polled.push_back({fds[i].fd(), POLLIN, 0});
        which.push_back(i);
      }
      int64_t left = deadline - NowMs();
      if (left < 0) left = 0;
      int n = poll(polled.data(), polled.size(), static_cast<int>(left));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      for (size_t k = 0; k < polled.size(); k++) {
        if (polled[k].revents) {
          exited[which[k]] = true;
          remaining--;
        }
      }
    }
    for (size_t i = 0; i < fds.size(); i++) {
      if (!exited[i]) alive.push_back(pids[i]);
    }
  }
  return alive;
}

}  // namespace treestate
