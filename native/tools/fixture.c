/* treestate-fixture: builds a real process tree for tests and benchmarks.
 *
 *   treestate-fixture [--depth D] [--fanout F] [--threads T] [--fork-from-threads]
 *                     [--shm FILE] [--interval-ms N] [--storm] [--subreaper]
 *                     [--uid-depth D --uid U] [--memory-mb N] [--zombie] [--exit-on-cont]
 *                     [--vfork-hold]
 *   treestate-fixture --trace PID      (ptrace-stop PID and hold it until killed)
 *   treestate-fixture --swallow-stops PID  (trace PID and discard every stop signal it gets)
 *
 * Levels 0..D, F children per process, T threads per process (main included).
 * With --fork-from-threads, children are forked by the non-leader threads, so
 * they appear only in those threads' /proc/PID/task/TID/children files.
 *
 * Heartbeats: FILE is a shared mapping of a header and one slot per process,
 * in pre-order. Each process keeps its counter in private memory and copies
 * it into its slot every interval, so after a CRIU restore it goes on from
 * the value in its restored memory, not from whatever the file holds.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
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
static int storm = 0, subreaper = 0, uid_depth = -1, zombie = 0, exit_on_cont = 0, vfork_hold = 0;
static long interval_ms = 5, memory_mb = 0;
static uid_t drop_uid = 0;
static const char *shm_path = NULL;
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
    if (storm && fork_from_threads) storm_once();
    else sleep_ms(1000); /* idle: only the main thread beats */
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

static void run_process(struct node self) {
  struct thread_arg *args = calloc((size_t)threads, sizeof *args);
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
  if (vfork_hold && self.depth == 0) {
    if (mine) mine->counter = ++counter;
    hold_in_vfork();
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
    else if (!strcmp(a, "--trace") && v) return trace((pid_t)atoi(argv[++i]));
    else if (!strcmp(a, "--swallow-stops") && v) return swallow_stops((pid_t)atoi(argv[++i]));
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
    int fd = open(shm_path, O_RDWR | O_CREAT, 0644);
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
