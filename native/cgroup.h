// cgroup v2 readers: where the unified hierarchy is mounted and which cgroup
// a process is in. Plain reads, no policy: which cgroups are treestate's and
// what to do with them is the TypeScript's to decide (src/cgroup/).
#pragma once

#include <sys/types.h>

#include <string>

namespace treestate {

struct Cgroup2Mount {
  std::string path;  // mount point
  std::string root;  // the hierarchy path mounted there ("/" unless a bind mount or a namespace)
};

// The first cgroup2 mount in /proc/self/mountinfo: 0, ENOENT when there is
// none, or the errno of reading mountinfo.
int FindCgroup2Mount(Cgroup2Mount* out);

// The process's cgroup v2 path (the "0::" line of /proc/PID/cgroup), relative
// to the hierarchy's root: 0, ESRCH when the process is gone, ENOENT when it
// has no v2 line.
int CgroupOf(pid_t pid, std::string* out);

}  // namespace treestate
