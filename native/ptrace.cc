#include "ptrace.h"

#include <errno.h>
#include <signal.h>
#include <sys/ptrace.h>
#include <sys/wait.h>

namespace treestate {

int TraceMe() { return ptrace(PTRACE_TRACEME, 0, nullptr, nullptr) < 0 ? errno : 0; }

int DetachStopped(pid_t child) {
  int status;
  for (;;) {
    pid_t r = waitpid(child, &status, __WALL);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return errno;
    break;
  }
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
  for (;;) {
    pid_t r = waitpid(child, &status, WUNTRACED);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return errno;
    break;
  }
  return WIFSTOPPED(status) ? 0 : ECHILD;  // killed before it stopped
}

}  // namespace treestate
