"""Mergeable moments: the base of every cross-worker aggregation of statistics.

A :class:`Moments` holds the count, mean and (population) variance of a data set.
Two of them merge exactly (Chan et al.'s parallel update), so the statistics that
N workers gathered on their own shards combine into the statistics of the whole,
in any order and grouping, to float64 round-off (normalization layers then store
them as float32). Moments are plain numpy, so they cross process boundaries cheaply.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np


def chan_merge(
    count_a: int, mean_a: Any, var_a: Any, count_b: int, mean_b: Any, var_b: Any
) -> tuple[int, Any, Any]:
    """Chan et al.'s parallel update: ``(count, mean, var)`` of the union of two data sets.

    The one place the merge formula lives. Works on float64 numpy arrays
    (Moments.merge) and Python floats (RunningNorm's per-step hot path) alike, so the
    merge runs in float64 whatever dtype the statistics are stored in;
    ``count_a + count_b`` must be > 0.
    """
    total = count_a + count_b
    w_b = count_b / total
    delta = mean_b - mean_a
    mean = mean_a + delta * w_b
    var = var_a + (var_b - var_a) * w_b + delta * delta * (w_b * (1.0 - w_b))
    return total, mean, var


def column_moments(column: np.ndarray) -> tuple[int, float, float]:
    """``(count, mean, var)`` of a non-empty 1-D array, as Python numbers.

    Two passes computed in float64 (exact as ``column.var()``): the per-step hot path
    of reward normalization, where a Moments object would cost more than the math.
    """
    n = column.shape[0]
    mean = float(np.add.reduce(column, dtype=np.float64)) / n
    centered = np.subtract(column, mean, dtype=np.float64)
    return n, mean, float(np.dot(centered, centered)) / n


@dataclass(frozen=True, eq=False)  # numpy fields: compare with allclose()
class Moments:
    """Count, mean and population variance (ddof=0) of a batch of feature vectors.

    Attributes:
        count: number of samples seen.
        mean: float64 array of shape ``(num_features,)`` (or ``()`` for scalars).
        var: float64 array of the same shape as ``mean``.
    """

    count: int
    mean: np.ndarray
    var: np.ndarray

    def __post_init__(self) -> None:
        mean, var = self.mean, self.var
        # Moments are made on per-step hot paths: convert only what needs it.
        if type(mean) is not np.ndarray or mean.dtype != np.float64:
            mean = np.asarray(mean, dtype=np.float64)
        if type(var) is not np.ndarray or var.dtype != np.float64:
            var = np.asarray(var, dtype=np.float64)
        if mean.shape != var.shape:
            raise ValueError(
                f"Moments: mean and var must have one shape, got {mean.shape} and {var.shape}"
            )
        if int(self.count) < 0:
            raise ValueError(f"Moments: count must be >= 0, got {self.count}")
        object.__setattr__(self, "count", int(self.count))
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "var", var)

    @classmethod
    def empty(cls, shape: tuple[int, ...] = ()) -> Moments:
        """Moments of no data: the identity of :meth:`merge`."""
        return cls(0, np.zeros(shape), np.zeros(shape))

    @classmethod
    def of(cls, batch: np.ndarray) -> Moments:
        """Moments of ``batch`` of shape ``(N, *features)``, reduced over axis 0."""
        arr = batch if isinstance(batch, np.ndarray) else np.asarray(batch, dtype=np.float64)
        if arr.ndim == 0:
            raise ValueError("Moments.of: expected a batch with a leading axis, got a scalar")
        n = arr.shape[0]
        if n == 0:
            return cls.empty(arr.shape[1:])
        # Two-pass mean and variance with ufunc reductions computed in float64 (exact as
        # arr.var()), several times faster for the small batches of per-step updates.
        if arr.ndim == 1:
            return cls(*column_moments(arr))
        mean = np.add.reduce(arr, axis=0, dtype=np.float64) / n
        centered = np.subtract(arr, mean, dtype=np.float64)
        return cls(n, mean, np.add.reduce(centered * centered, axis=0) / n)

    def merge(self, other: Moments) -> Moments:
        """Moments of the union of both data sets (exact, associative, commutative)."""
        if self.mean.shape != other.mean.shape:
            raise ValueError(
                f"Moments.merge: feature shapes differ: {self.mean.shape} vs {other.mean.shape}"
            )
        if other.count == 0:
            return self
        if self.count == 0:
            return other
        return Moments(
            *chan_merge(self.count, self.mean, self.var, other.count, other.mean, other.var)
        )

    def subtract(self, other: Moments) -> Moments:
        """Moments of the data in ``self`` that is not in ``other`` (inverse of merge).

        ``a.merge(b).subtract(a)`` equals ``b``: a worker that started from shared
        statistics ``a`` reports only what it added.
        """
        if self.mean.shape != other.mean.shape:
            raise ValueError(
                f"Moments.subtract: feature shapes differ: {self.mean.shape} vs {other.mean.shape}"
            )
        rest = self.count - other.count
        if rest < 0:
            raise ValueError(
                f"Moments.subtract: cannot remove {other.count} samples from {self.count}"
            )
        if rest == 0:
            return Moments.empty(self.mean.shape)
        if other.count == 0:
            return self
        mean = (self.mean * self.count - other.mean * other.count) / rest
        delta = mean - other.mean
        m2 = (
            self.var * self.count
            - other.var * other.count
            - delta**2 * (other.count * rest / self.count)
        )
        return Moments(rest, mean, np.maximum(m2, 0.0) / rest)

    @classmethod
    def merge_updates(cls, base: Moments, updated: Iterable[Moments]) -> Moments:
        """Merge workers that each started from ``base`` and added data of their own.

        Each worker's statistics include ``base``; it is counted once: the result is
        ``base`` merged with every ``u.subtract(base)``.
        """
        return cls.merge_all([base, *(u.subtract(base) for u in updated)])

    @classmethod
    def merge_all(cls, moments: Iterable[Moments]) -> Moments:
        """Merge any number of moments; raises ValueError on an empty iterable."""
        items = list(moments)
        if not items:
            raise ValueError("Moments.merge_all: expected at least one Moments, got none")
        out = items[0]
        for m in items[1:]:
            out = out.merge(m)
        return out

    @property
    def std(self) -> np.ndarray:
        """Population standard deviation."""
        return np.sqrt(self.var)

    def allclose(self, other: Moments, rtol: float = 1e-9, atol: float = 1e-12) -> bool:
        """Whether both hold the same count and (to tolerance) the same mean and var."""
        return (
            self.count == other.count
            and np.allclose(self.mean, other.mean, rtol=rtol, atol=atol)
            and np.allclose(self.var, other.var, rtol=rtol, atol=atol)
        )
