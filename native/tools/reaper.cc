// treestate-reaper: runs a program as a tree whose orphans and killed
// processes are reaped at once. It is a child subreaper, so every process of
// the tree that loses its parent is re-parented here instead of to pid 1
// (which on some machines reaps only every few seconds, keeping pids taken
// and making `criu restore` fail with "Can't fork for PID: File exists").
//
//   treestate-reaper [--setsid | --lead-session] [--stopped] [--pid-ns [--net-ns]] [--out FILE] [--fds-from FD] -- PROGRAM [ARG...]
//
// stdout (one line per event):  pid N | spawned ID N | spawn-failed ID ERRNO
//                                exit N CODE SIGNAL (only for programs it started) | done
//                                init HOSTPID (with --pid-ns, first)
// stdin (commands):              spawn ID OUT ARGC [NFDS [UMASK]], then ARGC lines (one argument each);
//                                the NFDS descriptors arrive first on --fds-from (a unix
//                                socket, SCM_RIGHTS) and become the program's fds 3, 4, …;
//                                UMASK (octal) is the program's umask
//                                kill  -- or EOF: kill every descendant, reap, exit
//                                detach  -- stop listening; reap until no child is left, then exit
// --setsid starts the program in a session of its own; --lead-session makes
// the reaper a session leader and the program a member of its session (a
// session led from outside the tree, whatever the caller's session is).
// PR_SET_PDEATHSIG makes it clean up the same way if its parent dies.
//
// --pid-ns: the reaper becomes pid 1 of a new pid namespace, with a mount
// namespace of its own and /proc mounted for it (what CRIU's criu-ns does),
// so a `criu restore` it runs finds the images' pids free whatever runs on
// the host. Pids it reports are the namespace's. The process started first
// stays on the host side as the init's parent (it prints the init's host pid,
// then waits for it), so the init is reaped at once when it ends; the init
// takes no PR_SET_PDEATHSIG, so a detached tree outlives whoever started it.
// When pid 1 of a namespace exits, the kernel kills everything left in it:
// nothing restored there can outlive the init. --net-ns adds a network
// namespace with only its loopback, brought up (a test restore that must not
// meet the original's addresses and peers).
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <net/if.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <set>
#include <string>
#include <vector>

#include "../proc.h"
#include "../ptrace.h"
#include "../rpc.h"

