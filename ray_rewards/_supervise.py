"""Run the command line in a child process whose whole process tree dies with it.

A command that starts a local Ray (``ray-rewards relabel``, ``train``, ``pipeline``)
spawns Ray's own processes. Killed with SIGKILL, it runs nothing of its own, and
some of Ray's processes (its dashboard and runtime-env agents) outlive it. So on
Linux the process the user starts only supervises: the command runs in a forked
child that (1) receives SIGTERM the moment the supervisor dies (``PR_SET_PDEATHSIG``),
(2) adopts every orphaned descendant (``PR_SET_CHILD_SUBREAPER``), and on SIGTERM
stops its whole process tree before it exits. Elsewhere the command runs directly.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import signal
import sys
import time
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36


def _prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (from ``/proc``), children before grandchildren."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(0), []):
            out.append(child)
            todo.append(child)
    return out


def stop_tree(pid: int, grace_s: float = 3.0) -> None:
    """SIGTERM every descendant of ``pid``, then SIGKILL what is left after ``grace_s``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        tree = descendants(pid)
        for child in tree:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(child, sig)
        deadline = time.monotonic() + grace_s
        while tree and time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                while os.waitpid(-1, os.WNOHANG)[0]:
                    pass  # reap adopted orphans so they leave /proc
            tree = [p for p in tree if os.path.exists(f"/proc/{p}")]
            time.sleep(0.05)


def run_supervised(command: Callable[[], object]) -> None:
    """Run ``command`` (which ends with ``sys.exit``, as a click main does) so that its
    process tree never outlives this process; exit with its exit code.
    """
    prctl = _prctl()
    if prctl is None:
        command()
        return
    supervisor = os.getpid()
    sys.stdout.flush()
    sys.stderr.flush()
    child = os.fork()
    if child == 0:
        _run_child(command, prctl, supervisor)
    # Ctrl-C reaches the child too (same process group): let it clean up and report.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: os.kill(child, signal.SIGTERM))
    _, status = os.waitpid(child, 0)
    code = os.waitstatus_to_exitcode(status)
    sys.exit(128 - code if code < 0 else code)  # killed by signal N: 128 + N, as a shell


def _run_child(command: Callable[[], object], prctl: Callable[..., int], parent: int) -> None:
    prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    prctl(_PR_SET_CHILD_SUBREAPER, 1)

    def on_term(*_: object) -> None:
        # Ray's processes first (a blocked call into Ray then returns), then unwind the
        # command, so that its cleanup (temporary folders, ray.shutdown) runs.
        stop_tree(os.getpid())
        raise SystemExit(128 + signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_term)
    if os.getppid() != parent:  # the supervisor died before the signal was set up
        on_term()
    # Runs last at exit (atexit is last-in, first-out): after Ray's own shutdown, it
    # stops whatever of the tree is still there.
    atexit.register(stop_tree, os.getpid(), 1.0)
    command()
    sys.exit(0)


__all__ = ["descendants", "run_supervised", "stop_tree"]
