"""A child process that dies with its parent: the one home of ``PR_SET_PDEATHSIG``.

``die_with_parent(signum)`` returns a ``preexec_fn`` for ``subprocess.Popen``: in the forked
child, before ``exec``, it asks the kernel to send ``signum`` when the parent dies
(prctl(2), ``PR_SET_PDEATHSIG``), so an engine, a control-plane component or a test pod's
process does not outlive whoever started it, even when that is killed with SIGKILL. If the
parent already died between the fork and the prctl call (the child then has another parent
and no signal is coming), the child exits at once instead.

The kernel ties the signal to the *thread* that forked the child: it fires when that thread
exits, so spawn from a thread that lives as long as the child should (the main thread, or a
thread that owns the child). Linux only; elsewhere the hook does nothing.
"""

from __future__ import annotations

import ctypes
import os
import signal
from collections.abc import Callable

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _resolve_prctl() -> Callable[..., int] | None:
    try:
        prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux: no prctl in the C library
        return None
    return prctl


# Resolved here, at import time, before any fork. A child forked from a multithreaded parent
# may only make async-signal-safe calls until it execs (fork(2), signal-safety(7)); looking a
# symbol up (dlopen/dlsym, which ctypes does on attribute access) can take locks another
# thread held at the fork and deadlock. The hook below only calls the resolved function.
_PRCTL = _resolve_prctl()


def die_with_parent(signum: int = signal.SIGKILL) -> Callable[[], None]:
    """A ``preexec_fn`` that makes the child get ``signum`` when this process dies."""
    parent = os.getpid()  # taken now, in the parent, before the fork

    def hook() -> None:
        if _PRCTL is None:
            return
        _PRCTL(PR_SET_PDEATHSIG, signum, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return hook
