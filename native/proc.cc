#include "proc.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

namespace treestate {

namespace {

// Reads a whole small procfs file into `buf` (NUL-terminated). procfs files
// report size 0, so read until EOF.
int ReadSmall(const char* path, char* buf, size_t cap, size_t* len) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return errno;
  size_t used = 0;
  while (used + 1 < cap) {
    ssize_t n = read(fd, buf + used, cap - 1 - used);
    if (n < 0) {
      if (errno == EINTR) continue;
      int err = errno;
      close(fd);
      return err;
    }
    if (n == 0) break;
    used += static_cast<size_t>(n);
  }
  close(fd);
  buf[used] = '\0';
  *len = used;
  return 0;
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

int ReadStat(pid_t pid, ProcStat* out) {
  char path[64];
  char buf[1024];
  size_t len;
  snprintf(path, sizeof path, "/proc/%d/stat", pid);
  int err = ReadSmall(path, buf, sizeof buf, &len);
  if (err) return err == ENOENT ? ESRCH : err;
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
    if (field == 9) out->flags = static_cast<unsigned long>(v);
    if (field == 20) out->numThreads = static_cast<long>(v);
    if (field == 22) out->startTime = v;
    // Negative fields (priority, nice) parse as huge values we never use.
    p = end == p ? p + 1 : end;
  }
  return 0;
}

int ReadThreadState(pid_t pid, pid_t tid, char* state) {
  char path[64];
  char buf[1024];
  size_t len;
  snprintf(path, sizeof path, "/proc/%d/task/%d/stat", pid, tid);
  int err = ReadSmall(path, buf, sizeof buf, &len);
  if (err) return err == ENOENT ? ESRCH : err;
  const char* rest = AfterComm(buf);
  if (!rest) return EIO;
  *state = rest[0];
  return 0;
}

int ListThreads(pid_t pid, std::vector<pid_t>* tids) {
  char path[64];
  snprintf(path, sizeof path, "/proc/%d/task", pid);
  DIR* dir = opendir(path);
  if (!dir) return errno == ENOENT ? ESRCH : errno;
  while (struct dirent* e = readdir(dir)) {
    if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
    tids->push_back(static_cast<pid_t>(atoi(e->d_name)));
  }
  closedir(dir);
  return 0;
}

int ReadChildren(pid_t pid, pid_t tid, std::vector<pid_t>* out) {
  char path[64];
  snprintf(path, sizeof path, "/proc/%d/task/%d/children", pid, tid);
  char small[4096];
  size_t len;
  int err = ReadSmall(path, small, sizeof small, &len);
  if (err) return err == ENOENT ? ESRCH : err;
  if (len + 1 < sizeof small) return ParsePidList(small, out);
  // A thread with hundreds of children: read the whole list.
  std::string whole;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
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

pid_t ReadTracer(pid_t pid, pid_t tid) {
  char path[64];
  char buf[4096];
  size_t len;
  snprintf(path, sizeof path, "/proc/%d/task/%d/status", pid, tid);
  if (ReadSmall(path, buf, sizeof buf, &len)) return 0;
  const char* line = strstr(buf, "\nTracerPid:");
  return line ? static_cast<pid_t>(atoi(line + 11)) : 0;
}

bool ChildrenFilesSupported() {
  static const bool supported = [] {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/task/%d/children", getpid(), getpid());
    return access(path, R_OK) == 0;
  }();
  return supported;
}

int ScanChildren(ChildMap* out) {
  DIR* dir = opendir("/proc");
  if (!dir) return errno;
  ProcStat st;
  while (struct dirent* e = readdir(dir)) {
    if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
    pid_t pid = static_cast<pid_t>(atoi(e->d_name));
    if (ReadStat(pid, &st) == 0) (*out)[st.ppid].push_back(pid);
  }
  closedir(dir);
  return 0;
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
