// treestate-run: starts a program in a cgroup of its own and stays its parent.
//
//   treestate-run --cgroup DIR [--report-fd N] [--setsid] [--detached] [--adopt-pidfile FILE] -- PROGRAM [ARG...]
//
// DIR is an empty cgroup v2 directory that the caller made (src/cgroup/run.ts).
// The child writes its own pid into DIR/cgroup.procs before it execs, so the
// program's first instruction already runs inside the cgroup and every
// process it forks is born there: nothing can fork before the move.
// treestate-run is a child subreaper, so orphans of the tree come to it and
// are reaped at once instead of lingering as zombies of pid 1.
//
// The tree lives as long as its root: when the root exits, what is left in
// the cgroup (daemons, double-forked grandchildren) is killed through
// cgroup.kill, and once the cgroup is empty it is removed. SIGINT, SIGTERM,
// SIGHUP and SIGQUIT sent to treestate-run go to the root.
//
// --adopt-pidfile: PROGRAM only brings the tree (`criu restore
// --restore-detached --pidfile FILE`, run in the cgroup so that everything it
// restores is born there): when it exits 0, the pid it wrote to FILE, which
// came to us as an orphan, becomes the root. PROGRAM's own end is reported
// as "program-exit CODE SIGNAL"; if it fails, so does the run.
//
// Report lines on fd N (default 3):  pid PID | error cgroup|exec ERRNO |
//                                    program-exit CODE SIGNAL | adopted PID | exit CODE SIGNAL
// Exit status: the root's exit code, 128+signal when a signal killed it, 127
// when it could not be started.
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <map>
#include <string>

namespace {

int reportFd = 3;

void Report(const std::string& line) {
  std::string out = line + "\n";
  ssize_t ignored = write(reportFd, out.data(), out.size());
  (void)ignored;
}

bool WriteFile(const std::string& path, const char* text) {
  int fd = open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) return false;
  bool ok = write(fd, text, strlen(text)) == static_cast<ssize_t>(strlen(text));
  close(fd);
  return ok;
}

// "populated 0" in cgroup.events: no live process in the cgroup or below it.
bool Populated(int eventsFd) {
  char buf[256];
  ssize_t n = pread(eventsFd, buf, sizeof buf - 1, 0);
  if (n <= 0) return false;
  buf[n] = 0;
  return strstr(buf, "populated 1") != nullptr;
}

struct Failure {
  int stage;  // 1: joining the cgroup, 2: exec
  int err;
};

}  // namespace

