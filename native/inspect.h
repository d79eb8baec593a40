// What a dump will meet, read for `preflight`: each process's session,
// process group and controlling terminal, the sockets it holds and who traces
// it, and the host's unix and TCP socket tables (sock_diag). Plain reads, no
// policy: src/criu/preflight.ts decides what blocks a dump.
#pragma once

#include <napi.h>
#include <stdint.h>
#include <sys/types.h>

#include <string>
#include <vector>

namespace treestate {

struct ProcessFacts {
  pid_t pid = 0;
  pid_t pgid = 0;
  pid_t sid = 0;
  int ttyNr = 0;
  // Its session / process group is led from outside its own pid namespace
  // (NSsid / NSpgid end in 0): criu cannot dump it, even with --shell-job.
  bool sidOutsideNs = false;
  bool pgidOutsideNs = false;
  pid_t tracer = 0;               // of any thread; 0 when none is traced
  std::vector<uint64_t> sockets;  // inodes of the sockets it holds
  int err = 0;                    // errno when it could not be read (ESRCH: gone)
};

struct UnixSocketFacts {
  uint64_t inode = 0;
  uint64_t peer = 0;  // 0: not connected
  std::string path;   // "" unnamed, "@name" abstract, else the bound path
};

struct TcpSocketFacts {
  uint64_t inode = 0;
  int state = 0;  // TCP_ESTABLISHED = 1 … TCP_LISTEN = 10 (include/net/tcp_states.h)
  std::string local, remote;
};

struct Inspection {
  std::vector<ProcessFacts> processes;
  std::vector<UnixSocketFacts> unix;
  std::vector<TcpSocketFacts> tcp;
  int err = 0;  // errno of the socket tables (sock_diag)
};

Inspection Inspect(const std::vector<pid_t>& pids);

// Every process of the host holding one of `inodes`: pairs (inode, pid).
std::vector<std::pair<uint64_t, pid_t>> SocketHolders(const std::vector<uint64_t>& inodes);

Napi::Value InspectAsync(const Napi::CallbackInfo& info);
Napi::Value SocketHoldersAsync(const Napi::CallbackInfo& info);

}  // namespace treestate
