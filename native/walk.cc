#include "walk.h"

#include <errno.h>
#include <poll.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
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

// Pins the process with an fd of its /proc directory and reads it through
// that fd: what is read can only be that process (a reaped one answers
// ESRCH, never its pid's next owner), and the same fd signals it.
int OpenChecked(pid_t pid, pid_t expectedParent, uint64_t expectedStart, Pidfd* fd,
                ProcStat* st) {
  Pidfd opened = Pidfd::OfProcDir(pid);
  if (!opened.ok()) return opened.error();
  int err = ReadStatAt(opened.fd(), pid, st);
  if (err) return err;
  if (expectedParent != 0 && st->ppid != expectedParent) return ESRCH;
  if (expectedStart != 0 && st->startTime != expectedStart) return ESRCH;
  *fd = std::move(opened);
  return 0;
}

// An fd of /proc/PID/task, closed when the process is done with.
class TaskDir {
 public:
  TaskDir() = default;
  explicit TaskDir(int procfd) : fd_(OpenTaskDir(procfd)) {}
  ~TaskDir() {
    if (fd_ >= 0) close(fd_);
  }
  TaskDir(TaskDir&& o) noexcept : fd_(o.fd_) { o.fd_ = -1; }
  TaskDir& operator=(TaskDir&& o) noexcept {
    std::swap(fd_, o.fd_);
    return *this;
  }
  TaskDir(const TaskDir&) = delete;
  TaskDir& operator=(const TaskDir&) = delete;
  int fd() const { return fd_; }

 private:
  int fd_ = -1;
};

// `dir` receives /proc/PID/task for a process with several threads, so the
// children files can be read relative to it too.
void ReadThreads(int procfd, const ProcStat& st, ProcessRecord* rec, TaskDir* dir) {
  if (st.numThreads <= 1) {
    // One thread: the process's own stat line is the leader's, no task/ scan.
    rec->threads.push_back({st.pid, st.state, 0});
  } else {
    *dir = TaskDir(procfd);
    std::vector<pid_t> tids;
    if (dir->fd() >= 0) ListThreadsAt(dir->fd(), &tids);
    for (pid_t tid : tids) {
      // The state in /proc/PID/stat is the leader's own (the kernel formats
      // both files from the same task): no need to read it twice.
      if (tid == st.pid) {
        rec->threads.push_back({tid, st.state, 0});
        continue;
      }
      char state;
      // A thread that exits while we look is simply no longer there.
      if (ReadThreadStateAt(dir->fd(), tid, &state) == 0) rec->threads.push_back({tid, state, 0});
    }
  }
  for (ThreadRecord& t : rec->threads) {
    if (t.state == 't') t.tracer = ReadTracer(st.pid, t.tid);
  }
}

