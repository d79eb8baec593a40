/* treestate-fixture: builds a real process tree for tests and benchmarks.
 *
 *   treestate-fixture [--depth D] [--fanout F] [--threads T] [--fork-from-threads]
 *                     [--shm FILE] [--interval-ms N] [--storm] [--subreaper]
 *                     [--uid-depth D --uid U] [--memory-mb N] [--zombie] [--exit-on-cont]
 *                     [--vfork-hold] [--vfork-exec-on-cont [--vfork-child-stops]] [--sockets FILE]
 *                     [--tcp-pair] [--stop-child N]
 *   treestate-fixture --trace PID      (ptrace-stop PID and hold it until killed)
 *   treestate-fixture --swallow-stops PID  (trace PID and discard every stop signal it gets)
 *   treestate-fixture --mirror-stop MS  (a parent that stops itself MS ms after its child stopped, like su)
 *   treestate-fixture --mirror-stop-spin MS  (the same, busy on a core (R) for those MS ms)
 *
 * Levels 0..D, F children per process, T threads per process (main included).
 * With --fork-from-threads, children are forked by the non-leader threads, so
 * they appear only in those threads' /proc/PID/task/TID/children files.
 *
 * With --stop-child N, the root stops its N-th child itself (SIGSTOP, once
 * the child's heartbeat has started) and keeps it stopped: a process the
 * application stopped on purpose, as a supervisor holding a worker or a
 * shell's job control does.
 *
 * Heartbeats: FILE (created here, so it must not exist) is a shared mapping of a header and one slot per process,
 * in pre-order. Each process keeps its counter in private memory and copies
 * it into its slot every interval, so after a CRIU restore it goes on from
 * the value in its restored memory, not from whatever the file holds.
 *
 * Sockets (--sockets FILE): the root listens on TCP 127.0.0.1, binds a UDP
 * socket there and listens on an abstract unix socket, writes
 * "tcp PORT\nudp PORT\nunix NAME\n" to FILE, and serves between heartbeats:
 * a TCP or unix client gets one line "fixture PID BEAT PAIR\n", a UDP
 * datagram is echoed. With --tcp-pair it also holds an established loopback
 * connection to its own listener and sends a byte through it every beat;
 * PAIR counts the round trips that came back (what --tcp-established keeps).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <netinet/in.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAGIC 0x54524545u /* "TREE" */

struct header {
  uint32_t magic;
  uint32_t slots;
  uint64_t reserved;
};

struct slot {
  volatile int32_t pid;
  volatile int32_t depth;
  volatile uint64_t counter;
};

static int depth_max = 1, fanout = 2, threads = 1, fork_from_threads = 0;
static int storm = 0, subreaper = 0, uid_depth = -1, zombie = 0, exit_on_cont = 0, vfork_hold = 0, vfork_exec_on_cont = 0, vfork_child_stops = 0;
static long interval_ms = 5, memory_mb = 0;
static uid_t drop_uid = 0;
static const char *shm_path = NULL, *sockets_path = NULL;
static int tcp_pair = 0, stop_child = 0;
static struct slot *slots = NULL;

struct node {
  int depth;
  long index;
};

static void run_process(struct node self);

static long subtree_size(int depth) {
  long size = 0, level = 1;
  for (int d = depth; d <= depth_max; d++) {
    size += level;
    level *= fanout;
  }
  return size;
}

static void sleep_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
  }
}

static void on_cont(int sig) {
  (void)sig;
  _exit(0);
}

/* Forks child `j` of `parent`; returns in the parent only. */
static void fork_child(struct node parent, int j) {
  struct node child = {parent.depth + 1, parent.index + 1 + (long)j * subtree_size(parent.depth + 1)};
  pid_t pid = fork();
  if (pid < 0) {
    perror("treestate-fixture: fork");
    return;
  }
  if (pid == 0) {
    run_process(child);
    _exit(0);
  }
  if (parent.depth == 0 && j + 1 == stop_child) {
    /* Its heartbeat first: the harness waits for every process to beat once. */
    for (int tries = 0; slots && slots[child.index].counter == 0 && tries < 10000; tries++) sleep_ms(1);
    kill(pid, SIGSTOP);
  }
}

