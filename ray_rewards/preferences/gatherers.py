"""Preference gatherers: who labels fragment pairs, behind one non-blocking interface.

A training loop submits the pairs it wants labeled and, whenever it likes, collects
whatever has been answered since its last collect; it never waits for an answer. Two gatherers:

- :class:`SyntheticGatherer` labels at once from the env's rewards (imitation's
  ``SyntheticGatherer``, through :class:`ray_rewards.train.oracle.PreferenceOracle`);
- :class:`AsyncGatherer` queues the queries as Parquet files in a folder; people (a
  labeling page calling :meth:`AsyncGatherer.answer`) answer them when they can.

Preferences are the probability that fragment 1 is preferred: 1, 0, 0.5 for "equally
good", or anything in between (soft labels).
"""

from __future__ import annotations

import abc
import dataclasses
import io
import json
import logging
import math
import os
import time
from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from ray_rewards import storage
from ray_rewards.preferences import _files
from ray_rewards.preferences.fragments import (
    QUERY_ID,
    Pairs,
    concat,
    from_arrow,
    new_query_ids,
    num_pairs,
    take,
    to_arrow,
)
from ray_rewards.preferences.render import FragmentRenderer
from ray_rewards.train.oracle import PreferenceOracle

logger = logging.getLogger(__name__)

SKIP = math.nan
"""The answer "cannot tell": the query is answered (no longer pending) but yields no label."""


def _empty() -> tuple[Pairs, np.ndarray]:
    return {}, np.zeros(0, np.float64)


class PreferenceGatherer(abc.ABC):
    """Labels fragment pairs (:mod:`ray_rewards.preferences.fragments`), asynchronously
    in general: answers to a ``submit`` may come in any later ``collect``, or never.
    """

    @abc.abstractmethod
    def submit(self, pairs: Pairs) -> None:
        """Ask for labels of ``pairs`` (they get query ids here if they have none)."""

    @abc.abstractmethod
    def collect(self) -> tuple[Pairs, np.ndarray]:
        """Everything answered since the last call: ``(pairs, preferences (N,))``, each
        answer once; ``({}, empty)`` when there is none. Never blocks.
        """

    @property
    def num_pending(self) -> int:
        """Submitted pairs that have no answer yet."""
        return 0


def _with_ids(pairs: Pairs) -> Pairs:
    if QUERY_ID in pairs:
        return dict(pairs)
    return {**pairs, QUERY_ID: new_query_ids(num_pairs(pairs))}


class SyntheticGatherer(PreferenceGatherer):
    """Labels pairs from their env rewards (``rewards_1``/``rewards_2``) on ``submit``.

    ``P(1 preferred) = sigmoid((R_1 - R_2) / temperature)``, ``R`` the returns discounted
    by ``discount_factor``, the scaled difference clipped to ``±threshold``. With
    ``sample`` the labels are 0/1 draws from it (a noisy labeler), else the
    probabilities. ``temperature=0`` gives 1, 0, or 0.5 for a tie, never sampled (as
    in imitation). ``metrics["entropy"]``: mean binary entropy of the probabilities
    of the last submit (imitation logs it: the loss a perfect reward model would reach).
    """

    def __init__(
        self,
        temperature: float = 1.0,
        discount_factor: float = 1.0,
        sample: bool = True,
        threshold: float = 50.0,
        seed: int | None = None,
    ) -> None:
        sample = sample and temperature > 0
        self.oracle = PreferenceOracle(temperature, discount_factor, sample, threshold)
        self.rng = np.random.default_rng(seed)
        self.metrics: dict[str, float] = {}
        self._answered: list[tuple[Pairs, np.ndarray]] = []

    def submit(self, pairs: Pairs) -> None:
        """Label ``pairs`` now; they come out of the next :meth:`collect`."""
        if not num_pairs(pairs):
            return
        missing = [c for c in ("rewards_1", "rewards_2") if c not in pairs]
        if missing:
            raise KeyError(f"SyntheticGatherer: pairs need the env's rewards; missing {missing}")
        r1, r2 = np.asarray(pairs["rewards_1"]), np.asarray(pairs["rewards_2"])
        probs = dataclasses.replace(self.oracle, sample=False)(r1, r2, self.rng)
        p = np.clip(probs, 1e-300, 1.0)
        q = np.clip(1 - probs, 1e-300, 1.0)
        self.metrics = {"entropy": float(-(probs * np.log(p) + (1 - probs) * np.log(q)).mean())}
        labels = self.oracle(r1, r2, self.rng) if self.oracle.sample else probs
        self._answered.append((_with_ids(pairs), labels))

    def collect(self) -> tuple[Pairs, np.ndarray]:
        """The pairs labeled since the last call and their labels."""
        if not self._answered:
            return _empty()
        answered, self._answered = self._answered, []
        return concat([p for p, _ in answered]), np.concatenate([y for _, y in answered])