namespace {

std::set<pid_t> started;  // programs this reaper ran: their exits are reported

void Say(const std::string& line) {
  std::string out = line + "\n";
  ssize_t ignored = write(STDOUT_FILENO, out.data(), out.size());
  (void)ignored;
}

// Returns 0, or the errno of opening OUT.
int RedirectStdio(const char* out) {
  int in = open("/dev/null", O_RDONLY);
  // Never through a symlink planted at OUT (criu's log.out sits in the images
  // directory): O_NOFOLLOW makes that an error, as the library's runner does.
  int sink = out && *out && strcmp(out, "-") != 0
                 ? open(out, O_WRONLY | O_CREAT | O_APPEND | O_NOFOLLOW, 0600)
                 : open("/dev/null", O_WRONLY);
  if (sink < 0) return errno;
  dup2(in, 0);
  dup2(sink, 1);
  dup2(sink, 2);
  // Never hand the reaper's control sockets to the tree: CRIU refuses to dump
  // a tree holding an external unix socket. CLOSE_RANGE_CLOEXEC (1 << 2)
  // rather than closing: the exec-error pipe must stay open until execve.
  syscall(SYS_close_range, 3, ~0U, 1U << 2);
  return 0;
}

int fdsFrom = -1;  // --fds-from: where descriptors for spawned programs arrive

// Places `fds` at 3, 4, … in a child whose other descriptors are close-on-exec.
// Each goes above the targets first, so no dup2 overwrites one still to move.
void PlaceFds(const std::vector<int>& fds) {
  int n = static_cast<int>(fds.size());
  std::vector<int> high;
  for (int fd : fds) high.push_back(fcntl(fd, F_DUPFD_CLOEXEC, 3 + n));
  for (int i = 0; i < n; i++) dup2(high[i], 3 + i);
}

// The descriptors for one spawn: one message on --fds-from, sent before the command line.
bool ReceiveFds(int count, std::vector<int>* fds) {
  treestate::Message message;
  const char* syscall = "";
  if (fdsFrom < 0 || treestate::ReceiveMessage(fdsFrom, &message, &syscall) != 0) return false;
  *fds = message.fds;
  return static_cast<int>(fds->size()) == count;
}

// UMASK < 0: the reaper's own.
// The exec error a child reports on its close-on-exec pipe: 0 when the exec
// succeeded (end of file), retried on EINTR so an interrupted read is never
// taken for a successful exec.
int ReadExecError(int fd) {
  int execErr = 0;
  ssize_t n;
  do {
    n = read(fd, &execErr, sizeof execErr);
  } while (n < 0 && errno == EINTR);
  if (n < 0) return errno;
  return n == sizeof execErr ? execErr : 0;
}

// "exit PID CODE SIGNAL" for a program this reaper started, once: `started`
// forgets it as it is said.
void ReportExit(pid_t pid, int status) {
  if (!started.erase(pid)) return;
  int code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  int sig = WIFSIGNALED(status) ? WTERMSIG(status) : 0;
  Say("exit " + std::to_string(pid) + " " + std::to_string(code) + " " + std::to_string(sig));
}

pid_t Start(char* const argv[], bool newSession, bool stopped, const char* out, int mask, int* err,
            const std::vector<int>& fds = {}) {
  int report[2];
  if (pipe2(report, O_CLOEXEC) < 0) {
    *err = errno;
    return -1;
  }
  pid_t pid = fork();
  if (pid < 0) {
    *err = errno;
    return -1;
  }
  if (pid == 0) {
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    if (newSession) setsid();
    if (mask >= 0) umask(static_cast<mode_t>(mask));
    int e = RedirectStdio(out);
    PlaceFds(fds);
    if (e == 0 && stopped) e = treestate::TraceMe();
    if (e == 0) {
      execvp(argv[0], argv);
      e = errno;
    }
    ssize_t ignored = write(report[1], &e, sizeof e);
    (void)ignored;
    _exit(127);
  }
  close(report[1]);
  if (stopped) {
    int e = treestate::DetachStopped(pid);
    if (e) {
      int execErr = ReadExecError(report[0]);
      if (execErr) e = execErr;
      close(report[0]);
      waitpid(pid, nullptr, 0);
      *err = e;
      return -1;
    }
  } else {
    int execErr = ReadExecError(report[0]);
    if (execErr) {
      close(report[0]);
      waitpid(pid, nullptr, 0);
      *err = execErr;
      return -1;
    }
  }
  close(report[0]);
  started.insert(pid);
  return pid;
}

void ReapReady() {
  for (;;) {
    int status;
    pid_t pid = waitpid(-1, &status, WNOHANG | __WALL);
    if (pid <= 0) return;
    ReportExit(pid, status);
  }
}

// Kills every descendant: our direct children can be signalled safely (an
// unreaped child's pid cannot be reused), and the orphans of each killed one
// come to us, so repeat until there is no child left. Each round reaps every
// child that is ready, not one: a storm's orphans arrive by the thousand, and
// listing and signalling all of them again for each one reaped would let them
// pile up faster than they go.
void KillAll() {
  pid_t self = getpid();
  treestate::Fd dir(treestate::OpenProcDir(self));
  for (;;) {
    std::vector<pid_t> children;
    treestate::ReadChildrenAt(dir.get(), -1, self, &children);
    for (pid_t child : children) kill(child, SIGKILL);
    int status;
    pid_t pid = waitpid(-1, &status, __WALL);
    if (pid < 0 && errno == ECHILD) return;
    if (pid > 0) ReportExit(pid, status);
    ReapReady();
  }
}

// Reaps until no child is left: what a detached init does for its tree.
void ReapUntilEmpty() {
  for (;;) {
    pid_t pid = waitpid(-1, nullptr, __WALL);
    if (pid < 0 && errno == ECHILD) return;
  }
}

// Enters new pid and mount namespaces. Returns in the namespace's init (pid 1,
// with its own /proc); the host-side parent never returns: it reports the
// init's host pid, waits for it and exits with its status.
// Brings up the loopback of a new network namespace (it starts down, and
// with it 127.0.0.1 is not there to bind to).
int LoopbackUp() {
  int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return errno;
  struct ifreq ifr = {};
  strncpy(ifr.ifr_name, "lo", IFNAMSIZ - 1);
  int err = 0;
  if (ioctl(fd, SIOCGIFFLAGS, &ifr) < 0) err = errno;
  ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
  if (!err && ioctl(fd, SIOCSIFFLAGS, &ifr) < 0) err = errno;
  close(fd);
  return err;
}

void EnterPidNamespace(bool network) {
  if (unshare(CLONE_NEWPID | CLONE_NEWNS | (network ? CLONE_NEWNET : 0)) < 0) {
    Say(std::string("error ") + std::to_string(errno) + " unshare: " + strerror(errno));
    _exit(1);
  }
  // The init waits for the "init N" line before it says anything: both
  // write the same stdout, and its "pid N" must come second.
  int said[2];
  if (pipe2(said, O_CLOEXEC) < 0) {
    Say(std::string("error ") + std::to_string(errno) + " pipe: " + strerror(errno));
    _exit(1);
  }
  pid_t init = fork();
  if (init < 0) {
    Say(std::string("error ") + std::to_string(errno) + " fork: " + strerror(errno));
    _exit(1);
  }
  if (init > 0) {
    close(said[0]);
    Say("init " + std::to_string(init));
    close(said[1]);
    // The init owns the control pipes from here on.
    int null = open("/dev/null", O_RDWR);
    dup2(null, STDIN_FILENO);
    dup2(null, STDOUT_FILENO);
    int status = 0;
    while (waitpid(init, &status, 0) < 0 && errno == EINTR) {
    }
    _exit(WIFEXITED(status) ? WEXITSTATUS(status) : 1);
  }
  close(said[1]);
  char done;
  while (read(said[0], &done, 1) < 0 && errno == EINTR) {
  }
  close(said[0]);
  // A private copy of the mounts, so the /proc mounted here (showing this
  // namespace's pids, as criu needs) is seen by no one outside.
  if (mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) < 0 ||
      mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, nullptr) < 0) {
    Say(std::string("error ") + std::to_string(errno) + " mount /proc: " + strerror(errno));
    _exit(1);
  }
  if (network) {
    int err = LoopbackUp();
    if (err) {
      Say(std::string("error ") + std::to_string(err) + " loopback: " + strerror(err));
      _exit(1);
    }
  }
}

