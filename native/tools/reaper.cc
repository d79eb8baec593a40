// treestate-reaper: runs a program as a tree whose orphans and killed
// processes are reaped at once. It is a child subreaper, so every process of
// the tree that loses its parent is re-parented here instead of to pid 1
// (which on some machines reaps only every few seconds, keeping pids taken
// and making `criu restore` fail with "Can't fork for PID: File exists").
//
//   treestate-reaper [--setsid] [--stopped] [--out FILE] [--fds-from FD] -- PROGRAM [ARG...]
//
// stdout (one line per event):  pid N | spawned ID N | spawn-failed ID ERRNO
//                                exit N CODE SIGNAL (only for programs it started) | done
// stdin (commands):              spawn ID OUT ARGC [NFDS], then ARGC lines (one argument each);
//                                the NFDS descriptors arrive first on --fds-from (a unix
//                                socket, SCM_RIGHTS) and become the program's fds 3, 4, …
//                                kill  -- or EOF: kill every descendant, reap, exit
// PR_SET_PDEATHSIG makes it clean up the same way if its parent dies.
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
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

void RedirectStdio(const char* out) {
  int in = open("/dev/null", O_RDONLY);
  int sink = out && *out && strcmp(out, "-") != 0
                 ? open(out, O_WRONLY | O_CREAT | O_APPEND, 0644)
                 : open("/dev/null", O_WRONLY);
  dup2(in, 0);
  dup2(sink, 1);
  dup2(sink, 2);
  // Never hand the reaper's control sockets to the tree: CRIU refuses to dump
  // a tree holding an external unix socket. CLOSE_RANGE_CLOEXEC (1 << 2)
  // rather than closing: the exec-error pipe must stay open until execve.
  syscall(SYS_close_range, 3, ~0U, 1U << 2);
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

pid_t Start(char* const argv[], bool newSession, bool stopped, const char* out, int* err,
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
    RedirectStdio(out);
    PlaceFds(fds);
    int e = stopped ? treestate::TraceMe() : 0;
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
      int execErr = 0;
      if (read(report[0], &execErr, sizeof execErr) == sizeof execErr) e = execErr;
      close(report[0]);
      waitpid(pid, nullptr, 0);
      *err = e;
      return -1;
    }
  } else {
    int execErr = 0;
    ssize_t n = read(report[0], &execErr, sizeof execErr);  // EOF when exec succeeded
    if (n == sizeof execErr) {
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
    if (started.erase(pid)) {
      int code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
      int sig = WIFSIGNALED(status) ? WTERMSIG(status) : 0;
      Say("exit " + std::to_string(pid) + " " + std::to_string(code) + " " + std::to_string(sig));
    }
  }
}

// Kills every descendant: our direct children can be signalled safely (an
// unreaped child's pid cannot be reused), and the orphans of each killed one
// come to us, so repeat until there is no child left.
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
    if (pid > 0 && started.erase(pid)) {
      int code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
      int sig = WIFSIGNALED(status) ? WTERMSIG(status) : 0;
      Say("exit " + std::to_string(pid) + " " + std::to_string(code) + " " + std::to_string(sig));
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

// Handles complete commands in `buffer`; returns false on "kill".
bool HandleCommands(std::string* buffer) {
  for (;;) {
    size_t nl = buffer->find('\n');
    if (nl == std::string::npos) return true;
    char id[64], out[4096];
    int argc = 0, nfds = 0;
    std::string head = buffer->substr(0, nl);
    if (head == "kill") return false;
    if (sscanf(head.c_str(), "spawn %63s %4095s %d %d", id, out, &argc, &nfds) < 3 || argc <= 0 || nfds < 0 || nfds > 16) {
      buffer->erase(0, nl + 1);
      continue;
    }
    // Wait until all ARGC argument lines have arrived.
    size_t pos = nl + 1;
    for (int i = 0; i < argc; i++) {
      size_t next = buffer->find('\n', pos);
      if (next == std::string::npos) return true;
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
      pid = Start(argv.data(), false, false, out, &err, fds);
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
  bool newSession = false, stopped = false;
  const char* out = "-";
  int i = 1;
  for (; i < argc; i++) {
    if (strcmp(argv[i], "--setsid") == 0) newSession = true;
    else if (strcmp(argv[i], "--stopped") == 0) stopped = true;
    else if (strcmp(argv[i], "--out") == 0 && i + 1 < argc) out = argv[++i];
    else if (strcmp(argv[i], "--fds-from") == 0 && i + 1 < argc) fdsFrom = atoi(argv[++i]);
    else if (strcmp(argv[i], "--") == 0) { i++; break; }
    else break;
  }
  if (i >= argc) {
    fprintf(stderr, "usage: treestate-reaper [--setsid] [--stopped] [--out FILE] [--fds-from FD] -- PROGRAM [ARG...]\n");
    return 2;
  }
  prctl(PR_SET_CHILD_SUBREAPER, 1);
  prctl(PR_SET_PDEATHSIG, SIGTERM);
  if (getppid() == 1) return 1;  // the parent is already gone

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
  pid_t pid = Start(argv + i, newSession, stopped, out, &err);
  if (pid < 0) {
    Say(std::string("error ") + std::to_string(err) + " " + strerror(err));
    return 1;
  }
  Say("pid " + std::to_string(pid));

  std::string buffer;
  bool running = true;
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
        running = HandleCommands(&buffer);
      }
    }
  }
  KillAll();
  Say("done");
  return 0;
}
