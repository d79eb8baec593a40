// Starting a program stopped right after its execve, without ever letting it
// run an instruction of its own: the child asks to be traced and execs, the
// kernel stops it with SIGTRAP at the exec, and the parent detaches with
// SIGSTOP so it stays in group-stop (state T) with no tracer attached.
#pragma once

#include <sys/types.h>

namespace treestate {

// Child side, between fork and execve.
int TraceMe();

// Parent side: waits for the exec stop, detaches leaving the child in T, and
// returns once it is in T. Returns 0, or an errno value (ECHILD when the
// child died before its exec stop, e.g. because execve failed, or was killed
// before it stopped).
int DetachStopped(pid_t child);

}  // namespace treestate
