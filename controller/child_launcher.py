"""Start a child process that dies with this one (Linux), without Python code between fork and
exec: ``with_parent_death(argv)`` is an argv that runs a fresh interpreter which sets
PR_SET_PDEATHSIG (SIGKILL when the parent dies) and then execs ``argv``.

A ``preexec_fn`` would do the same, but Python code between fork and exec in a process running
gRPC's threads can crash the child (gRPC's fork handlers abort on a closed epoll fd). If the
parent died before prctl took effect, the parent is already someone else: the child gives up
(exit 75)."""

from __future__ import annotations

import os
import sys

_LAUNCHER = """
import ctypes, os, signal, sys
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
except (OSError, AttributeError):
    pass
if os.getppid() != int(sys.argv[1]):
    sys.exit(75)
os.execv(sys.argv[2], sys.argv[2:])
"""


def with_parent_death(argv: list[str]) -> list[str]:
    """``argv`` (its first item an executable's path) behind the launcher."""
    return [sys.executable, "-c", _LAUNCHER, str(os.getpid()), *argv]