void ReadChildrenOf(int procfd, const ProcessRecord& rec, const ChildMap* scanned,
                    const TaskDir& dir, std::vector<pid_t>* out) {
  if (scanned) {
    auto it = scanned->find(rec.pid);
    if (it != scanned->end()) *out = it->second;
    return;
  }
  // Every thread's file: a child belongs to the thread that forked it.
  for (const ThreadRecord& t : rec.threads) ReadChildrenAt(procfd, dir.fd(), t.tid, out);
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
// the pidfd that pins the process, and sorts the outcome. Returns whether the
// signal was delivered.
bool SignalPinned(const Pidfd& fd, pid_t pid, bool refused, int sig, SignalOutcome* outcome) {
  SysError e;
  e.syscall = "pidfd_send_signal";
  e.pid = pid;
  if (refused) {
    e.code = "EREFUSED";
    outcome->failures.push_back(e);
    return false;
  }
  int r = fd.Signal(sig);
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
void Deliver(const WalkOptions& o, const Pidfd& fd, const ProcessRecord& rec, WalkResult* result) {
  if (o.signal == 0 || !Selected(rec, o.select)) return;
  bool refused = rec.kernelThread || Protected(rec.pid, o.protect);
  if (SignalPinned(fd, rec.pid, refused, o.signal, result) && o.perThread) {
    SignalThreads(rec.pid, rec.threads, o.signal);
  }
}

struct Frame {
  pid_t pid;
  pid_t parent;
  bool exit;       // post-order: the children are done, signal this one
  size_t record;   // index in result->processes, for exit frames
};

}  // namespace

void Walk(const WalkOptions& o, WalkResult* result) {
  ChildMap scanned;
  result->scan = o.scan || !ChildrenFilesSupported();
  if (result->scan) ScanChildren(&scanned);
  const ChildMap* map = result->scan ? &scanned : nullptr;

  std::vector<Frame> stack{{o.root, 0, false, 0}};
  std::vector<Pidfd> open;  // post-order: pidfds of entered, unfinished processes
  std::unordered_set<pid_t> seen;
  while (!stack.empty()) {
    Frame f = stack.back();
    stack.pop_back();
    if (f.exit) {
      Deliver(o, open.back(), result->processes[f.record], result);
      open.pop_back();
      continue;
    }
    if (!seen.insert(f.pid).second) continue;
    Pidfd fd(-1);
    ProcStat st;
    bool isRoot = f.parent == 0;
    int err = OpenChecked(f.pid, f.parent, isRoot ? o.rootStartTime : 0, &fd, &st);
    if (err) {
      if (isRoot) {
        result->rootError.err = err;
        result->rootError.syscall = err == ESRCH ? "pidfd_open" : "open";
        result->rootError.pid = f.pid;
        return;
      }
      result->gone.push_back(f.pid);
      continue;
    }
    if (isRoot) result->rootFound = true;
    result->processes.emplace_back();
    size_t index = result->processes.size() - 1;
    ProcessRecord& rec = result->processes[index];
    rec.pid = st.pid;
    rec.ppid = st.ppid;
    rec.startTime = st.startTime;
    rec.comm = st.comm;
    rec.kernelThread = (st.flags & kKernelThreadFlag) != 0;
    TaskDir dir;
    ReadThreads(fd.fd(), st, &rec, &dir);
    if (rec.kernelThread) continue;  // never descend into kthreadd's tree
    if (o.order == Order::ParentsFirst) Deliver(o, fd, rec, result);
    ReadChildrenOf(fd.fd(), rec, map, dir, &rec.children);
    // `rec` may move when later records are added: copy what we still need.
    std::vector<pid_t> children = rec.children;
    if (o.order == Order::ChildrenFirst) {
      open.push_back(std::move(fd));
      stack.push_back({st.pid, 0, true, index});
    }
    for (auto it = children.rbegin(); it != children.rend(); ++it) {
      stack.push_back({*it, st.pid, false, 0});
    }
  }
}

void SignalList(const std::vector<Identity>& targets, int sig, bool perThread,
                const std::vector<pid_t>& protect, SignalListResult* result) {
  for (const Identity& target : targets) {
    Pidfd fd(-1);
    ProcStat st;
    if (OpenChecked(target.pid, 0, target.startTime, &fd, &st) != 0) {
      result->gone.push_back(target.pid);
      continue;
    }
    bool refused = Protected(target.pid, protect) || (st.flags & kKernelThreadFlag);
    if (SignalPinned(fd, target.pid, refused, sig, result) && perThread) {
      ProcessRecord rec;
      rec.pid = target.pid;
      TaskDir dir;
      ReadThreads(fd.fd(), st, &rec, &dir);
      SignalThreads(target.pid, rec.threads, sig);
    }
  }
}

static int64_t NowMs() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
}

std::vector<pid_t> WaitExit(const std::vector<Identity>& targets, int timeoutMs) {
  std::vector<Pidfd> fds;
  std::vector<pid_t> pids;
  for (const Identity& target : targets) {
    // poll(2) reports exits only on a real pidfd: open one, then make sure
    // the process it names is still the target (alive after the check, so
    // the pid was not reused in between).
    Pidfd fd(target.pid);
    ProcStat st;
    if (!fd.ok() || ReadStat(target.pid, &st) != 0 || st.startTime != target.startTime ||
        !fd.Alive()) {
      continue;  // already reaped
    }
    fds.push_back(std::move(fd));
    pids.push_back(target.pid);
  }
  int64_t deadline = NowMs() + timeoutMs;
  std::vector<struct pollfd> polled(fds.size());
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
  std::vector<pid_t> alive;
  for (size_t i = 0; i < fds.size(); i++) {
    if (!exited[i]) alive.push_back(pids[i]);
  }
  return alive;
}

}  // namespace treestate