class AsyncGatherer(PreferenceGatherer):
    """Queries and answers as files in ``queue_dir`` (a local path or URI), so labelers
    answer at their own pace, from other processes or machines, and a restarted run
    picks up where it stopped.

    Layout (every file written atomically, under a name that sorts by time)::

        queries/<name>.parquet   one per submit: query_id and the pair's columns
                                 (observations for display, actions, ...)
        frames/<query_id>.npz    with a ``renderer``: the pair's frames,
                                 ``frames_1``/``frames_2`` (T, H, W, 3) uint8
        answers/<name>.parquet   one per answer call: query_id, preference (NaN =
                                 skipped), labeler, time (Unix seconds)
        collected.json           names of the answer files already collected

    A query stays pending until an answer names it. The first answer to a query is its
    label; later ones (a second labeler, a retried request) are ignored. Any number of
    processes may answer; one process (the training loop) should collect.
    ``collect`` records what it returned before returning it: store the labels at once
    (:class:`~ray_rewards.preferences.store.PreferenceStore`).

    With a ``renderer`` (:class:`~ray_rewards.preferences.render.FragmentRenderer`),
    each submitted pair's fragments are rendered once, at submit: only queried
    fragments are ever rendered. A pair that fails to render is still queried
    (shown by its observations) and the failure logged.
    """

    def __init__(
        self, queue_dir: str | os.PathLike, renderer: FragmentRenderer | None = None
    ) -> None:
        self.queue_dir = storage.absolute(queue_dir)
        self.renderer = renderer
        self._queries: dict[str, Pairs] = {}  # query file name -> its pairs
        self._where: dict[str, tuple[str, int]] = {}  # query id -> (file, row)
        self._answered: set[str] = set()  # ids named in any answer file read so far
        self._answers: dict[str, dict[str, np.ndarray]] = {}  # answer file name -> its rows
        self._labeled: set[str] = set()  # ids whose label was collected
        self._collected: set[str] = set(self._read_marker())
        if not storage.is_uri(self.queue_dir):
            for sub in ("queries", "answers"):
                os.makedirs(os.path.join(self.queue_dir, sub), exist_ok=True)

    # -------------------------------------------------------------------- files
    def _marker(self) -> str:
        return _files.join(self.queue_dir, "collected.json")

    def _read_marker(self) -> list[str]:
        try:
            return json.loads(storage.read_bytes(self._marker()))["answers"]
        except FileNotFoundError:
            return []

    def _refresh(self) -> None:
        """Read the query and answer files that appeared since the last look."""
        for name, where in _files.list_parquet(_files.join(self.queue_dir, "queries")).items():
            if name not in self._queries:
                self._add_queries(name, from_arrow(_files.read_table(where)))
        for name, where in _files.list_parquet(_files.join(self.queue_dir, "answers")).items():
            if name in self._answers:
                continue
            answers = self._answers[name] = from_arrow(_files.read_table(where))
            self._answered.update(str(q) for q in answers[QUERY_ID])
            if name in self._collected:
                prefs = answers["preference"]
                self._labeled.update(str(q) for q, p in zip(answers[QUERY_ID], prefs) if p == p)

    def _add_queries(self, name: str, pairs: Pairs) -> None:
        self._queries[name] = pairs
        for row, qid in enumerate(pairs[QUERY_ID]):
            self._where[str(qid)] = (name, row)

    # ---------------------------------------------------------------- interface
    def submit(self, pairs: Pairs) -> None:
        """Write ``pairs`` as one query file (query ids are made unless present)."""
        if not num_pairs(pairs):
            return
        pairs = _with_ids(pairs)
        if self.renderer is not None:
            self._render(pairs)
        name = _files.new_name()
        _files.write_table(_files.join(self.queue_dir, "queries", name), to_arrow(pairs))
        self._add_queries(name, pairs)

    def _render(self, pairs: Pairs) -> None:
        """Write ``frames/<query_id>.npz`` for each pair (before its query is visible)."""
        for i, qid in enumerate(pairs[QUERY_ID]):
            try:
                frames = {
                    f"frames_{k}": self.renderer(pairs[f"obs_{k}"][i], pairs[f"actions_{k}"][i])
                    for k in (1, 2)
                }
            except Exception:  # a labeler can still judge the pair by its observations
                logger.exception("AsyncGatherer: rendering query %s failed", qid)
                continue
            buffer = io.BytesIO()
            np.savez_compressed(buffer, **frames)
            storage.write_bytes(self.frames_path(str(qid)), buffer.getvalue())

    def frames_path(self, query_id: str) -> str:
        """Where a query's rendered frames are (or would be): ``frames/<query_id>.npz``."""
        return _files.join(self.queue_dir, "frames", f"{query_id}.npz")

    def frames(self, query_id: str) -> tuple[np.ndarray, np.ndarray] | None:
        """The rendered frames ``(T, H, W, 3)`` of a query's two fragments, or None
        when it has none (no renderer, or rendering failed).

        Raises:
            ValueError: ``query_id`` is no query of this queue.
        """
        self._refresh()
        if str(query_id) not in self._where:
            raise ValueError(f"frames: unknown query id {str(query_id)!r}")
        try:
            data = storage.read_bytes(self.frames_path(str(query_id)))
        except FileNotFoundError:
            return None
        with np.load(io.BytesIO(data)) as npz:
            return npz["frames_1"], npz["frames_2"]

    def collect(self) -> tuple[Pairs, np.ndarray]:
        """Labeled pairs of the answer files not collected before (skips and repeated
        answers left out), joined to their queries; marks those files collected.
        """
        self._refresh()
        new = [name for name in self._answers if name not in self._collected]
        if not new:
            return _empty()
        parts, labels = [], []
        for answers in (self._answers[name] for name in sorted(new)):
            for qid, pref in zip(answers[QUERY_ID], answers["preference"]):
                qid = str(qid)
                if pref != pref or qid in self._labeled:  # skipped, or labeled already
                    continue
                if qid not in self._where:
                    logger.warning("AsyncGatherer: answer to unknown query %r ignored", qid)
                    continue
                name, row = self._where[qid]
                parts.append(take(self._queries[name], [row]))
                labels.append(float(pref))
                self._labeled.add(qid)
        self._collected.update(new)
        marker = json.dumps({"answers": sorted(self._collected)}).encode()
        storage.write_bytes(self._marker(), marker)
        return (concat(parts), np.array(labels, np.float64)) if parts else _empty()

    def pending(self) -> list[str]:
        """Ids of the queries nobody answered yet, oldest first."""
        self._refresh()
        return [q for q in self._where if q not in self._answered]

    @property
    def num_pending(self) -> int:
        """Number of queries nobody answered yet."""
        return len(self.pending())

    def pending_queries(self, limit: int | None = None) -> Pairs:
        """The pending queries (``limit`` oldest at most), with all their columns:
        what a labeling page shows.
        """
        ids = self.pending()[:limit]
        return concat([take(self._queries[self._where[q][0]], [self._where[q][1]]) for q in ids])

    def answer(
        self,
        query_ids: Sequence[str],
        preferences: Sequence[float | None],
        labeler: str = "human",
    ) -> str:
        """Record answers (what a labeling page calls): preference of fragment 1 in
        [0, 1], or None / NaN (:data:`SKIP`) to skip. One file, written atomically;
        returns its path. Raises ValueError for unknown ids or bad preferences.
        """
        ids = [str(q) for q in query_ids]
        prefs = np.array([math.nan if p is None else p for p in preferences], np.float64)
        if len(ids) != len(prefs) or not ids:
            raise ValueError(
                f"answer: expected as many preferences as ids (> 0), got {len(ids)}, {len(prefs)}"
            )
        if np.any((prefs < 0) | (prefs > 1)):
            raise ValueError("answer: preferences must lie in [0, 1] (or None/NaN to skip)")
        self._refresh()
        unknown = [q for q in ids if q not in self._where]
        if unknown:
            raise ValueError(f"answer: unknown query ids {unknown[:5]}")
        table = pa.table(
            {
                QUERY_ID: pa.array(ids, pa.string()),
                "preference": pa.array(prefs, pa.float64()),
                "labeler": pa.array([labeler] * len(ids), pa.string()),
                "time": pa.array(np.full(len(ids), time.time()), pa.float64()),
            }
        )
        path = _files.join(self.queue_dir, "answers", _files.new_name())
        _files.write_table(path, table)
        return path


__all__ = ["SKIP", "AsyncGatherer", "PreferenceGatherer", "SyntheticGatherer"]
