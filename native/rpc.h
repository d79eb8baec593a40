// Whole messages over an AF_UNIX SOCK_SEQPACKET socket, with file
// descriptors passed as SCM_RIGHTS: the transport of CRIU's RPC (`criu swrk
// FD`), which Node's `net` cannot speak. Nothing here knows CRIU's messages.
#pragma once

#include <string>
#include <vector>

namespace treestate {

// Both ends close-on-exec: the end a child should own is handed over by
// dup2 (libuv's stdio, the reaper's spawn), which clears the flag on the
// copy only, so no other program started meanwhile inherits either end.
// Each returns 0 or an errno value; nothing here knows N-API (the reaper links it too).
int SeqpacketPair(int fds[2]);

struct Message {
  std::string data;
  std::vector<int> fds;  // received close-on-exec; the caller owns them
  bool eof = false;      // the peer closed its end (a SEQPACKET message is never empty here)
};

int SendMessage(int sock, const std::string& data, const std::vector<int>& fds);
// Blocks until one whole message arrives, whatever its size; `syscall` names the call that failed.
int ReceiveMessage(int sock, Message* out, const char** syscall);

}  // namespace treestate
