#!/usr/bin/env python3
"""The seed's continuer, for the benchmark: `pstree_cont.py PID`.

Its algorithm as it was: the tree is read from /proc/PID/task/PID/children
(the leader's file only, so a child forked by another thread is missed), and
SIGCONT goes depth first, children before parents. It does not verify: it
exits once the signals are sent. Not a tool to use; a peer to time.
"""
import os
import signal
import sys


def children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except (FileNotFoundError, ProcessLookupError):
        return []


def cont(pid):
    for child in children(pid):
        cont(child)
    try:
        os.kill(pid, signal.SIGCONT)
    except ProcessLookupError:
        pass


if __name__ == "__main__":
    if len(sys.argv) != 2 or not sys.argv[1].isdigit():
        sys.exit(f"usage: {sys.argv[0]} PID")
    sys.setrecursionlimit(100000)
    cont(int(sys.argv[1]))
