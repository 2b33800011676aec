"""Fragment pairs: what a gatherer is asked to label, as a dict of numpy columns.

A *fragments* dict holds ``M`` fragments of ``T`` consecutive transitions, each column
``(M, T, ...)``: ``obs``, ``actions``, ``new_obs``, ``terminateds`` and, when the
env's reward is known, ``rewards`` (what :func:`ray_rewards.train.oracle.sample_fragments`
returns).

A *pairs* dict (:data:`Pairs`) holds ``N`` pairs of them: the columns of
:func:`ray_rewards.train.schemas.preference_schema` without ``preference``
(``obs_1 (N, T, ...)``, ``actions_1``, ``new_obs_1``, ``terminateds_1`` and the same
with ``_2``), plus ``rewards_1``/``rewards_2 (N, T)`` (the env's rewards, kept for the
synthetic gatherer; absent when unknown) and ``query_id (N,)`` (unique strings that
tie an answer to its query). An empty dict means no pairs.

:func:`preference_table` turns labeled pairs into the Parquet table ``ray-rewards
train`` reads, dropping the extra columns.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
from gymnasium import spaces

from ray_rewards.train import oracle, schemas

Columns = dict[str, np.ndarray]
Pairs = dict[str, np.ndarray]
"""``N`` fragment pairs: ``<column>_1``, ``<column>_2`` ``(N, T, ...)`` and ``query_id (N,)``."""

QUERY_ID = "query_id"
LABEL_COLUMNS = tuple(c for c in schemas.PREFERENCE_COLUMNS if c != "preference")
"""The fragment columns of a pair that training needs (the preference schema's)."""


def new_query_ids(n: int) -> np.ndarray:
    """``n`` query ids ``(n,)``, unique across processes and restarts (a random batch
    prefix and the row's index).
    """
    prefix = uuid.uuid4().hex[:16]
    return np.array([f"{prefix}-{i:06d}" for i in range(n)], dtype=object)


def num_pairs(pairs: Mapping[str, np.ndarray]) -> int:
    """Number of pairs ``N`` (0 for an empty dict)."""
    return len(next(iter(pairs.values()))) if pairs else 0


def make_pairs(
    fragments: Mapping[str, np.ndarray],
    first: np.ndarray,
    second: np.ndarray,
    query_ids: np.ndarray | None = None,
) -> Pairs:
    """Pair fragment ``first[i]`` with fragment ``second[i]`` (index arrays ``(N,)``).

    Every fragment column ``c`` becomes ``c_1`` and ``c_2``; new query ids are made
    unless given.
    """
    first, second = np.asarray(first, np.int64), np.asarray(second, np.int64)
    if first.shape != second.shape or first.ndim != 1:
        raise ValueError(
            f"make_pairs: expected two (N,) indices, got {first.shape}, {second.shape}"
        )
    pairs: Pairs = {}
    for i, index in ((1, first), (2, second)):
        for name, column in fragments.items():
            pairs[f"{name}_{i}"] = np.asarray(column)[index]
    pairs[QUERY_ID] = new_query_ids(len(first)) if query_ids is None else np.asarray(query_ids)
    return pairs


def fragment_pairs(
    transitions: Mapping[str, np.ndarray],
    lengths: np.ndarray,
    *,
    fragment_length: int,
    num_pairs: int,
    rng: np.random.Generator,
) -> Pairs:
    """``num_pairs`` pairs of independently drawn fragments of ``fragment_length`` steps.

    ``transitions`` are columns ``(sum(lengths), ...)`` of episode chunks back to back
    (as :func:`ray_rewards.train.oracle.episodes_to_transitions` gives them); fragments
    never cross a chunk boundary (:func:`~ray_rewards.train.oracle.sample_fragments`).
    """
    frags = oracle.sample_fragments(transitions, lengths, fragment_length, 2 * num_pairs, rng)
    return make_pairs(frags, np.arange(num_pairs), np.arange(num_pairs, 2 * num_pairs))


def take(pairs: Mapping[str, np.ndarray], index: Any) -> Pairs:
    """The pairs at ``index`` (an index array or boolean mask), every column."""
    return {name: np.asarray(col)[index] for name, col in pairs.items()}


def concat(parts: Sequence[Mapping[str, np.ndarray]]) -> Pairs:
    """Pairs of all ``parts`` in order (empty parts skipped; all others need the same
    columns).
    """
    parts = [p for p in parts if num_pairs(p)]
    if not parts:
        return {}
    names = list(parts[0])
    for p in parts[1:]:
        if sorted(p) != sorted(names):
            raise ValueError(f"concat: columns differ: {sorted(names)} vs {sorted(p)}")
    return {name: np.concatenate([np.asarray(p[name]) for p in parts]) for name in names}


def to_preference_columns(pairs: Mapping[str, np.ndarray], preferences: np.ndarray) -> Columns:
    """The columns of :func:`~ray_rewards.train.schemas.preference_schema`: the
    fragment columns of ``pairs`` and ``preference`` ``(N,)`` float64 in [0, 1].
    """
    missing = sorted(set(LABEL_COLUMNS) - set(pairs))
    if missing:
        raise KeyError(f"to_preference_columns: pairs lack columns {missing}")
    preferences = np.asarray(preferences, np.float64)
    if preferences.shape != (num_pairs(pairs),):
        raise ValueError(
            f"to_preference_columns: expected {num_pairs(pairs)} preferences, "
            f"got shape {preferences.shape}"
        )
    if not np.all((preferences >= 0) & (preferences <= 1)):
        raise ValueError("to_preference_columns: preferences must lie in [0, 1]")
    return {**{c: np.asarray(pairs[c]) for c in LABEL_COLUMNS}, "preference": preferences}


def infer_preference_schema(pairs: Mapping[str, np.ndarray]) -> pa.Schema:
    """The preference schema of ``pairs``' arrays when the env's spaces are unknown:
    observations and actions as Boxes of their dtype and per-step shape.
    """

    def box(column: str) -> spaces.Box:
        arr = np.asarray(pairs[column])
        return spaces.Box(0, 1, arr.shape[2:], arr.dtype)

    length = np.shape(pairs["obs_1"])[1]
    return schemas.preference_schema(box("obs_1"), box("actions_1"), length)


def preference_table(
    pairs: Mapping[str, np.ndarray],
    preferences: np.ndarray,
    schema: pa.Schema | None = None,
) -> pa.Table:
    """Labeled pairs as a preference-schema table (``schema``, else inferred)."""
    columns = to_preference_columns(pairs, preferences)
    return schemas.to_table(columns, schema or infer_preference_schema(pairs))


_BOOL_KEY = b"ray_rewards.bool_columns"


def to_arrow(columns: Mapping[str, np.ndarray]) -> pa.Table:
    """Any numpy columns ``(N, ...)`` as an Arrow table, losslessly (multi-dimensional
    columns as ``fixed_shape_tensor``; their bools as uint8, restored by
    :func:`from_arrow`). Used for the query files of the asynchronous gatherer.
    """
    arrays, bools = {}, []
    for name, col in columns.items():
        arr = np.asarray(col)
        if arr.ndim > 1:
            if arr.dtype == np.bool_:
                bools.append(name)
                arr = arr.astype(np.uint8)
            arrays[name] = pa.FixedShapeTensorArray.from_numpy_ndarray(np.ascontiguousarray(arr))
        else:
            arrays[name] = pa.array(arr.tolist() if arr.dtype == object else arr)
    table = pa.table(arrays)
    return table.replace_schema_metadata({_BOOL_KEY: json.dumps(bools).encode()})


def from_arrow(table: pa.Table) -> Columns:
    """Numpy columns of a table written by :func:`to_arrow` (strings as object arrays)."""
    meta = table.schema.metadata or {}
    bools = set(json.loads(meta.get(_BOOL_KEY, b"[]")))
    out: Columns = {}
    for name in table.column_names:
        column = table.column(name).combine_chunks()
        if isinstance(column.type, pa.FixedShapeTensorType):
            arr = column.to_numpy_ndarray()
            out[name] = arr.astype(bool) if name in bools else arr
        elif pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            out[name] = np.array(column.to_pylist(), dtype=object)
        else:
            out[name] = column.to_numpy(zero_copy_only=False)
    return out


__all__ = [
    "LABEL_COLUMNS",
    "QUERY_ID",
    "Pairs",
    "concat",
    "fragment_pairs",
    "from_arrow",
    "infer_preference_schema",
    "make_pairs",
    "new_query_ids",
    "num_pairs",
    "preference_table",
    "take",
    "to_arrow",
    "to_preference_columns",
]