/* A short-lived child that sometimes leaves an orphan behind. */
static void storm_once(void) {
  pid_t pid = fork();
  if (pid == 0) {
    if (rand() & 1) {
      if (fork() == 0) {
        sleep_ms(1);
        _exit(0);
      }
    }
    _exit(0);
  }
}

struct thread_arg {
  struct node self;
  int thread_no; /* 1 .. threads-1 */
};

static void *thread_main(void *p) {
  struct thread_arg *arg = p;
  if (fork_from_threads && arg->self.depth < depth_max) {
    for (int j = arg->thread_no - 1; j < fanout; j += threads - 1) fork_child(arg->self, j);
  }
  for (;;) {
    if (storm && fork_from_threads) {
      storm_once();
      /* A breath between forks: each fork holds the process's mm lock and
       * glibc's fork lock, and a thread forking back to back can take them
       * again before the main thread, woken, gets them. The main thread,
       * which beats, then starved for up to a second after each continue
       * (5 s under load: a test's waitProgress failed). 50 us leaves a storm. */
      struct timespec breath = {0, 50 * 1000};
      nanosleep(&breath, NULL);
    } else {
      sleep_ms(1000); /* idle: only the main thread beats */
    }
  }
  return NULL;
}

/* Waits in vfork for a child that never execs: uninterruptible sleep (D)
 * until that child dies; no signal but SIGKILL reaches the parent meanwhile.
 * A function of its own, so the vfork child shares no caller's locals. */
static void __attribute__((noinline)) hold_in_vfork(void) {
  if (vfork() == 0) {
    for (;;) pause();
  }
}

static volatile sig_atomic_t vfork_child_continued = 0;
static void on_vfork_child_cont(int sig) {
  (void)sig;
  vfork_child_continued = 1;
}

/* Waits in vfork (D) for a child that execs `sleep 1000` only after a
 * SIGCONT, as a posix_spawn caught by a stop between its vfork and its exec
 * does once resumed. The child's handler is its own (vfork shares memory, not
 * signal actions); SIGCONT stays blocked but in sigsuspend, so that it cannot
 * land between the test and the wait. */
static void __attribute__((noinline)) vfork_then_exec_on_cont(void) {
  if (vfork() == 0) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_vfork_child_cont;
    sigaction(SIGCONT, &sa, NULL);
    sigset_t cont, old;
    sigemptyset(&cont);
    sigaddset(&cont, SIGCONT);
    sigprocmask(SIG_BLOCK, &cont, &old);
    sigdelset(&old, SIGCONT);
    /* The application's own stop of a child between vfork and exec. */
    if (vfork_child_stops) raise(SIGSTOP);
    while (!vfork_child_continued) sigsuspend(&old);
    execl("/bin/sleep", "sleep", "1000", (char *)NULL);
    _exit(127);
  }
}

struct sockets {
  int tcp, udp, unix_listener, pair_client, pair_server;
  uint64_t pair_trips;
};

static int bound_port(int fd) {
  struct sockaddr_in a;
  socklen_t len = sizeof a;
  return getsockname(fd, (struct sockaddr *)&a, &len) < 0 ? -1 : ntohs(a.sin_port);
}

static int loopback_socket(int type, struct sockaddr_in *a) {
  int fd = socket(AF_INET, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), one = 1;
  /* As servers do, so that a restored listener can bind again while the
   * killed original's connections still linger in the kernel. */
  if (fd >= 0 && type == SOCK_STREAM) setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  memset(a, 0, sizeof *a);
  a->sin_family = AF_INET;
  a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (fd < 0 || bind(fd, (struct sockaddr *)a, sizeof *a) < 0) return -1;
  socklen_t len = sizeof *a;
  getsockname(fd, (struct sockaddr *)a, &len);
  return fd;
}

