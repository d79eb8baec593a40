#include "cgroup.h"

#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

#include <cctype>

#include <sstream>

namespace treestate {

namespace {

int ReadWhole(const std::string& path, std::string* out) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return errno;
  char buf[8192];
  for (;;) {
    ssize_t n = read(fd, buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      int e = errno;
      close(fd);
      return e;
    }
    if (n == 0) break;
    out->append(buf, static_cast<size_t>(n));
  }
  close(fd);
  return 0;
}

// mountinfo escapes space, tab, newline and backslash as \ooo (fs/proc_namespace.c, mangle).
std::string Unescape(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); i++) {
    if (s[i] == '\\' && i + 3 < s.size() && isdigit(s[i + 1]) && isdigit(s[i + 2]) && isdigit(s[i + 3])) {
      out += static_cast<char>((s[i + 1] - '0') * 64 + (s[i + 2] - '0') * 8 + (s[i + 3] - '0'));
      i += 3;
    } else {
      out += s[i];
    }
  }
  return out;
}

}  // namespace

int FindCgroup2Mount(Cgroup2Mount* out) {
  std::string text;
  if (int e = ReadWhole("/proc/self/mountinfo", &text)) return e;
  std::istringstream lines(text);
  std::string line;
  while (std::getline(lines, line)) {
    // id parent major:minor root mountpoint options [optional...] - fstype source superoptions
    size_t dash = line.find(" - ");
    if (dash == std::string::npos) continue;
    std::istringstream tail(line.substr(dash + 3));
    std::string fstype;
    tail >> fstype;
    if (fstype != "cgroup2") continue;
    std::istringstream head(line.substr(0, dash));
    std::string id, parent, dev, root, mountPoint;
    head >> id >> parent >> dev >> root >> mountPoint;
    out->path = Unescape(mountPoint);
    out->root = Unescape(root);
    return 0;
  }
  return ENOENT;
}

int CgroupOf(pid_t pid, std::string* out) {
  std::string text;
  int e = ReadWhole("/proc/" + std::to_string(pid) + "/cgroup", &text);
  if (e == ENOENT) return ESRCH;
  if (e) return e;
  std::istringstream lines(text);
  std::string line;
  while (std::getline(lines, line)) {
    if (line.rfind("0::", 0) == 0) {
      *out = line.substr(3);
      return 0;
    }
  }
  return ENOENT;
}

}  // namespace treestate
