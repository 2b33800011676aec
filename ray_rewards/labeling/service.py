"""What the labeling page does, without HTTP: which query to show, who holds it, and
how an answer is checked and written.

A :class:`LabelingService` serves the queries of an
:class:`~ray_rewards.preferences.AsyncGatherer` queue folder:

- **queue source**: a running online-preference job's ``<storage>/preferences/queue``.
  Answers go through :meth:`AsyncGatherer.answer`; the job's loop collects them into
  its own store.
- **pairs source**: a Parquet set of fragment pairs (a pipeline run's
  ``data/train_pairs``; its ``preference`` column, if any, is ignored). The pairs are
  submitted once into a private queue, ``<store>.queue``, under query ids made from
  the data's content (a restart finds them there instead of submitting them again),
  and every answer is also written to the preference store ``store`` (the schema
  ``ray-rewards train`` reads): one part file per answer file, named after it
  (``part-<answer file name>``), so a restart writes the parts a crash left out
  and never one twice.

Every answer is one file written atomically before it is acknowledged, so a crash
loses no acknowledged label; the queue's answer files say what is answered, so
nothing answered is served again after a restart. Leases are in memory: a query is
handed to one labeler at a time and returns to the pool when not answered within
``labeler_timeout`` seconds (or at once after a restart). One server per queue: a
lock file (``.label-server.lock``, local folders) refuses a second one, whose leases
would clash.

Frames: a queue's ``frames/<query_id>.npz`` (written by the job's renderer), else
rendered here with :class:`~ray_rewards.preferences.render.FragmentRenderer` when
``env_id`` can be rendered, in a background thread as soon as the query is leased
(the page prefetches the next pair, so its clips are ready when it is shown);
encoded as looping APNG (:mod:`ray_rewards.labeling.apng`). Without frames the page
plots the observations. The env's rewards are never sent to the page (they would
bias the labeler).
"""

from __future__ import annotations

import collections
import dataclasses
import io
import logging
import math
import os
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from ray_rewards import storage
from ray_rewards.labeling.apng import encode_apng
from ray_rewards.labeling.checks import (
    LabelingError,
    check_labeler,
    check_preference,
    check_query_id,
)
from ray_rewards.labeling.files import QueueIndex, content_ids, is_queue, lock_queue, read_pairs
from ray_rewards.preferences._files import join
from ray_rewards.preferences._files import list_parquet as parquet_names
from ray_rewards.preferences.fragments import QUERY_ID, Pairs, preference_table, take
from ray_rewards.preferences.gatherers import AsyncGatherer

logger = logging.getLogger(__name__)

_MAX_PLOT_DIMS = 64  # observations with more numbers per step are not plotted
_DEFAULT_FPS = 20.0


@dataclasses.dataclass
class _Lease:
    lease_id: str
    labeler: str
    expires: float


def _env_fps(env_id: str) -> float:
    import gymnasium as gym

    env = gym.make(env_id)
    try:
        return float(env.metadata.get("render_fps") or _DEFAULT_FPS)
    finally:
        env.close()


