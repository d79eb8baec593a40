// The single signal path: process-directed signals go through a pidfd, so a
// pid recycled by an unrelated process can never be hit; thread-directed ones
// through tgkill with the owning tgid.
#pragma once

#include <sys/types.h>

namespace treestate {

// Return a file descriptor, or -errno.
int PidfdOpen(pid_t pid);
// Return 0 or -errno.
int PidfdSignal(int pidfd, int sig);
int ThreadSignal(pid_t tgid, pid_t tid, int sig);

// Closes the pidfd when it goes out of scope.
class Pidfd {
 public:
  explicit Pidfd(pid_t pid);
  // An fd of /proc/PID instead (see OpenProcDir): it signals like a pidfd,
  // and reads through it reach only this process. poll(2) on it does not
  // report the exit: waiting needs a real pidfd.
  static Pidfd OfProcDir(pid_t pid);
  ~Pidfd();
  Pidfd(Pidfd&& other) noexcept;
  Pidfd(const Pidfd&) = delete;
  Pidfd& operator=(const Pidfd&) = delete;
  Pidfd& operator=(Pidfd&& other) noexcept;
  bool ok() const { return fd_ >= 0; }
  int error() const { return fd_ < 0 ? -fd_ : 0; }
  int fd() const { return fd_; }
  int Signal(int sig) const { return PidfdSignal(fd_, sig); }
  // Whether the process this pidfd names has not yet been reaped. A zombie
  // counts as alive here: its pid cannot be reused until it is reaped.
  bool Alive() const;

 private:
  struct Adopt {};
  Pidfd(Adopt, int fd) : fd_(fd) {}
  int fd_;
};

}  // namespace treestate