static int open_sockets(struct sockets *s) {
  struct sockaddr_in a;
  struct sockaddr_un u = {.sun_family = AF_UNIX};
  char name[64];
  snprintf(name, sizeof name, "treestate-fixture-%d", (int)getpid());
  /* Abstract (no file to leave behind), padded with NULs to the full
   * address length: the way libuv, and so Node's net.connect, names one. */
  memcpy(u.sun_path + 1, name, strlen(name));
  socklen_t ulen = sizeof u;
  s->tcp = loopback_socket(SOCK_STREAM, &a);
  if (s->tcp < 0 || listen(s->tcp, 16) < 0) return -1;
  s->udp = loopback_socket(SOCK_DGRAM, &a);
  s->unix_listener = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (s->udp < 0 || s->unix_listener < 0 || bind(s->unix_listener, (struct sockaddr *)&u, ulen) < 0 ||
      listen(s->unix_listener, 16) < 0)
    return -1;
  s->pair_client = s->pair_server = -1;
  if (tcp_pair) {
    a.sin_port = htons((uint16_t)bound_port(s->tcp));
    s->pair_client = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s->pair_client < 0 || connect(s->pair_client, (struct sockaddr *)&a, sizeof a) < 0) return -1;
    for (int tries = 0; s->pair_server < 0 && tries < 1000; tries++) {
      s->pair_server = accept4(s->tcp, NULL, NULL, SOCK_CLOEXEC);
      if (s->pair_server < 0) sleep_ms(1);
    }
    if (s->pair_server < 0) return -1;
  }
  /* Written whole, then renamed: a reader never sees half of it. */
  char tmp[4096];
  snprintf(tmp, sizeof tmp, "%s.tmp", sockets_path);
  FILE *f = fopen(tmp, "wx");
  if (!f) return -1;
  fprintf(f, "tcp %d\nudp %d\nunix %s\n", bound_port(s->tcp), bound_port(s->udp), name);
  return fclose(f) < 0 ? -1 : rename(tmp, sockets_path);
}

/* One beat of serving: answer whoever is waiting, never block. */
static void serve(struct sockets *s, uint64_t beat) {
  char line[128], buf[512];
  int n = snprintf(line, sizeof line, "fixture %d %llu %llu\n", (int)getpid(), (unsigned long long)beat,
                   (unsigned long long)s->pair_trips);
  int listeners[2] = {s->tcp, s->unix_listener};
  for (int i = 0; i < 2; i++) {
    int c;
    while ((c = accept4(listeners[i], NULL, NULL, SOCK_CLOEXEC)) >= 0) {
      if (write(c, line, (size_t)n) < 0) perror("treestate-fixture: write");
      close(c);
    }
  }
  struct sockaddr_in from;
  socklen_t len = sizeof from;
  ssize_t got;
  while ((got = recvfrom(s->udp, buf, sizeof buf, 0, (struct sockaddr *)&from, &len)) > 0) {
    sendto(s->udp, buf, (size_t)got, 0, (struct sockaddr *)&from, len);
    len = sizeof from;
  }
  if (s->pair_client >= 0) {
    char byte = 'x';
    if (write(s->pair_client, &byte, 1) == 1 && read(s->pair_server, &byte, 1) == 1) s->pair_trips++;
  }
}