int main(int argc, char** argv) {
  const char* cgroup = nullptr;
  const char* adoptPidfile = nullptr;
  bool newSession = false, detached = false;
  int i = 1;
  for (; i < argc; i++) {
    if (strcmp(argv[i], "--cgroup") == 0 && i + 1 < argc) cgroup = argv[++i];
    else if (strcmp(argv[i], "--report-fd") == 0 && i + 1 < argc) reportFd = atoi(argv[++i]);
    else if (strcmp(argv[i], "--setsid") == 0) newSession = true;
    else if (strcmp(argv[i], "--detached") == 0) detached = true;
    else if (strcmp(argv[i], "--adopt-pidfile") == 0 && i + 1 < argc) adoptPidfile = argv[++i];
    else if (strcmp(argv[i], "--") == 0) { i++; break; }
    else break;
  }
  if (!cgroup || i >= argc) {
    fprintf(stderr, "usage: treestate-run --cgroup DIR [--report-fd N] [--setsid] [--detached] -- PROGRAM [ARG...]\n");
    return 2;
  }
  std::string dir = cgroup;
  prctl(PR_SET_CHILD_SUBREAPER, 1);
  // In the foreground the tree ends with the treestate that runs it: its
  // death is a hangup, forwarded to the root like the others.
  if (!detached) {
    prctl(PR_SET_PDEATHSIG, SIGHUP);
    if (getppid() == 1) return 1;
  }

  sigset_t mask;
  sigemptyset(&mask);
  for (int sig : {SIGCHLD, SIGINT, SIGTERM, SIGHUP, SIGQUIT}) sigaddset(&mask, sig);
  sigprocmask(SIG_BLOCK, &mask, nullptr);
  signal(SIGPIPE, SIG_IGN);
  int sfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
  int eventsFd = open((dir + "/cgroup.events").c_str(), O_RDONLY | O_CLOEXEC);
  int procsFd = open((dir + "/cgroup.procs").c_str(), O_WRONLY | O_CLOEXEC);
  if (eventsFd < 0 || procsFd < 0) {
    Report("error cgroup " + std::to_string(errno));
    return 127;
  }

  int pipefd[2];
  if (pipe2(pipefd, O_CLOEXEC) < 0) {
    Report("error exec " + std::to_string(errno));
    return 127;
  }
  pid_t root = fork();
  if (root < 0) {
    Report("error exec " + std::to_string(errno));
    return 127;
  }
  if (root == 0) {
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    signal(SIGPIPE, SIG_DFL);
    Failure f{1, 0};
    // "0" moves the writer itself (Documentation/admin-guide/cgroup-v2.rst).
    if (write(procsFd, "0", 1) != 1) {
      f.err = errno;
    } else {
      if (newSession) setsid();
      // The report pipe, the cgroup files: none of ours reaches the program.
      syscall(SYS_close_range, 3, ~0U, 1U << 2 /* CLOSE_RANGE_CLOEXEC */);
      execvp(argv[i], argv + i);
      f = {2, errno};
    }
    ssize_t ignored = write(pipefd[1], &f, sizeof f);
    (void)ignored;
    _exit(127);
  }
  close(pipefd[1]);
  close(procsFd);
  Failure f{};
  if (read(pipefd[0], &f, sizeof f) == sizeof f) {
    waitpid(root, nullptr, 0);
    rmdir(dir.c_str());
    Report(std::string("error ") + (f.stage == 1 ? "cgroup " : "exec ") + std::to_string(f.err));
    return 127;
  }
  close(pipefd[0]);
  Report("pid " + std::to_string(root));

  int status = 0;
  bool rootDone = false;
  bool adopting = adoptPidfile != nullptr;
  std::map<pid_t, int> reaped;  // while adopting: the new root may exit before we know its pid
  for (;;) {
    struct pollfd fds[2] = {{sfd, POLLIN, 0}, {eventsFd, POLLPRI, 0}};
    // cgroup.events wakes poll with POLLPRI when it changes (kernfs_notify);
    // the timeout only guards against a missed wake-up.
    int n = poll(fds, rootDone ? 2 : 1, rootDone ? 100 : -1);
    if (n < 0 && errno != EINTR) break;
    struct signalfd_siginfo si;
    while (read(sfd, &si, sizeof si) == sizeof si) {
      int sig = static_cast<int>(si.ssi_signo);
      // The root is our child until we reap it, so its pid cannot name another process.
      if (sig != SIGCHLD && !rootDone) kill(root, sig);
    }
    for (;;) {
      int st;
      pid_t pid = waitpid(-1, &st, WNOHANG | __WALL);
      if (pid <= 0) break;
      if (adopting && pid != root) reaped[pid] = st;
      if (pid != root) continue;
      if (adopting) {
        adopting = false;
        Report("program-exit " + std::to_string(WIFEXITED(st) ? WEXITSTATUS(st) : -1) + " " +
               std::to_string(WIFSIGNALED(st) ? WTERMSIG(st) : 0));
        pid_t next = 0;
        if (WIFEXITED(st) && WEXITSTATUS(st) == 0) {
          FILE* f = fopen(adoptPidfile, "r");
          if (f) {
            if (fscanf(f, "%d", &next) != 1) next = 0;
            fclose(f);
          }
        }
        if (next > 0) {
          Report("adopted " + std::to_string(next));
          root = next;
          auto early = reaped.find(next);
          if (early == reaped.end()) continue;
          st = early->second;
        }
        reaped.clear();
      }
      status = st;
      rootDone = true;
      // The rest of the tree dies with its root, wherever it forked to.
      WriteFile(dir + "/cgroup.kill", "1");
    }
    if (rootDone && !Populated(eventsFd)) break;
  }
  // Members whose parent was not us may still be zombies of their own
  // (dead) parents on their way to us; reap what comes while removing.
  for (int tries = 0; tries < 200; tries++) {
    while (waitpid(-1, nullptr, WNOHANG | __WALL) > 0) {
    }
    if (rmdir(dir.c_str()) == 0 || errno == ENOENT) break;
    struct timespec ts = {0, 5 * 1000 * 1000};
    nanosleep(&ts, nullptr);
  }
  int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  Report("exit " + std::to_string(WIFEXITED(status) ? WEXITSTATUS(status) : -1) + " " +
         std::to_string(WIFSIGNALED(status) ? WTERMSIG(status) : 0));
  return code;
}
