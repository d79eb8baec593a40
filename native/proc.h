// procfs readers. Everything here is a plain read of /proc with no policy:
// callers decide what a vanished file means.
#pragma once

#include <stdint.h>
#include <sys/types.h>

#include <string>
#include <unordered_map>
#include <vector>

namespace treestate {

// A process by pid and start time (clock ticks after boot): a pid taken
// again names another process.
struct Identity {
  pid_t pid = 0;
  uint64_t startTime = 0;
};

struct ProcStat {
  pid_t pid = 0;
  pid_t ppid = 0;
  pid_t sid = 0;  // the session, as this /proc's pid namespace sees it
  char state = '?';
  unsigned long flags = 0;
  long numThreads = 0;
  uint64_t startTime = 0;  // clock ticks after boot: with the pid, a process's identity
  std::string comm;
};

// PF_KTHREAD from include/linux/sched.h.
constexpr unsigned long kKernelThreadFlag = 0x00200000;

// An owned file descriptor, closed when it goes out of scope.
class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() { Reset(); }
  Fd(Fd&& o) noexcept : fd_(o.fd_) { o.fd_ = -1; }
  Fd& operator=(Fd&& o) noexcept;
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  bool ok() const { return fd_ >= 0; }
  int get() const { return fd_; }
  void Reset(int fd = -1);

 private:
  int fd_ = -1;
};

// Each returns 0 or an errno value (ESRCH when the process is gone).
int ReadStat(pid_t pid, ProcStat* out);

// Reads relative to an fd of /proc/PID (OpenProcDir: the fd or -errno).
// Such an fd is bound to the process, not to its pid: once the process is
// reaped every lookup through it fails with ESRCH, even if the pid has been
// given to another process. It is also a pidfd for pidfd_send_signal(2).
//
// `kept`, when given, keeps the file open to be read again: pread at
// offset 0 makes the kernel generate a procfs file anew, one syscall
// instead of open, read and close. A kept file is bound to its process or
// thread like the directory it was opened through: once that is reaped,
// reading it fails with ESRCH (a children file reads empty).
int OpenProcDir(pid_t pid);
int ReadStatAt(int procfd, pid_t pid, ProcStat* out, Fd* kept = nullptr);
// An fd of /proc/PID/task, for processes with several threads: each thread's
// file is then a two-component lookup.
int OpenTaskDir(int procfd);
// `again`: the fd was listed before and is rewound first.
int ListThreadsAt(int taskfd, bool again, std::vector<pid_t>* tids);
int ReadThreadStateAt(int taskfd, pid_t tid, char* state, Fd* kept = nullptr);
// Appends the children of thread `tid` (from task/TID/children), read
// through `taskfd` when there is one, else through `procfd`.
int ReadChildrenAt(int procfd, int taskfd, pid_t tid, std::vector<pid_t>* out,
                   Fd* kept = nullptr);
// TracerPid of one thread (from .../task/TID/status); 0 when not traced.
pid_t ReadTracer(pid_t pid, pid_t tid);
// Whether a thread in uninterruptible sleep waits in vfork for its child to
// exec or exit (its wchan is the clone path: wait_for_vfork_done, inlined
// into kernel_clone, or _do_fork on older kernels). False when unreadable.
bool WaitsInVfork(pid_t pid, pid_t tid);
// The signals a process has handlers for (SigCgt of /proc/PID/status, bit
// N-1 for signal N); 0 when it cannot be read.
uint64_t ReadSignalsCaught(pid_t pid);

// The thread group (process) of the task an fd of /proc/N was opened for.
// /proc/TID opens for any thread, though readdir lists only processes, and
// a signal sent through it reaches the whole process: N names a process
// only when this is N itself.
int ReadTgidAt(int procfd, pid_t* tgid);

// Now, in the unit and from the origin of a ProcStat's startTime (clock
// ticks of the boot-time clock), truncated the same way.
uint64_t BootTicks();

// Whether /proc/PID/task/TID/children exists (CONFIG_PROC_CHILDREN).
bool ChildrenFilesSupported();

// The fallback walk: one scan of /proc/*/stat, parent pid -> child pids (in
// pid order).
using ChildMap = std::unordered_map<pid_t, std::vector<pid_t>>;
int ScanChildren(ChildMap* out);
// Every live process of session `sid` (from /proc/*/stat; zombies left
// out: they are dead already).
int ScanSession(pid_t sid, std::vector<Identity>* out);

// The last number of a "Name:\tvalue value …" line of a status file, such as
// "NSsid:\t812\t1" (the value in the process's own pid namespace); -1 when
// it has none.
long StatusFieldLast(const char* buf, const char* name);

// How many descriptors this process has open (from /proc/self/fd); a
// number past any limit if it cannot tell.
size_t CountOpenFds();

// This process's soft limit on open descriptors: SIZE_MAX when unlimited, 0
// when it cannot tell.
size_t FdLimit();

// Grows this process's descriptor table, once per process and on a thread of
// its own, to the size a big walk needs (the walk cache and a pass's pins:
// up to ~16000 descriptors, within the fd limit). The kernel grows the
// table by doubling, and in a process with more than one thread each growth
// waits for an RCU grace period (fs/file.c, expand_fdtable:
// synchronize_rcu), 6-17 ms each here: a first walk of 1000 processes x 3
// threads, which keeps ~10000 files open, waited ~80 ms for six of them.
// Grown in one step it costs one grace period, which the walk meets only
// once it has filled the table it has, and ~130 kB of kernel memory. Called
// by a walk once it holds more than a few hundred descriptors, not before:
// a process that exits while the thread waits for the grace period waits
// for it too (a command on a small tree would end ~7 ms later).
void GrowFdTableInBackground();

// The calling process and its ancestors, nearest first, up to pid 1.
std::vector<pid_t> SelfAndAncestors();

}  // namespace treestate