bool ReadLine(std::string* buffer, std::string* line) {
  size_t nl = buffer->find('\n');
  if (nl == std::string::npos) return false;
  *line = buffer->substr(0, nl);
  buffer->erase(0, nl + 1);
  return true;
}

enum class Command { kContinue, kKill, kDetach };

// Handles complete commands in `buffer`.
Command HandleCommands(std::string* buffer) {
  for (;;) {
    size_t nl = buffer->find('\n');
    if (nl == std::string::npos) return Command::kContinue;
    char id[64], out[4096];
    int argc = 0, nfds = 0;
    unsigned mask = 0;
    std::string head = buffer->substr(0, nl);
    if (head == "kill") return Command::kKill;
    if (head == "detach") return Command::kDetach;
    int fields = sscanf(head.c_str(), "spawn %63s %4095s %d %d %o", id, out, &argc, &nfds, &mask);
    if (fields < 3 || argc <= 0 || nfds < 0 || nfds > 16) {
      buffer->erase(0, nl + 1);
      continue;
    }
    // Wait until all ARGC argument lines have arrived.
    size_t pos = nl + 1;
    for (int i = 0; i < argc; i++) {
      size_t next = buffer->find('\n', pos);
      if (next == std::string::npos) return Command::kContinue;
      pos = next + 1;
    }
    std::string line;
    ReadLine(buffer, &line);
    std::vector<std::string> args;
    for (int i = 0; i < argc; i++) {
      ReadLine(buffer, &line);
      args.push_back(line);
    }
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(&a[0]);
    argv.push_back(nullptr);
    int err = 0;
    std::vector<int> fds;
    pid_t pid = -1;
    if (nfds > 0 && !ReceiveFds(nfds, &fds)) {
      err = errno ? errno : EBADF;
    } else {
      pid = Start(argv.data(), false, false, out, fields == 5 ? static_cast<int>(mask & 0777) : -1, &err, fds);
    }
    for (int fd : fds) close(fd);
    if (pid < 0) {
      Say(std::string("spawn-failed ") + id + " " + std::to_string(err));
    } else {
      Say(std::string("spawned ") + id + " " + std::to_string(pid));
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  bool newSession = false, leadSession = false, stopped = false, pidNamespace = false, netNamespace = false;
  const char* out = "-";
  int i = 1;
  for (; i < argc; i++) {
    if (strcmp(argv[i], "--setsid") == 0) newSession = true;
    else if (strcmp(argv[i], "--lead-session") == 0) leadSession = true;
    else if (strcmp(argv[i], "--stopped") == 0) stopped = true;
    else if (strcmp(argv[i], "--pid-ns") == 0) pidNamespace = true;
    else if (strcmp(argv[i], "--net-ns") == 0) netNamespace = true;
    else if (strcmp(argv[i], "--out") == 0 && i + 1 < argc) out = argv[++i];
    else if (strcmp(argv[i], "--fds-from") == 0 && i + 1 < argc) fdsFrom = atoi(argv[++i]);
    else if (strcmp(argv[i], "--") == 0) { i++; break; }
    else break;
  }
  if (i >= argc) {
    fprintf(stderr, "usage: treestate-reaper [--setsid | --lead-session] [--stopped] [--pid-ns [--net-ns]] [--out FILE] [--fds-from FD] -- PROGRAM [ARG...]\n");
    return 2;
  }
  if (pidNamespace) {
    EnterPidNamespace(netNamespace);  // now pid 1 of the new namespace: every orphan comes here
  } else {
    prctl(PR_SET_CHILD_SUBREAPER, 1);
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() == 1) return 1;  // the parent is already gone
    if (leadSession && setsid() < 0) {
      Say(std::string("error ") + std::to_string(errno) + " setsid: " + strerror(errno));
      return 1;
    }
  }

  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGCHLD);
  sigaddset(&mask, SIGTERM);
  sigaddset(&mask, SIGINT);
  sigaddset(&mask, SIGHUP);
  sigprocmask(SIG_BLOCK, &mask, nullptr);
  signal(SIGPIPE, SIG_IGN);
  int sfd = signalfd(-1, &mask, SFD_CLOEXEC);

  int err = 0;
  pid_t pid = Start(argv + i, newSession, stopped, out, -1, &err);
  if (pid < 0) {
    Say(std::string("error ") + std::to_string(err) + " " + strerror(err));
    return 1;
  }
  Say("pid " + std::to_string(pid));

  std::string buffer;
  bool running = true, detached = false;
  while (running) {
    struct pollfd fds[2] = {{sfd, POLLIN, 0}, {STDIN_FILENO, POLLIN, 0}};
    if (poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      break;
    }
    if (fds[0].revents & POLLIN) {
      struct signalfd_siginfo si;
      while (read(sfd, &si, sizeof si) == sizeof si) {
        if (si.ssi_signo != SIGCHLD) running = false;
        break;
      }
      ReapReady();
    }
    if (fds[1].revents & (POLLIN | POLLHUP | POLLERR)) {
      char chunk[4096];
      ssize_t n = read(STDIN_FILENO, chunk, sizeof chunk);
      if (n <= 0) {
        running = false;
      } else {
        buffer.append(chunk, static_cast<size_t>(n));
        Command c = HandleCommands(&buffer);
        running = c == Command::kContinue;
        detached = c == Command::kDetach;
      }
    }
  }
  if (detached) {
    Say("detached");
    int null = open("/dev/null", O_RDWR);
    dup2(null, STDIN_FILENO);
    dup2(null, STDOUT_FILENO);
    ReapUntilEmpty();
    return 0;
  }
  KillAll();
  Say("done");
  return 0;
}