static void run_process(struct node self) {
  struct thread_arg *args = calloc((size_t)threads, sizeof *args);
  static struct sockets socks;
  uint64_t counter = 0;
  prctl(PR_SET_PDEATHSIG, 0);
  if (exit_on_cont && self.depth == depth_max) signal(SIGCONT, on_cont);
  int extra = threads - 1;
  int threaded_forks = fork_from_threads && extra > 0;
  if (!threaded_forks && self.depth < depth_max) {
    for (int j = 0; j < fanout; j++) fork_child(self, j);
  }
  /* Small stacks: a process may have thousands of threads (a hostile tree). */
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setstacksize(&attr, 64 * 1024);
  for (int t = 1; t <= extra && args; t++) {
    pthread_t th;
    args[t].self = self;
    args[t].thread_no = t;
    if (pthread_create(&th, &attr, thread_main, &args[t]) != 0) perror("treestate-fixture: pthread_create");
  }
  pthread_attr_destroy(&attr);
  if (zombie && self.depth == 0) {
    if (fork() == 0) _exit(0); /* never reaped: a zombie inside the tree */
  }
  if (uid_depth == self.depth) {
    if (setgid(drop_uid) < 0 || setuid(drop_uid) < 0) perror("treestate-fixture: setuid");
    /* A uid change clears the dumpable flag, which hides a process from its
     * new owner too under /proc's hidepid: keep it that owner's to read. */
    prctl(PR_SET_DUMPABLE, 1);
  }
  if (memory_mb > 0 && self.depth == 0) {
    size_t size = (size_t)memory_mb << 20;
    unsigned char *mem = malloc(size);
    for (size_t i = 0; mem && i < size; i += 4096) mem[i] = (unsigned char)(i >> 12 | 1);
  }
  struct slot *mine = slots ? &slots[self.index] : NULL;
  if (mine) {
    mine->depth = self.depth;
    mine->pid = getpid();
  }
  if (sockets_path && self.depth == 0 && open_sockets(&socks) < 0) {
    perror("treestate-fixture: sockets");
    _exit(1);
  }
  if (vfork_hold && self.depth == 0) {
    if (mine) mine->counter = ++counter;
    hold_in_vfork();
  }
  if (vfork_exec_on_cont && self.depth == 0) {
    if (mine) mine->counter = ++counter;
    vfork_then_exec_on_cont();
  }
  srand((unsigned)getpid());
  for (;;) {
    counter++;
    if (mine) mine->counter = counter;
    if (storm) {
      storm_once();
      while (waitpid(-1, NULL, WNOHANG | __WALL) > 0) {
      }
    } else {
      if (subreaper) while (waitpid(-1, NULL, WNOHANG | __WALL) > 0) {
        }
      if (sockets_path && self.depth == 0) serve(&socks, counter);
      sleep_ms(interval_ms);
    }
  }
}

static int trace(pid_t pid) {
  if (ptrace(PTRACE_SEIZE, pid, NULL, NULL) < 0 || ptrace(PTRACE_INTERRUPT, pid, NULL, NULL) < 0) {
    perror("treestate-fixture: ptrace");
    return 1;
  }
  int status;
  waitpid(pid, &status, __WALL);
  printf("tracing %d\n", pid);
  fflush(stdout);
  for (;;) pause();
}

/* A process that cannot be stopped: its tracer discards every stop signal at
 * signal-delivery-stop, so it never enters group-stop. What a tree that
 * never settles looks like, deterministically. */
static int swallow_stops(pid_t pid) {
  if (ptrace(PTRACE_SEIZE, pid, NULL, NULL) < 0) {
    perror("treestate-fixture: ptrace");
    return 1;
  }
  printf("tracing %d\n", pid);
  fflush(stdout);
  for (;;) {
    int status;
    if (waitpid(pid, &status, __WALL) < 0) {
      if (errno == EINTR) continue;
      return 0;
    }
    if (!WIFSTOPPED(status)) return 0;
    int sig = WSTOPSIG(status);
    int stop = sig == SIGSTOP || sig == SIGTSTP || sig == SIGTTIN || sig == SIGTTOU;
    long deliver = (status >> 16) == 0 && !stop ? sig : 0;
    ptrace(PTRACE_CONT, pid, NULL, (void *)deliver);
  }
}

/* What su and runuser do (util-linux su-common.c): waitpid(WUNTRACED) on
 * their child and, when it was stopped, stop themselves, then SIGCONT the
 * child once resumed. When a tree stop reaches that parent after the child's
 * stop became visible to it, the reaction is already on its way when the tree
 * is continued. This parent loses that race every time: it learns of the
 * child's stop from a blocked SIGCHLD (still queued while the parent itself
 * is stopped), and reacts MS ms after it is resumed: asleep meanwhile, or
 * with `spin`, running (R), as a parent slow to get to its reaction is. */
static void spin_ms(long ms) {
  struct timespec start, now;
  clock_gettime(CLOCK_MONOTONIC, &start);
  do clock_gettime(CLOCK_MONOTONIC, &now);
  while ((now.tv_sec - start.tv_sec) * 1000 + (now.tv_nsec - start.tv_nsec) / 1000000 < ms);
}

