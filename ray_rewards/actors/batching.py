"""Who runs a served net, when: coalesced forward passes and every other job on it.

Requests from any thread (Ray's event loop, the same-node channel's connection
threads) go into one FIFO; the net thread takes the oldest request together with
every queued request that can share its forward pass (same keyword arguments,
trailing shapes and dtypes, at most ``max_batch_size`` rows), runs the pass and
answers each request with exactly its own rows. The window adapts by itself: an idle
net starts a pass at once (after ``max_wait_s`` for company, 0 by default), and
whatever arrives while a pass runs goes into the next one. Other jobs (statistics,
saves, loads) are queued in the same FIFO, and only one thread at a time runs
passes or jobs, so the net needs no lock (a forward function may still split one
frozen-statistics pass across helper threads). No Ray in here.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ray_rewards.actors.wire import batch_rows

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]
Forward = Callable[[Arrays, dict[str, Any]], np.ndarray]
Done = Callable[[np.ndarray | None, BaseException | None], None]
"""How a request is answered, on the net thread: ``done(rewards, None)`` or
``done(None, error)``; it must not block (it sends or hands over, nothing more)."""


class RewardActorError(RuntimeError):
    """A request to a reward actor could not be answered (actor gone, bad answer)."""


def join_rows(parts: list[np.ndarray | None]) -> np.ndarray | None:
    """Rows of all requests in one writable array (arrays from Ray's object store or a
    received buffer are read-only, which torch warns about).
    """
    if parts[0] is None:
        return None
    if len(parts) == 1:
        return parts[0] if parts[0].flags.writeable else parts[0].copy()
    return np.concatenate(parts, axis=0)


@dataclass(eq=False)
class _Request:
    arrays: Arrays
    kwargs: dict[str, Any]
    key: tuple
    rows: int
    arrived: float
    done: Done


@dataclass(eq=False)
class _Job:
    fn: Callable[..., Any]
    args: tuple
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)


class NetThread:
    """Runs ``forward(arrays, kwargs) -> rewards`` over coalesced requests, one pass
    at a time.

    Whoever finds the net idle runs the passes: the net thread for requests from
    Ray's event loop (which must not block) and for jobs, or a thread that queued
    requests and then calls ``kick(lead=True)`` (a socket connection's reader:
    one thread hop less per pass). While one thread runs passes, everything queued
    meanwhile waits for it; it stops when the queue is empty.

    Args:
        forward: one forward pass over the joined rows; returns ``(rows,)`` rewards.
        max_batch_size: most rows in one pass (a single larger request runs alone).
        max_wait_s: how long an idle net waits for company before a pass.
        coalesce: False runs every request in its own pass.
        tick: called on the net thread about every ``tick_s`` seconds (snapshots).
        tick_s: the tick period; None for no ticks.
    """

    def __init__(
        self,
        forward: Forward,
        *,
        max_batch_size: int,
        max_wait_s: float,
        coalesce: bool,
        tick: Callable[[], None] | None = None,
        tick_s: float | None = None,
    ):
        self._forward = forward
        self._max_batch_size = max_batch_size
        self._max_wait_s = max_wait_s
        self._coalesce = coalesce
        self._tick, self._tick_s = tick, tick_s
        self._queue: deque[_Request | _Job] = deque()
        lock = threading.Lock()
        self._work = threading.Condition(lock)  # the net thread waits for work here
        self._company = threading.Condition(lock)  # a runner waits for company here
        self._busy = False
        self.counters = {"requests": 0, "rows": 0, "forward_passes": 0, "max_pass_rows": 0}
        self._thread = threading.Thread(target=self._loop, name="reward-net", daemon=True)
        self._thread.start()

    def predict(
        self, arrays: Arrays, kwargs: dict[str, Any], done: Done, *, hold: bool = False
    ) -> None:
        """Queue one request; ``done`` gets its rewards of shape ``(rows,)`` (or the
        error). With ``hold``, an idle net is not woken: queue a batch of requests,
        then :meth:`kick`.

        Raises ValueError at once for arrays whose rows disagree (before queueing).
        """
        rows = batch_rows(*arrays)
        key = (
            tuple(sorted((k, repr(v)) for k, v in kwargs.items())),
            tuple(None if a is None else (a.shape[1:], a.dtype.str) for a in arrays),
        )
        self._put(_Request(arrays, kwargs, key, rows, time.monotonic(), done), hold)

    def kick(self, lead: bool) -> None:
        """Start on held requests if the net is idle: in this thread with ``lead``
        (it returns once the queue is empty), else on the net thread.
        """
        with self._work:
            if self._busy or not self._queue:
                return
            if not lead:
                self._work.notify()
                return
            self._busy = True
        self._drain()

    def run(self, fn: Callable[..., Any], *args: Any) -> concurrent.futures.Future:
        """Run ``fn(*args)`` with the net to itself, after everything queued before it."""
        job = _Job(fn, args)
        self._put(job, False)
        return job.future

    def _put(self, item: _Request | _Job, hold: bool) -> None:
        with self._work:
            if isinstance(item, _Request):
                self.counters["requests"] += 1
            self._queue.append(item)
            if self._busy:
                self._company.notify()
            elif not hold:
                self._work.notify()

    def _drain(self) -> None:
        """Run passes and jobs until the queue is empty (the caller set ``_busy``)."""
        while True:
            with self._work:
                if not self._queue:
                    self._busy = False
                    return
                head = self._queue[0]
                if isinstance(head, _Request) and self._coalesce and self._max_wait_s > 0:
                    self._wait_for_company(head)
                work = self._take()
            if isinstance(work, _Job):
                self._run_job(work)
            else:
                self._run_group(work)

    # -- the net thread -------------------------------------------------------------

    def _loop(self) -> None:
        next_tick = None if self._tick_s is None else time.monotonic() + self._tick_s
        while True:
            with self._work:
                while self._busy or not self._queue:
                    timeout = None if next_tick is None else next_tick - time.monotonic()
                    if timeout is not None and timeout <= 0 and not self._busy:
                        break
                    self._work.wait(None if timeout is None else max(timeout, 0.01))
                self._busy = True
            self._drain()
            if next_tick is not None and time.monotonic() >= next_tick:
                with self._work:
                    if self._busy:
                        continue  # someone else runs passes: tick later
                    self._busy = True
                self._run_job(_Job(self._tick, ()))
                with self._work:
                    self._busy = False
                    if self._queue:
                        self._work.notify()
                next_tick = time.monotonic() + self._tick_s

    def _wait_for_company(self, head: _Request) -> None:
        """Hold the lock-protected queue open until ``max_batch_size`` rows of the
        head's kind are queued, a job queues, or ``max_wait_s`` after the head arrived.
        """
        deadline = head.arrived + self._max_wait_s
        while True:
            rows = 0
            for item in self._queue:
                if isinstance(item, _Job):
                    return
                if item.key == head.key:
                    rows += item.rows
            timeout = deadline - time.monotonic()
            if rows >= self._max_batch_size or timeout <= 0:
                return
            self._company.wait(timeout)

    def _take(self) -> _Job | list[_Request]:
        """The oldest item; for a request, with every queued request up to the next job
        that can share its pass.
        """
        head = self._queue.popleft()
        if isinstance(head, _Job) or not self._coalesce:
            return head if isinstance(head, _Job) else [head]
        group, rows, keep = [head], head.rows, []
        while self._queue and isinstance(self._queue[0], _Request):
            req = self._queue.popleft()
            if req.key == head.key and rows + req.rows <= self._max_batch_size:
                group.append(req)
                rows += req.rows
            else:
                keep.append(req)
        self._queue.extendleft(reversed(keep))
        return group

    def _run_job(self, job: _Job) -> None:
        if not job.future.set_running_or_notify_cancel():
            return
        try:
            job.future.set_result(job.fn(*job.args))
        except BaseException as err:  # noqa: BLE001 - handed to the caller
            job.future.set_exception(err)

    def _run_group(self, group: list[_Request]) -> None:
        try:
            arrays = tuple(join_rows([r.arrays[i] for r in group]) for i in range(4))
            rewards = np.asarray(self._forward(arrays, group[0].kwargs))
        except Exception as err:  # noqa: BLE001 - handed to the callers
            if len(group) > 1:
                # Isolate the offending request: each one alone, so only it fails.
                for req in group:
                    self._run_group([req])
            else:
                _answer(group[0], None, err)
            return
        total = sum(r.rows for r in group)
        c = self.counters
        c["forward_passes"] += 1
        c["rows"] += total
        c["max_pass_rows"] = max(c["max_pass_rows"], total)
        if rewards.shape != (total,):
            err = RewardActorError(
                f"reward net returned shape {rewards.shape} for a pass of {total} rows"
            )
            for req in group:
                _answer(req, None, err)
            return
        lo = 0
        for req in group:
            _answer(req, rewards[lo : lo + req.rows], None)
            lo += req.rows


def _answer(req: _Request, rewards: np.ndarray | None, error: BaseException | None) -> None:
    try:
        req.done(rewards, error)
    except Exception:  # noqa: BLE001 - a caller that went away must not stop the thread
        pass


__all__ = ["Arrays", "NetThread", "RewardActorError", "join_rows"]