class LabelingService:
    """The queries of ``source`` (a queue folder, or a Parquet set of pairs: see the
    module docstring) handed to labelers one at a time, and their answers recorded.

    Args:
        source: queue folder or Parquet pairs (local path or URI).
        store: pairs source only: the preference store answers are appended to
            (default ``<source>_labels``); its queue is ``<store>.queue``.
        env_id: render frames of queries that have none (an env with a state setter).
        labeler_timeout: seconds a labeler holds a query before it returns to the pool.
        budget: labels to gather (skips do not count); no more queries are handed out
            once the labels and the outstanding leases reach it. Default: the number of
            pairs of a pairs source, unlimited for a queue.
        clock: seconds, monotonic (tests pass a fake one).

    Thread-safe: every method may be called from any thread.

    Raises:
        ValueError: ``source`` is neither; the store holds pairs of another shape;
            another server holds the queue; ``store`` given with a queue.
        FileNotFoundError: ``source`` does not exist.
    """

    def __init__(
        self,
        source: str | os.PathLike,
        *,
        store: str | os.PathLike | None = None,
        env_id: str | None = None,
        labeler_timeout: float = 300.0,
        budget: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not labeler_timeout > 0:
            raise ValueError(f"labeler_timeout must be > 0, got {labeler_timeout}")
        if budget is not None and budget < 1:
            raise ValueError(f"budget must be >= 1, got {budget}")
        self.source = storage.absolute(source).rstrip("/")
        self.labeler_timeout = labeler_timeout
        self.clock = clock
        self._pairs: Pairs | None = None
        self._row: dict[str, int] = {}
        self._lock_file: Any = None
        self._executor: ThreadPoolExecutor | None = None
        self.renderer: Any = None
        if is_queue(self.source):
            if store is not None:
                raise ValueError(
                    "--store: only for a Parquet SOURCE; a queue's answers are collected "
                    "into its job's own store"
                )
            self.mode, self.queue_dir, self.store_path = "queue", self.source, None
        else:
            pairs, self._schema = read_pairs(self.source)
            ids = content_ids(pairs)
            self._pairs = {**pairs, QUERY_ID: ids}
            self._row = {q: i for i, q in enumerate(ids)}
            self.mode = "pairs"
            self.store_path = storage.absolute(store or f"{self.source}_labels").rstrip("/")
            self.queue_dir = f"{self.store_path}.queue"
            self._check_store()
        self._lock_file = lock_queue(self.queue_dir)
        try:
            self.gatherer = AsyncGatherer(self.queue_dir)
            self.index = QueueIndex(self.queue_dir)
            self.index.refresh()
            self.fps = _DEFAULT_FPS
            if env_id is not None:
                self._make_renderer(env_id)
            if self._pairs is not None:
                self._submit_missing()
                self._sync_store(list(self.index.first_answers))
        except BaseException:
            self.close()
            raise
        self.budget = budget if budget is not None else (len(self._row) or None)
        self._lock = threading.RLock()
        self._leases: dict[str, _Lease] = {}  # query id -> its lease
        self._clips: collections.OrderedDict[str, Future] = collections.OrderedDict()
        self._query_data: dict[str, dict[str, np.ndarray]] = {}  # queue source: pending rows
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="render")

    # ------------------------------------------------------------------ set-up
    def _make_renderer(self, env_id: str) -> None:
        from ray_rewards.preferences.render import FragmentRenderer, can_render

        # gymnasium's errors (an unknown id, a missing extra) are no ValueErrors.
        try:
            self.fps = _env_fps(env_id)
        except Exception as err:
            raise ValueError(f"--env {env_id}: {err}") from None
        if not can_render(env_id):
            logger.warning("%s cannot be rendered: the page plots observations", env_id)
            return
        try:
            self.renderer = FragmentRenderer(env_id)
        except ImportError as err:
            logger.warning("%s; the page plots observations", err)

    def _check_store(self) -> None:
        """Refuse a store whose parts have another schema than the source's pairs."""
        parts = parquet_names(self.store_path)
        if not parts:
            return
        fs, path = next(iter(parts.values()))
        with fs.open_input_file(path) as f:
            have = pq.read_schema(f)
        if not have.equals(self._schema, check_metadata=False):
            raise ValueError(
                f"--store {self.store_path} holds pairs of another shape than SOURCE's:\n"
                f"{have}\nvs\n{self._schema}"
            )

    def _submit_missing(self) -> None:
        """Submit the source pairs the queue lacks (all on the first run), as one file."""
        assert self._pairs is not None
        missing = [i for i, q in enumerate(self._pairs[QUERY_ID]) if q not in self.index.known]
        if missing:
            self.gatherer.submit(take(self._pairs, missing))
            self.index.refresh()
            logger.info("submitted %d pairs into %s", len(missing), self.queue_dir)

    def _sync_store(self, answer_files: Sequence[str]) -> None:
        """Write the store part of each of ``answer_files`` that has labels and no part."""
        assert self._pairs is not None
        have = parquet_names(self.store_path)
        for name in answer_files:
            part = f"part-{name}"
            first = self.index.first_answers[name]
            rows = [(self._row[q], p) for q, p in first if p == p and q in self._row]
            if not rows or part in have:
                continue
            pairs = take(self._pairs, [r for r, _ in rows])
            table = preference_table(pairs, np.array([p for _, p in rows]), self._schema)
            sink = io.BytesIO()
            pq.write_table(table, sink)
            storage.write_bytes(join(self.store_path, part), sink.getvalue())

    # ---------------------------------------------------------------- requests
    def status(self, labeler: str | None = None) -> dict[str, Any]:
        """Counts for the page: ``labeled`` (skips left out), ``budget`` (None:
        unlimited), ``pending``, ``leased``, ``yours`` (``labeler``'s labels), ``done``.
        """
        with self._lock:
            self.index.refresh()
            self._expire()
            return self._status(labeler)

    def _status(self, labeler: str | None) -> dict[str, Any]:
        labeled, pending = self.index.num_labels, len(self.index.pending())
        done = (self.budget is not None and labeled >= self.budget) or (
            self.mode == "pairs" and pending == 0
        )
        return {
            "mode": self.mode,
            "labeled": labeled,
            "budget": self.budget,
            "pending": pending,
            "leased": len(self._leases),
            "yours": self.index.labels_by.get(labeler, 0) if labeler else 0,
            "done": done,
        }

    def _expire(self) -> None:
        now = self.clock()
        for qid in [q for q, lease in self._leases.items() if lease.expires <= now]:
            del self._leases[qid]
        for qid in [q for q in self._leases if q in self.index.answered]:
            del self._leases[qid]

    def next(self, labeler: str, held: Sequence[tuple[Any, Any]] = ()) -> dict[str, Any]:
        """Lease the oldest query nobody holds to ``labeler``: ``{"query": {...} or None,
        "status": ...}``; None when the budget is reached (counting outstanding leases)
        or every pending query is leased.

        ``held``: the ``(query_id, lease)`` the caller holds (shown, or an answer in
        flight). They are never handed out again to it; their leases are renewed, or
        restored when this server does not know them (it restarted).
        """
        labeler = check_labeler(labeler)
        if not isinstance(held, (list, tuple)) or len(held) > 20:
            raise LabelingError(400, "bad_held", "held: expected at most 20 [query_id, lease]")
        held = [(check_query_id(q), lease) for q, lease in held if isinstance(lease, str)]
        with self._lock:
            self.index.refresh()
            self._expire()
            expires = self.clock() + self.labeler_timeout
            for qid, lease_id in held:
                current = self._leases.get(qid)
                if current is not None and current.lease_id == lease_id:
                    current.expires = expires
                elif current is None and qid in self.index.known and qid not in self.index.answered:
                    self._leases[qid] = _Lease(lease_id, labeler, expires)
            status = self._status(labeler)
            if self.budget is not None and status["labeled"] + len(self._leases) >= self.budget:
                return {"query": None, "status": status}
            mine = {q for q, _ in held}
            free = (q for q in self.index.pending() if q not in self._leases and q not in mine)
            qid = next(free, None)
            if qid is None:
                return {"query": None, "status": status}
            lease = _Lease(secrets.token_urlsafe(12), labeler, expires)
            self._leases[qid] = lease
            status["leased"] += 1
            data = self._data(qid)
            clips = self._has_frames(qid, data)
            if clips:
                self._clip_future(qid)  # render and encode now, while the page shows another
            return {
                "query": {
                    "id": qid,
                    "lease": lease.lease_id,
                    "expires_in": self.labeler_timeout,
                    "clips": [f"/clip/{qid}/{k}.png" for k in (1, 2)] if clips else None,
                    "plot": _plot(data),
                    "fps": self.fps,
                },
                "status": status,
            }

    def _data(self, qid: str) -> dict[str, np.ndarray] | None:
        """The fragments' observations and actions of a query (None if not at hand)."""
        if self._pairs is not None:
            row = self._row.get(qid)
            if row is None:
                return None
            return {c: self._pairs[c][row] for c in ("obs_1", "obs_2", "actions_1", "actions_2")}
        if qid not in self._query_data:
            pending = self.gatherer.pending_queries()
            for i, q in enumerate(pending.get(QUERY_ID, [])):
                self._query_data[str(q)] = {
                    c: pending[c][i] for c in ("obs_1", "obs_2", "actions_1", "actions_2")
                }
        return self._query_data.get(qid)

    def _has_frames(self, qid: str, data: dict[str, np.ndarray] | None) -> bool:
        if self.mode == "queue":
            frames = self.gatherer.frames_path(qid)
            if not storage.is_uri(frames) and os.path.exists(frames):
                return True
            if storage.is_uri(frames):
                return True  # the clip request says 404 when it has none
        return self.renderer is not None and data is not None

    def answer(
        self,
        answers: Sequence[tuple[Any, Any, Any]],
        labeler: Any,
    ) -> dict[str, Any]:
        """Record ``answers``, ``(query_id, lease or None, preference)`` each, as one
        answer file (and, for a pairs source, one store part). All or nothing: any bad
        answer raises LabelingError and nothing is written.

        An answer is accepted when its query is known and unanswered, and not leased to
        someone else (holding the lease, an expired lease, or a query nobody holds).
        """
        labeler = check_labeler(labeler)
        if not isinstance(answers, (list, tuple)) or not answers:
            raise LabelingError(400, "bad_answers", "answers: expected a non-empty list")
        if len(answers) > 1000:
            raise LabelingError(400, "bad_answers", "answers: at most 1000 in one request")
        checked = []
        for qid, lease, pref in answers:
            qid = check_query_id(qid)
            if lease is not None and not isinstance(lease, str):
                raise LabelingError(400, "bad_lease", f"lease: expected a string, got {lease!r}")
            checked.append((qid, lease, check_preference(pref)))
        if len({q for q, _, _ in checked}) != len(checked):
            raise LabelingError(400, "bad_answers", "answers: a query id appears twice")
        with self._lock:
            self.index.refresh()
            self._expire()
            for qid, lease, _ in checked:
                if qid not in self.index.known:
                    raise LabelingError(404, "unknown_query", f"no query {qid!r} in this queue")
                if qid in self.index.answered:
                    raise LabelingError(
                        409, "already_answered", f"query {qid!r} is answered already"
                    )
                held = self._leases.get(qid)
                if held is not None and held.lease_id != lease:
                    raise LabelingError(
                        409,
                        "leased_to_another",
                        f"query {qid!r} is leased to another labeler now (your lease expired)",
                    )
            self.gatherer.answer([q for q, _, _ in checked], [p for _, _, p in checked], labeler)
            new = self.index.refresh()
            if self._pairs is not None:
                self._sync_store(new)
            for qid, _, _ in checked:
                self._leases.pop(qid, None)
                self._query_data.pop(qid, None)
            return {"recorded": len(checked), "status": self._status(labeler)}

    def release(self, leases: Sequence[str]) -> int:
        """Return the queries of these leases to the pool (a page closed); how many."""
        with self._lock:
            held = {lease.lease_id: q for q, lease in self._leases.items()}
            released = [held[lease] for lease in leases if lease in held]
            for qid in released:
                del self._leases[qid]
            return len(released)

    # ------------------------------------------------------------------- clips
    def clip(self, query_id: str, side: int, timeout: float = 120.0) -> bytes:
        """The APNG of fragment ``side`` (1 or 2) of a query; LabelingError 404 when
        it has no frames (the page plots its observations instead).
        """
        qid = check_query_id(query_id)
        if side not in (1, 2):
            raise LabelingError(404, "bad_side", f"fragment {side}: expected 1 or 2")
        with self._lock:
            self.index.refresh()
            if qid not in self.index.known:
                raise LabelingError(404, "unknown_query", f"no query {qid!r} in this queue")
            future = self._clip_future(qid)
        clips = future.result(timeout)
        if clips is None:
            raise LabelingError(404, "no_frames", f"query {qid!r} has no frames")
        return clips[side - 1]

    def _clip_future(self, qid: str) -> Future:
        """The (cached) clips of ``qid``, made in the render thread."""
        future = self._clips.get(qid)
        if future is None:
            future = self._clips[qid] = self._executor.submit(self._make_clips, qid)
            while len(self._clips) > 64:
                self._clips.popitem(last=False)
        self._clips.move_to_end(qid)
        return future

    def _make_clips(self, qid: str) -> tuple[bytes, bytes] | None:
        try:
            frames = None
            if self.mode == "queue":
                with self._lock:
                    frames = self.gatherer.frames(qid)
            if frames is None and self.renderer is not None:
                with self._lock:
                    data = self._data(qid)
                if data is not None:
                    frames = tuple(
                        self.renderer(data[f"obs_{k}"], data[f"actions_{k}"]) for k in (1, 2)
                    )
            if frames is None:
                return None
            return encode_apng(frames[0], self.fps), encode_apng(frames[1], self.fps)
        except Exception:
            logger.exception("frames of query %s could not be made; the page plots it", qid)
            return None

    def __enter__(self) -> LabelingService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the render thread, close the renderer and let go of the queue."""
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
        if self.renderer is not None:
            self.renderer.close()
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None


def _plot(data: dict[str, np.ndarray] | None) -> dict[str, Any] | None:
    """The observations of both fragments, ``(T, D)`` lists rounded to 4 significant
    digits, for the page's plot; None when absent or too large to plot.
    """
    if data is None:
        return None
    obs = [np.asarray(data[f"obs_{k}"], np.float64) for k in (1, 2)]
    obs = [o.reshape(len(o), -1) for o in obs]
    if obs[0].shape[1] > _MAX_PLOT_DIMS:
        return None
    rounded = [
        [[float(f"{v:.4g}") if math.isfinite(v) else None for v in row] for row in o] for o in obs
    ]
    return {"obs_1": rounded[0], "obs_2": rounded[1]}


__all__ = ["LabelingError", "LabelingService"]
