// The tree walk: the one iterator over a process tree (CRIU's pstree idea).
// A pass discovers the tree from the root, reads every thread's state and,
// if asked, signals the selected processes in the requested order. Identity
// is pinned with an fd of /proc/PID opened before the process is inspected,
// through which it is both read and signalled, so nothing that is read or
// signalled can be a recycled pid. Only ESRCH/ENOENT mean a process is gone;
// any other error is a failure of the pass. Big trees are read by helper
// threads too, and the passes of one operation can share a WalkCache.
#pragma once

#include <stdint.h>
#include <sys/types.h>

#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "errors.h"
#include "proc.h"
#include "signal.h"

namespace treestate {

// ParentsFirst signals each process as it is read, before its children are
// (a stop must stop a parent before it reads the children, or they fork
// away). ChildrenFirst signals once the whole tree is read, in one burst, in
// the order processes are finished (each after all of its children), so
// reading never shares the cores with the processes the pass has already
// woken; pins wait open while half the free descriptors last, and past that
// a process is looked up again by pid and start time to be signalled.
enum class Order { ParentsFirst, ChildrenFirst };

// Which processes of the pass receive the signal, judged from the thread
// states read in the same pass.
enum class Select {
  All,         // every live process
  NotStopped,  // some live thread is not in group-stop (T)
  Stopped,     // some live thread is in group-stop (T)
};

// What a pass is for. Its signal, order, selection and reading rules all
// follow from the kind (PlanPass): a caller names the kind, not the rules.
enum class PassKind {
  Look,         // read the tree, signal nothing
  Stop,         // SIGSTOP what is not stopped, parents first (before they fork)
  Continue,     // SIGCONT to every thread, children first, once the tree is read
  Kill,         // SIGKILL to a tree that may still fork: parents first, children listed again
  KillStopped,  // SIGKILL to a stopped tree: read whole, then children first in one burst
};

struct ThreadRecord {
  pid_t tid = 0;
  char state = '?';
  pid_t tracer = 0;  // read only for threads in ptrace-stop ('t')
  bool vfork = false;  // read only for threads in uninterruptible sleep ('D'): waits in vfork
};

struct ProcessRecord {
  pid_t pid = 0;
  pid_t ppid = 0;
  uint64_t startTime = 0;
  std::string comm;
  bool kernelThread = false;
  std::vector<ThreadRecord> threads;
  std::vector<pid_t> children;
  uint64_t childrenListedAt = 0;  // relistAfterSignal: BootTicks() once signalled, before the last listing
};

// What a walk holds open on one thread and one process.
struct ThreadFiles {
  pid_t tid = 0;
  Fd stat;  // not the leader's: its state is in the process's stat line
  Fd children;
  uint64_t pass = 0;
};

struct ProcessFiles {
  Pidfd pin{-1};  // /proc/PID: the process is read and signalled through it
  Fd stat;
  Fd task;  // /proc/PID/task, for several threads
  std::vector<ThreadFiles> threads;
  uint64_t pass = 0;
  size_t Count() const;
};

// The files of a tree kept open from one pass to the next, so that a pass
// reads each with one pread instead of open, read and close. Each open
// procfs file holds about a page of kernel memory, hence the bound:
// processes beyond it are read as without a cache. One pass at a time.
struct WalkCache {
  explicit WalkCache(size_t maxFiles) : maxFiles(maxFiles) {}
  std::unordered_map<pid_t, ProcessFiles> processes;
  size_t maxFiles;
  size_t files = 0;
  uint64_t pass = 0;
  bool busy = false;
  std::mutex mu;  // the threads of one pass share the map
};

// The rules of one pass; set from its kind by PlanPass.
struct WalkOptions {
  pid_t root = 0;
  uint64_t rootStartTime = 0;  // 0: accept whatever process has the pid
  bool scan = false;           // the /proc/*/stat fallback instead of children files
  int signal = 0;              // 0: only look
  Order order = Order::ParentsFirst;
  Select select = Select::All;
  bool perThread = false;      // also tgkill every other thread
  // Select::NotStopped only: a process whose leader is running or asleep
  // (R, S) is signalled without reading its other threads' states (reported
  // as kUnreadState). For the first pass of a stop, which signals nearly
  // every process anyway; later passes read every thread.
  bool leaderSelects = false;
  // Parents first only, for a kill of a tree that may still fork: a process
  // that was not stopped when read has its children read again once it is
  // signalled. A process sent SIGKILL forks no more
  // (copy_process gives up on a fatal signal under the lock that links a
  // new child to its parent), so the children read after the signal are
  // all it has. It may then exit before they are visited, and they move to
  // a new parent: a child listed by a signalled process is taken under
  // another parent if it started no later than the listing (a process that
  // took its pid since started after).
  bool relistAfterSignal = false;
  std::vector<pid_t> protect;  // never signalled (the caller and its ancestors)
  // Processes (pid -> start time) this pass leaves alone, whatever the
  // selection: a continue keeps the application's own stops stopped. Matched
  // by identity, so a process that took one's pid since is signalled.
  std::unordered_map<pid_t, uint64_t> keep;
  WalkCache* cache = nullptr;  // files kept from earlier passes over the same tree
  // Processes (pid -> start time) an earlier pass of this operation sent
  // SIGCONT, none of whose threads was then in ptrace-stop. A SIGCONT ends
  // the group-stop of every thread of its process before kill(2) returns
  // (kernel/signal.c, prepare_signal: each thread is woken under the
  // sender's siglock), so their other threads' states are not read again:
  // they are reported as kResumedState. The leader's state is read anyway
  // (the process's stat line, needed for its identity).
  const std::unordered_map<pid_t, uint64_t>* resumed = nullptr;
};

// Sets the signal, order, selection and reading rules of `options` for a
// pass of `kind`; `first`: the operation's first signalling pass (a stop's
// signals behind a running leader without reading its other threads; a
// continue's signals every process, later ones only what is stopped).
void PlanPass(PassKind kind, bool first, WalkOptions* options);

// Whether `options.keep` names this very process.
bool Kept(const WalkOptions& options, pid_t pid, uint64_t startTime);

// The state reported for a thread not read again because a SIGCONT of this
// operation has ended its group-stop (WalkOptions::resumed). Not a letter
// the kernel uses; it is neither stopped nor traced.
constexpr char kResumedState = '+';

// The state reported for a thread not read by a pass with leaderSelects,
// because its leader is running or asleep (R, S): the process is signalled
// whatever its other threads are doing; or by a pass that sends every
// process SIGKILL, which needs no state, when its stat file could not be
// read (EMFILE …). Not a kernel letter; it counts as not stopped, so that
// pass never proves a tree stopped.
constexpr char kUnreadState = '?';

// What the signals of a pass did, process by process.
struct SignalOutcome {
  std::vector<pid_t> signalled;    // in signalling order
  std::vector<pid_t> gone;         // exited (or no longer the process seen) before the signal
  std::vector<SysError> failures;  // signals that failed (EPERM, refusals)
};

struct WalkResult : SignalOutcome {
  bool rootFound = false;
  SysError rootError;
  pid_t rootThreadOf = 0;  // the root pid names a thread of this process, not a process
  bool scan = false;
  size_t walkers = 1;                    // threads that read the tree
  std::vector<ProcessRecord> processes;  // in visiting order (depth first)
  // relistAfterSignal: processes that had begun to exit when their children
  // were listed again; a child forked just before the signal may be missing.
  std::vector<pid_t> unlisted;
};

void Walk(const WalkOptions& options, WalkResult* result);

using SignalListResult = SignalOutcome;

// Signals processes known from an earlier pass, in the given order, after
// re-checking each one's start time: a pid that now names another process is
// reported as gone and left alone.
void SignalList(const std::vector<Identity>& targets, int sig, bool perThread,
                const std::vector<pid_t>& protect, SignalListResult* result);

// The state letter of each target's leader thread (its /proc/PID/stat),
// one per target in order; '-' for a target that is gone or whose pid now
// names another process. For a watch that looks at a few known processes
// without walking the whole tree.
std::string LeaderStates(const std::vector<Identity>& targets);

// Waits (poll on pidfds) until every target has exited (zombie or reaped) or
// the timeout passes. Returns the targets still alive.
std::vector<pid_t> WaitExit(const std::vector<Identity>& targets, int timeoutMs);

}  // namespace treestate
