#include "rpc.h"

#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <utility>

namespace treestate {

namespace {

// SCM_RIGHTS carries at most SCM_MAX_FD (253) descriptors per message.
constexpr size_t kMaxFds = 253;

}  // namespace

int SeqpacketPair(int fds[2]) {
  return socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, fds) < 0 ? errno : 0;
}

int SendMessage(int sock, const std::string& data, const std::vector<int>& fds) {
  if (fds.size() > kMaxFds) return EINVAL;
  struct iovec iov = {const_cast<char*>(data.data()), data.size()};
  struct msghdr msg = {};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  std::vector<char> control;
  if (!fds.empty()) {
    control.assign(CMSG_SPACE(sizeof(int) * fds.size()), 0);
    msg.msg_control = control.data();
    msg.msg_controllen = control.size();
    struct cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
  }
  for (;;) {
    ssize_t n = sendmsg(sock, &msg, MSG_NOSIGNAL);
    if (n >= 0) return 0;
    if (errno != EINTR) return errno;
  }
}

int ReceiveMessage(int sock, Message* out, const char** syscall) {
  // CRIU sizes its own reads the same way (cr-service.c, recv_criu_msg): a
  // peek with MSG_TRUNC returns the length of the whole next message without
  // consuming it or the descriptors that travel with it.
  ssize_t len;
  do {
    len = recv(sock, nullptr, 0, MSG_PEEK | MSG_TRUNC);
  } while (len < 0 && errno == EINTR);
  if (len < 0) {
    *syscall = "recv";
    return errno;
  }
  out->data.assign(static_cast<size_t>(len), '\0');
  struct iovec iov = {out->data.empty() ? nullptr : &out->data[0], out->data.size()};
  std::vector<char> control(CMSG_SPACE(sizeof(int) * kMaxFds), 0);
  struct msghdr msg = {};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control.data();
  msg.msg_controllen = control.size();
  ssize_t n;
  do {
    n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    *syscall = "recvmsg";
    return errno;
  }
  for (struct cmsghdr* c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    const unsigned char* p = CMSG_DATA(c);
    for (size_t i = 0; i < count; i++) {
      int fd;
      memcpy(&fd, p + i * sizeof(int), sizeof(int));
      out->fds.push_back(fd);
    }
  }
  out->data.resize(static_cast<size_t>(n));
  out->eof = n == 0 && out->fds.empty();
  return 0;
}

}  // namespace treestate
