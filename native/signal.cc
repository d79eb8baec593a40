#include "signal.h"

#include <errno.h>
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "proc.h"

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_pidfd_send_signal
#define SYS_pidfd_send_signal 424
#endif

namespace treestate {

int PidfdOpen(pid_t pid) {
  // pidfds are created O_CLOEXEC by the kernel.
  long fd = syscall(SYS_pidfd_open, pid, 0);
  return fd < 0 ? -errno : static_cast<int>(fd);
}

int PidfdSignal(int pidfd, int sig) {
  return syscall(SYS_pidfd_send_signal, pidfd, sig, nullptr, 0) < 0 ? -errno : 0;
}

int ThreadSignal(pid_t tgid, pid_t tid, int sig) {
  return syscall(SYS_tgkill, tgid, tid, sig) < 0 ? -errno : 0;
}

Pidfd::Pidfd(pid_t pid) : fd_(pid > 0 ? PidfdOpen(pid) : -ESRCH) {}

Pidfd Pidfd::OfProcDir(pid_t pid) { return Pidfd(Adopt{}, pid > 0 ? OpenProcDir(pid) : -ESRCH); }

Pidfd::~Pidfd() {
  if (fd_ >= 0) close(fd_);
}

Pidfd::Pidfd(Pidfd&& other) noexcept : fd_(other.fd_) { other.fd_ = -EBADF; }

Pidfd& Pidfd::operator=(Pidfd&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) close(fd_);
    fd_ = other.fd_;
    other.fd_ = -EBADF;
  }
  return *this;
}

bool Pidfd::Alive() const {
  // Signal 0 checks existence; EPERM still means the process is there.
  int r = Signal(0);
  return r == 0 || r == -EPERM;
}

}  // namespace treestate
