{
  "variables": {
    "treestate_bench%": 0
  },
  "targets": [
    {
      "target_name": "treestate",
      "sources": [
        "native/addon.cc",
        "native/cgroup.cc",
        "native/errors.cc",
        "native/inspect.cc",
        "native/proc.cc",
        "native/rpc.cc",
        "native/rpc_workers.cc",
        "native/signal.cc",
        "native/walk.cc",
        "native/workers.cc"
      ],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NAPI_DISABLE_CPP_EXCEPTIONS"],
      "cflags_cc": ["-std=c++17", "-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"]
    },
    {
      "target_name": "treestate-reaper",
      "type": "executable",
      "sources": ["native/tools/reaper.cc", "native/proc.cc", "native/ptrace.cc", "native/rpc.cc"],
      "cflags_cc": ["-std=c++17", "-O2", "-Wall", "-Wextra"]
    },
    {
      "target_name": "treestate-run",
      "type": "executable",
      "sources": ["native/tools/run.cc"],
      "cflags_cc": ["-std=c++17", "-O2", "-Wall", "-Wextra"]
    },
    {
      "target_name": "treestate-fixture",
      "type": "executable",
      "sources": ["native/tools/fixture.c"],
      "cflags": ["-O2", "-Wall", "-pthread"],
      "ldflags": ["-pthread"]
    }
  ],
  "conditions": [
    ["treestate_bench==1", {
      "targets": [
        {
          "target_name": "treestate-c-floor",
          "type": "executable",
          "sources": ["scripts/bench/c-floor.c"],
          "cflags": ["-O2", "-Wall", "-Wextra"]
        }
      ]
    }]
  ]
}
