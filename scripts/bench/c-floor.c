/*
 * treestate-c-floor: the cost floor for the benchmark (npm run bench).
 *
 *   treestate-c-floor snapshot|status|stop|cont ROOT
 *
 * The least a program can do and still do treestate's work: walk the tree
 * from ROOT through every thread's /proc/PID/task/TID/children file, read
 * every thread's state, signal, and verify by walking again until every live
 * thread is in group-stop (stop) or none is (cont). Same order as treestate
 * (stop parents first, cont children first), same pause between passes.
 * It skips the reads treestate skips: the first pass of a stop signals a
 * process whose leader is running or asleep without reading its other
 * threads' states, and the pass after a continue's SIGCONTs does not re-read
 * the other threads of the processes it continued (see native/walk.h).
 * What it leaves out, on purpose: pidfds and identity checks (it signals with
 * kill(2)), tracer lookups, error reporting, and any result for a caller.
 *
 * Prints one JSON line: {"ms":..,"cpuMs":..,"passes":..,"processes":..,"threads":..,"state":".."}
 * where ms is measured inside the program (no exec, no process start).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

enum { OP_SNAPSHOT, OP_STATUS, OP_STOP, OP_CONT };

static int *stack, *order;
static size_t cap;

/* The processes the last SIGCONT pass signalled (none of their threads traced), sorted. */
static int *resumed;
static size_t nresumed;

static int cmp_int(const void *a, const void *b) { return *(const int *)a - *(const int *)b; }

static int was_resumed(int pid) { return resumed && bsearch(&pid, resumed, nresumed, sizeof *resumed, cmp_int) != NULL; }

static double clock_ms(clockid_t clock) {
  struct timespec ts;
  clock_gettime(clock, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static double now_ms(void) { return clock_ms(CLOCK_MONOTONIC); }

static void grow(size_t need) {
  if (need <= cap) return;
  while (cap < need) cap = cap ? cap * 2 : 4096;
  stack = realloc(stack, cap * sizeof *stack);
  order = realloc(order, cap * sizeof *order);
  if (!stack || !order) abort();
}

static ssize_t read_file(const char *path, char *buf, size_t size) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  ssize_t n = read(fd, buf, size - 1);
  close(fd);
  if (n < 0) return -1;
  buf[n] = 0;
  return n;
}

/* State letter and num_threads from a stat line; 0 when gone. */
static char stat_state(const char *path, long *threads) {
  char buf[1024];
  if (read_file(path, buf, sizeof buf) <= 0) return 0;
  char *p = strrchr(buf, ')');
  if (!p || p[1] != ' ') return 0;
  char state = p[2];
  if (threads) {
    /* num_threads is field 20; the state is field 3. */
    p += 3;
    for (int field = 4; field < 20 && p; field++) p = strchr(p + 1, ' ');
    *threads = p ? atol(p + 1) : 1;
  }
  return state;
}

static int live(char s) { return s && s != 'Z' && s != 'X' && s != 'x'; }

struct pass {
  size_t processes, threads, stopped, notStopped, signalled;
};

/* Appends the pids in a children file to the stack. */
static size_t push_children(const char *path, size_t top) {
  char buf[65536];
  if (read_file(path, buf, sizeof buf) <= 0) return top;
  for (char *p = buf; *p;) {
    char *end;
    long v = strtol(p, &end, 10);
    if (end == p) break;
    grow(top + 1);
    stack[top++] = (int)v;
    p = end;
    while (*p == ' ') p++;
  }
  return top;
}

/*
 * One pass. sig != 0: signal the selected processes, parents first (in the
 * walk) or children first (after it, in reverse visiting order).
 * select: 'n' not-stopped, 's' stopped, 'a' all.
 * skip: 'l' a leader in R or S decides alone (the first pass of a stop);
 * 'r' the processes in `resumed` have only their leader's state read.
 * remember: keep what a SIGCONT pass signalled in `resumed`.
 */
static void walk(int root, int sig, char select, int childrenFirst, char skip, int remember, struct pass *out) {
  memset(out, 0, sizeof *out);
  size_t top = 0, visited = 0;
  grow(1);
  stack[top++] = root;
  char path[320];
  while (top > 0) {
    int pid = stack[--top];
    long nthreads = 1;
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    char leader = stat_state(path, &nthreads);
    if (!leader) continue;
    out->processes++;
    int anyStopped = 0, anyNotStopped = 0, anyLive = 0, anyTraced = 0;
    int leaderOnly = (skip == 'l' && (leader == 'R' || leader == 'S')) || (skip == 'r' && was_resumed(pid));
    size_t first = top;
    if (nthreads <= 1) {
      out->threads++;
      if (live(leader)) {
        anyLive = 1;
        if (leader == 'T') anyStopped = 1; else anyNotStopped = 1;
      }
      snprintf(path, sizeof path, "/proc/%d/task/%d/children", pid, pid);
      top = push_children(path, top);
    } else {
      snprintf(path, sizeof path, "/proc/%d/task", pid);
      DIR *d = opendir(path);
      if (!d) continue;
      struct dirent *e;
      while ((e = readdir(d))) {
        if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
        char s = leader;
        if (!leaderOnly || atoi(e->d_name) != pid) {
          snprintf(path, sizeof path, "/proc/%d/task/%s/stat", pid, e->d_name);
          s = stat_state(path, NULL);
        }
        if (!s) continue;
        out->threads++;
        if (live(s)) {
          anyLive = 1;
          if (s == 'T') anyStopped = 1; else anyNotStopped = 1;
          if (s == 't') anyTraced = 1;
        }
        snprintf(path, sizeof path, "/proc/%d/task/%s/children", pid, e->d_name);
        top = push_children(path, top);
      }
      closedir(d);
    }
    if (anyStopped) out->stopped++;
    if (anyNotStopped) out->notStopped++;
    int selected = select == 'a' ? anyLive : select == 's' ? anyStopped : anyNotStopped;
    if (sig && selected) {
      if (childrenFirst) {
        grow(visited + 1);
        /* A traced process is kept negated: signalled, never taken as resumed. */
        order[visited++] = anyTraced ? -pid : pid;
      } else if (kill(pid, sig) == 0) {
        out->signalled++;
      }
    }
    /* Visit children in file order, as treestate does: reverse what was pushed. */
    for (size_t i = first, j = top; j > i + 1; i++, j--) {
      int t = stack[i];
      stack[i] = stack[j - 1];
      stack[j - 1] = t;
    }
  }
  /* Reverse pre-order: every child comes before its parent. */
  if (remember) {
    free(resumed);
    resumed = malloc((visited + 1) * sizeof *resumed);
    nresumed = 0;
  }
  while (visited > 0) {
    int pid = order[--visited];
    int target = pid < 0 ? -pid : pid;
    if (kill(target, sig) == 0) {
      out->signalled++;
      if (remember && pid > 0) resumed[nresumed++] = pid;
    }
  }
  if (remember) qsort(resumed, nresumed, sizeof *resumed, cmp_int);
}

static void pause_ms(int ms) {
  if (ms <= 0) {
    sched_yield();
    return;
  }
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
  }
}

