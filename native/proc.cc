#include "proc.h"

#include <dirent.h>
#include <pthread.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>

namespace treestate {

namespace {

// A seq_file read stops short of the caller's buffer only at EOF or when its
// own buffer (at least a page) cannot take the next record. A short read well
// under a page is therefore the whole file, and the read that would return 0
// can be skipped: it is a third of the syscalls of a walk otherwise.
constexpr size_t kSurelyWhole = 4096 - 64;

// Reads a whole small procfs file from its start into `buf` (NUL-terminated).
// procfs files report size 0, so read until EOF (or a short read that
// proves it). pread, so that a kept fd is read from the start again.
int ReadFrom(int fd, char* buf, size_t cap, size_t* len) {
  size_t used = 0;
  while (used + 1 < cap) {
    size_t want = cap - 1 - used;
    ssize_t n = pread(fd, buf + used, want, static_cast<off_t>(used));
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    if (n == 0) break;
    used += static_cast<size_t>(n);
    if (static_cast<size_t>(n) < want && static_cast<size_t>(n) < kSurelyWhole) break;
  }
  buf[used] = '\0';
  *len = used;
  return 0;
}

// Reads `path` (relative to `dirfd`), or the file already open in `kept`;
// a file read for the first time is left open in `kept` when one is given.
int ReadSmallAt(int dirfd, const char* path, char* buf, size_t cap, size_t* len,
                Fd* kept = nullptr) {
  if (kept && kept->ok()) {
    int err = ReadFrom(kept->get(), buf, cap, len);
    if (err) kept->Reset();
    return err;
  }
  int fd = openat(dirfd, path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return errno == ENOENT ? ESRCH : errno;
  int err = ReadFrom(fd, buf, cap, len);
  if (kept && !err) kept->Reset(fd);
  else close(fd);
  return err;
}

int ReadSmall(const char* path, char* buf, size_t cap, size_t* len) {
  return ReadSmallAt(AT_FDCWD, path, buf, cap, len);
}

// The fields after "(comm)" start after the LAST ')': comm may hold spaces
// and parentheses.
const char* AfterComm(const char* buf) {
  const char* close = strrchr(buf, ')');
  return close && close[1] == ' ' ? close + 2 : nullptr;
}

int ParsePidList(const char* p, std::vector<pid_t>* out) {
  while (*p) {
    char* end;
    long v = strtol(p, &end, 10);
    if (end == p) break;
    out->push_back(static_cast<pid_t>(v));
    p = end;
    while (*p == ' ' || *p == '\n') p++;
  }
  return 0;
}

}  // namespace

Fd& Fd::operator=(Fd&& o) noexcept {
  if (this != &o) {
    Reset(o.fd_);
    o.fd_ = -1;
  }
  return *this;
}

void Fd::Reset(int fd) {
  if (fd_ >= 0) close(fd_);
  fd_ = fd;
}

namespace {

int ParseStat(int dirfd, const char* path, pid_t pid, ProcStat* out, Fd* kept = nullptr) {
  char buf[1024];
  size_t len;
  int err = ReadSmallAt(dirfd, path, buf, sizeof buf, &len, kept);
  if (err) return err;
  const char* open = strchr(buf, '(');
  const char* rest = AfterComm(buf);
  if (!open || !rest) return EIO;
  out->pid = pid;
  out->comm.assign(open + 1, static_cast<size_t>(rest - 2 - (open + 1)));
  out->state = rest[0];
  // Fields 4.. after the state: ppid(4) ... flags(9) ... num_threads(20) ... starttime(22).
  const char* p = rest + 1;
  for (int field = 4; field <= 22 && *p; field++) {
    while (*p == ' ') p++;
    char* end;
    unsigned long long v = strtoull(p, &end, 10);
    if (field == 4) out->ppid = static_cast<pid_t>(v);
    if (field == 6) out->sid = static_cast<pid_t>(v);
    if (field == 9) out->flags = static_cast<unsigned long>(v);
    if (field == 20) out->numThreads = static_cast<long>(v);
    if (field == 22) out->startTime = v;
    // Negative fields (priority, nice) parse as huge values we never use.
    p = end == p ? p + 1 : end;
  }
  return 0;
}

}  // namespace

int ReadStat(pid_t pid, ProcStat* out) {
  char path[64];
  snprintf(path, sizeof path, "/proc/%d/stat", pid);
  return ParseStat(AT_FDCWD, path, pid, out);
}

int OpenProcDir(pid_t pid) {
  char path[64];
  snprintf(path, sizeof path, "/proc/%d", pid);
  int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return errno == ENOENT ? -ESRCH : -errno;
  return fd;
}

int ReadStatAt(int procfd, pid_t pid, ProcStat* out, Fd* kept) {
  return ParseStat(procfd, "stat", pid, out, kept);
}

namespace {

int ParseThreadState(int dirfd, const char* path, char* state, Fd* kept) {
  char buf[1024];
  size_t len;
  int err = ReadSmallAt(dirfd, path, buf, sizeof buf, &len, kept);
  if (err) return err;
  const char* rest = AfterComm(buf);
  if (!rest) return EIO;
  *state = rest[0];
  return 0;
}

}  // namespace

int ReadThreadStateAt(int taskfd, pid_t tid, char* state, Fd* kept) {
  char path[32];
  snprintf(path, sizeof path, "%d/stat", tid);
  return ParseThreadState(taskfd, path, state, kept);
}

int OpenTaskDir(int procfd) {
  int fd = openat(procfd, "task", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return errno == ENOENT ? -ESRCH : -errno;
  return fd;
}

int ListThreadsAt(int taskfd, bool again, std::vector<pid_t>* tids) {
  // getdents64 on our own fd: no DIR to allocate, and the fd stays open
  // for the per-thread reads that follow.
  if (again && lseek(taskfd, 0, SEEK_SET) < 0) return errno;
  alignas(8) char buf[8192];
  for (;;) {
    long n = syscall(SYS_getdents64, taskfd, buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno == ENOENT ? ESRCH : errno;
    }
    if (n == 0) break;
    long used = n;
    for (long off = 0; off < n;) {
      struct linux_dirent64 {
        uint64_t d_ino;
        int64_t d_off;
        unsigned short d_reclen;
        unsigned char d_type;
        char d_name[];
      };
      auto* e = reinterpret_cast<linux_dirent64*>(buf + off);
      if (e->d_name[0] >= '0' && e->d_name[0] <= '9') tids->push_back(static_cast<pid_t>(atoi(e->d_name)));
      off += e->d_reclen;
    }
    // procfs fills the buffer until it is full or the listing ends: room
    // left for another entry means this was the end, and the getdents that
    // would return 0 can be skipped.
    if (used + 256 < static_cast<long>(sizeof buf)) break;
  }
  return 0;
}

namespace {

int ReadChildrenPath(int dirfd, const char* path, std::vector<pid_t>* out, Fd* kept) {
  char small[4096];
  size_t len;
  int err = ReadSmallAt(dirfd, path, small, sizeof small, &len, kept);
  if (err) return err;
  if (len + 1 < sizeof small) return ParsePidList(small, out);
  // A thread with hundreds of children: read the whole list.
  std::string whole;
  int fd = openat(dirfd, path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return errno == ENOENT ? ESRCH : errno;
  char chunk[65536];
  for (;;) {
    ssize_t n = read(fd, chunk, sizeof chunk);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    whole.append(chunk, static_cast<size_t>(n));
  }
  close(fd);
  return ParsePidList(whole.c_str(), out);
}

}  // namespace

int ReadChildrenAt(int procfd, int taskfd, pid_t tid, std::vector<pid_t>* out, Fd* kept) {
  char path[48];
  if (taskfd >= 0) {
    snprintf(path, sizeof path, "%d/children", tid);
    return ReadChildrenPath(taskfd, path, out, kept);
  }
  snprintf(path, sizeof path, "task/%d/children", tid);
  return ReadChildrenPath(procfd, path, out, kept);
}

namespace {

// Where the value of a "Name:\tvalue" line of a status file starts; nullptr
// when it has none.
const char* StatusValue(const char* buf, const char* name) {
  size_t n = strlen(name);
  for (const char* line = buf; line && *line; line = strchr(line, '\n'), line = line ? line + 1 : nullptr) {
    if (strncmp(line, name, n) == 0 && line[n] == ':') return line + n + 1;
  }
  return nullptr;
}

// The value of a "Name:\tvalue" line of a status file; -1 when it has none.
long StatusField(const char* buf, const char* name) {
  const char* value = StatusValue(buf, name);
  return value ? atol(value) : -1;
}

}  // namespace

long StatusFieldLast(const char* buf, const char* name) {
  const char* value = StatusValue(buf, name);
  if (!value) return -1;
  const char* end = strchr(value, '\n');
  if (!end) end = value + strlen(value);
  const char* last = end;
  while (last > value && last[-1] != ' ' && last[-1] != '\t') last--;
  return last < end ? atol(last) : -1;
}

pid_t ReadTracer(pid_t pid, pid_t tid) {
  char path[64];
  char buf[4096];
  size_t len;
  snprintf(path, sizeof path, "/proc/%d/task/%d/status", pid, tid);
  if (ReadSmall(path, buf, sizeof buf, &len)) return 0;
  long tracer = StatusField(buf, "TracerPid");
  return tracer > 0 ? static_cast<pid_t>(tracer) : 0;
}

bool WaitsInVfork(pid_t pid, pid_t tid) {
  char path[64];
  char buf[128];
  size_t len;
  snprintf(path, sizeof path, "/proc/%d/task/%d/wchan", pid, tid);
  if (ReadSmall(path, buf, sizeof buf, &len)) return false;
  buf[len < sizeof buf ? len : sizeof buf - 1] = '\0';
  return !strcmp(buf, "wait_for_vfork_done") || !strcmp(buf, "kernel_clone") || !strcmp(buf, "_do_fork") ||
         !strcmp(buf, "do_fork");
}

int ReadTgidAt(int procfd, pid_t* tgid) {
  char buf[4096];
  size_t len;
  int err = ReadSmallAt(procfd, "status", buf, sizeof buf, &len);
  if (err) return err;
  long v = StatusField(buf, "Tgid");
  if (v <= 0) return EIO;
  *tgid = static_cast<pid_t>(v);
  return 0;
}

uint64_t BootTicks() {
  // fs/proc/array.c: start_time is nsec_to_clock_t(start_boottime), and a
  // time namespace offsets both clocks alike.
  static const uint64_t nsPerTick = 1000000000ULL / static_cast<uint64_t>(sysconf(_SC_CLK_TCK));
  struct timespec ts;
  clock_gettime(CLOCK_BOOTTIME, &ts);
  return (static_cast<uint64_t>(ts.tv_sec) * 1000000000ULL + static_cast<uint64_t>(ts.tv_nsec)) / nsPerTick;
}

uint64_t ReadSignalsCaught(pid_t pid) {
  char path[48];
  char buf[4096];
  size_t len;
  snprintf(path, sizeof path, "/proc/%d/status", pid);
  if (ReadSmall(path, buf, sizeof buf, &len)) return 0;
  const char* line = strstr(buf, "\nSigCgt:");
  return line ? strtoull(line + 8, nullptr, 16) : 0;
}

bool ChildrenFilesSupported() {
  static const bool supported = [] {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/task/%d/children", getpid(), getpid());
    return access(path, R_OK) == 0;
  }();
  return supported;
}

namespace {

// Calls `each` with the stat line of every process in /proc; errno of the listing, or 0.
template <typename Each>
int ForEachProcess(Each each) {
  DIR* dir = opendir("/proc");
  if (!dir) return errno;
  ProcStat st;
  char path[32];
  while (struct dirent* e = readdir(dir)) {
    if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
    pid_t pid = static_cast<pid_t>(atoi(e->d_name));
    snprintf(path, sizeof path, "%d/stat", pid);
    if (ParseStat(dirfd(dir), path, pid, &st) == 0) each(st);
  }
  closedir(dir);
  return 0;
}

}  // namespace

int ScanChildren(ChildMap* out) {
  return ForEachProcess([out](const ProcStat& st) { (*out)[st.ppid].push_back(st.pid); });
}

int ScanSession(pid_t sid, std::vector<Identity>* out) {
  return ForEachProcess([sid, out](const ProcStat& st) {
    if (st.sid == sid && st.state != 'Z' && st.state != 'X') out->push_back({st.pid, st.startTime});
  });
}

size_t CountOpenFds() {
  DIR* dir = opendir("/proc/self/fd");
  if (!dir) return static_cast<size_t>(-1) / 2;
  size_t n = 0;
  while (struct dirent* e = readdir(dir)) {
    if (e->d_name[0] != '.') n++;
  }
  closedir(dir);
  return n - 1;  // the listing's own fd
}

size_t FdLimit() {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return 0;
  return rl.rlim_cur == RLIM_INFINITY ? SIZE_MAX : static_cast<size_t>(rl.rlim_cur);
}

namespace {

void* GrowFdTable(void*) {
  // Slots 0..16383 (an fd of 16000 asks for a table of 16384), or half the
  // fd limit: the kernel refuses an fd at or past the limit, and the table
  // rounds up to a power of two (times 128) anyway.
  size_t top = std::min<size_t>(16000, FdLimit() / 2);
  if (top < 256) return nullptr;
  // Two descriptors for a moment, once per process: the walk that asked
  // holds hundreds, and a walk that meets EMFILE says so.
  int fd = open("/", O_PATH | O_CLOEXEC);
  if (fd < 0) return nullptr;
  // The first free descriptor at or above `top`: the table grows to hold
  // it (expand_files), and never shrinks. The copy is closed at once.
  int high = fcntl(fd, F_DUPFD_CLOEXEC, static_cast<int>(top));
  if (high >= 0) close(high);
  close(fd);
  return nullptr;
}

}  // namespace

void GrowFdTableInBackground() {
  static std::atomic<bool> started{false};
  if (started.exchange(true)) return;
  pthread_attr_t attr;
  if (pthread_attr_init(&attr) != 0) return;
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  pthread_attr_setstacksize(&attr, 64 * 1024);
  pthread_t t;
  // Best effort: without the thread, the table grows as it always did.
  pthread_create(&t, &attr, GrowFdTable, nullptr);
  pthread_attr_destroy(&attr);
}

std::vector<pid_t> SelfAndAncestors() {
  std::vector<pid_t> chain;
  pid_t pid = getpid();
  ProcStat st;
  // Bounded: a cycle is impossible, but /proc may answer oddly in a sandbox.
  for (int i = 0; i < 4096 && pid > 0; i++) {
    chain.push_back(pid);
    if (pid == 1 || ReadStat(pid, &st) != 0) break;
    pid = st.ppid;
  }
  return chain;
}

}  // namespace treestate
