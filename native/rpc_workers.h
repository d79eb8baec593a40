// CRIU's RPC transport for JS (native/rpc.h): socket pair, send, receive, shutdown.
#pragma once

#include <napi.h>

namespace treestate {

Napi::Value SeqpacketPairSync(const Napi::CallbackInfo& info);
Napi::Value SendMessageAsync(const Napi::CallbackInfo& info);
Napi::Value ReceiveMessageAsync(const Napi::CallbackInfo& info);
Napi::Value ShutdownSocket(const Napi::CallbackInfo& info);

}  // namespace treestate