/* treestate's backoff: the first two verification passes at once, then 1, 2, 4 .. 16 ms. */
static int backoff(int quiet) {
  if (quiet < 2) return 0;
  int ms = 1 << (quiet - 2);
  return ms > 16 ? 16 : ms;
}

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: %s snapshot|status|stop|cont ROOT\n", argv[0]);
    return 2;
  }
  int op = !strcmp(argv[1], "snapshot") ? OP_SNAPSHOT
           : !strcmp(argv[1], "status") ? OP_STATUS
           : !strcmp(argv[1], "stop")   ? OP_STOP
           : !strcmp(argv[1], "cont")   ? OP_CONT
                                        : -1;
  int root = atoi(argv[2]);
  if (op < 0 || root <= 1 || root == getpid()) {
    fprintf(stderr, "%s: bad operation or pid\n", argv[0]);
    return 2;
  }
  grow(4096);
  struct pass p;
  int passes = 0;
  const char *state = "?";
  double c0 = clock_ms(CLOCK_PROCESS_CPUTIME_ID);
  double t0 = now_ms(), deadline = t0 + 10000;
  if (op == OP_SNAPSHOT || op == OP_STATUS) {
    walk(root, 0, 'a', 0, 0, 0, &p);
    passes = 1;
    state = p.notStopped == 0 && p.stopped > 0 ? "stopped" : p.stopped == 0 ? "running" : "mixed";
  } else {
    for (int quiet = 0;; quiet++) {
      if (op == OP_STOP) walk(root, SIGSTOP, 'n', 0, passes == 0 ? 'l' : 0, 0, &p);
      else walk(root, SIGCONT, passes == 0 ? 'a' : 's', 1, passes == 1 ? 'r' : 0, passes == 0, &p);
      passes++;
      if (p.processes == 0) {
        state = "gone";
        break;
      }
      if (op == OP_STOP && p.signalled == 0 && p.notStopped == 0) {
        state = "stopped";
        break;
      }
      if (op == OP_CONT && p.stopped == 0) {
        state = "running";
        break;
      }
      if (now_ms() > deadline) {
        state = "timeout";
        break;
      }
      pause_ms(backoff(quiet));
    }
  }
  double ms = now_ms() - t0;
  double cpu = clock_ms(CLOCK_PROCESS_CPUTIME_ID) - c0;
  printf("{\"ms\":%.4f,\"cpuMs\":%.4f,\"passes\":%d,\"processes\":%zu,\"threads\":%zu,\"state\":\"%s\"}\n", ms, cpu, passes,
         p.processes, p.threads, state);
  return strcmp(state, "timeout") == 0 || strcmp(state, "gone") == 0;
}
