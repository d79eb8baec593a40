#include "ptrace.h"

#include <errno.h>
#include <signal.h>
#include <sys/ptrace.h>
#include <sys/wait.h>

namespace treestate {

int TraceMe() { return ptrace(PTRACE_TRACEME, 0, nullptr, nullptr) < 0 ? errno : 0; }

namespace {

// waitpid for one child, through EINTR. Returns 0 or an errno value.
int WaitChild(pid_t child, int* status, int flags) {
  for (;;) {
    if (waitpid(child, status, flags) >= 0) return 0;
    if (errno != EINTR) return errno;
  }
}

}  // namespace

int DetachStopped(pid_t child) {
  int status;
  if (int err = WaitChild(child, &status, __WALL)) return err;
  if (!WIFSTOPPED(status)) return ECHILD;
  if (WSTOPSIG(status) != SIGTRAP) {
    // Some other signal arrived before the exec: pass it on and keep waiting.
    ptrace(PTRACE_CONT, child, nullptr, reinterpret_cast<void*>(static_cast<long>(WSTOPSIG(status))));
    return DetachStopped(child);
  }
  // PTRACE_DETACH's data is the signal delivered on resumption: SIGSTOP puts
  // the now untraced process into an ordinary group-stop.
  if (ptrace(PTRACE_DETACH, child, nullptr, reinterpret_cast<void*>(static_cast<long>(SIGSTOP))) < 0) {
    return errno;
  }
  // That SIGSTOP takes effect when the child next runs, a moment later:
  // wait (as its parent) until it is in group-stop, so that whoever is
  // given its pid never sees it running.
  if (int err = WaitChild(child, &status, WUNTRACED)) return err;
  return WIFSTOPPED(status) ? 0 : ECHILD;  // killed before it stopped
}

}  // namespace treestate
