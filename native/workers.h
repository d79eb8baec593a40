// One Napi::AsyncWorker per tree operation: Execute() works on plain structs
// off the JS thread, OnOK() turns them into JS values.
#pragma once

#include <napi.h>

namespace treestate {

Napi::Value WalkAsync(const Napi::CallbackInfo& info);
// Files kept open between the passes of one operation (see WalkCache).
Napi::Value CreateWalkCache(const Napi::CallbackInfo& info);
Napi::Value ReleaseWalkCache(const Napi::CallbackInfo& info);
Napi::Value SignalListAsync(const Napi::CallbackInfo& info);
Napi::Value LeaderStatesAsync(const Napi::CallbackInfo& info);
Napi::Value SessionMembersAsync(const Napi::CallbackInfo& info);
Napi::Value WaitExitAsync(const Napi::CallbackInfo& info);

}  // namespace treestate