static int mirror_stop(long delay_ms, int spin) {
  sigset_t chld;
  sigemptyset(&chld);
  sigaddset(&chld, SIGCHLD);
  sigprocmask(SIG_BLOCK, &chld, NULL);
  pid_t child = fork();
  if (child < 0) {
    perror("treestate-fixture: fork");
    return 1;
  }
  if (child == 0) {
    sigprocmask(SIG_UNBLOCK, &chld, NULL);
    for (;;) pause();
  }
  for (;;) {
    siginfo_t info;
    if (sigwaitinfo(&chld, &info) < 0) continue;
    if (info.si_code == CLD_STOPPED) {
      if (spin) spin_ms(delay_ms);
      else sleep_ms(delay_ms);
      kill(getpid(), SIGSTOP);
      kill(child, SIGCONT);
    } else if (info.si_code == CLD_EXITED || info.si_code == CLD_KILLED || info.si_code == CLD_DUMPED) {
      waitpid(child, NULL, 0);
      return 0;
    }
  }
}

int main(int argc, char **argv) {
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    const char *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(a, "--depth") && v) depth_max = atoi(argv[++i]);
    else if (!strcmp(a, "--fanout") && v) fanout = atoi(argv[++i]);
    else if (!strcmp(a, "--threads") && v) threads = atoi(argv[++i]);
    else if (!strcmp(a, "--fork-from-threads")) fork_from_threads = 1;
    else if (!strcmp(a, "--shm") && v) shm_path = argv[++i];
    else if (!strcmp(a, "--interval-ms") && v) interval_ms = atol(argv[++i]);
    else if (!strcmp(a, "--storm")) storm = subreaper = 1;
    else if (!strcmp(a, "--subreaper")) subreaper = 1;
    else if (!strcmp(a, "--uid-depth") && v) uid_depth = atoi(argv[++i]);
    else if (!strcmp(a, "--uid") && v) drop_uid = (uid_t)atoi(argv[++i]);
    else if (!strcmp(a, "--memory-mb") && v) memory_mb = atol(argv[++i]);
    else if (!strcmp(a, "--zombie")) zombie = 1;
    else if (!strcmp(a, "--exit-on-cont")) exit_on_cont = 1;
    else if (!strcmp(a, "--vfork-hold")) vfork_hold = 1;
    else if (!strcmp(a, "--vfork-exec-on-cont")) vfork_exec_on_cont = 1;
    else if (!strcmp(a, "--vfork-child-stops")) vfork_child_stops = 1;
    else if (!strcmp(a, "--sockets") && v) sockets_path = argv[++i];
    else if (!strcmp(a, "--tcp-pair")) tcp_pair = 1;
    else if (!strcmp(a, "--stop-child") && v) stop_child = atoi(argv[++i]);
    else if (!strcmp(a, "--trace") && v) return trace((pid_t)atoi(argv[++i]));
    else if (!strcmp(a, "--swallow-stops") && v) return swallow_stops((pid_t)atoi(argv[++i]));
    else if (!strcmp(a, "--mirror-stop") && v) return mirror_stop(atol(argv[++i]), 0);
    else if (!strcmp(a, "--mirror-stop-spin") && v) return mirror_stop(atol(argv[++i]), 1);
    else {
      fprintf(stderr, "treestate-fixture: unknown argument %s\n", a);
      return 2;
    }
  }
  if (depth_max < 0 || fanout < 0 || threads < 1 || threads > 4096) {
    fprintf(stderr, "treestate-fixture: bad shape\n");
    return 2;
  }
  if (shm_path) {
    long count = subtree_size(0);
    size_t size = sizeof(struct header) + (size_t)count * sizeof(struct slot);
    /* A new file, never one found at the name (nor a symlink planted there):
     * the caller gives a fresh name in a private directory. */
    int fd = open(shm_path, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0 || ftruncate(fd, (off_t)size) < 0) {
      perror("treestate-fixture: shm");
      return 1;
    }
    struct header *h = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (h == MAP_FAILED) {
      perror("treestate-fixture: mmap");
      return 1;
    }
    h->magic = MAGIC;
    h->slots = (uint32_t)count;
    slots = (struct slot *)(h + 1);
  }
  if (subreaper) prctl(PR_SET_CHILD_SUBREAPER, 1);
  struct node root = {0, 0};
  run_process(root);
  return 0;
}
