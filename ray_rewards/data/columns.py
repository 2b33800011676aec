"""RLlib's transition columns: their names, checks, and the arrays a reward net reads.

Observation columns come in three forms: RLlib's packed strings (see
:mod:`~ray_rewards.data.packed`), Ray tensor columns (compression off), and
lists (Parquet written by other tools); all three are read here. The net's
``done`` input is ``terminateds`` (a truncated episode's next state still has a
future); ``truncateds`` and ``rewards`` are passed through untouched.

Arrow columns become numpy here without Ray (:func:`arrow_column`), so that the
local relabeling path never imports it: Ray's fixed-shape tensor columns (its
extension types, or their storage plus field metadata when Ray is not loaded) and
lists of equal length are reshaped from their flat values without a copy per row.

Errors: a missing column, or a tensor column whose row shape does not fit the
net's spaces, is refused from the schema (:func:`check_schema`) before anything
runs (ValueError naming the column). What only the rows show (packed or list
columns) fails when the rows are read (:func:`column_array`), naming the column.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from gymnasium import spaces

from ray_rewards.data.packed import UnsafeDataError, unpack_array
from ray_rewards.reward_nets import RewardNet

# RLlib's ``ray.rllib.core.columns.Columns`` names (spelled out so that reading
# data does not import RLlib; a test checks they agree).
OBS = "obs"
ACTIONS = "actions"
NEXT_OBS = "new_obs"
REWARDS = "rewards"
TERMINATEDS = "terminateds"
TRUNCATEDS = "truncateds"
RLLIB_COLUMNS = (OBS, ACTIONS, NEXT_OBS, REWARDS, TERMINATEDS, TRUNCATEDS)

INPUTS = (("state", OBS), ("action", ACTIONS), ("next_state", NEXT_OBS), ("done", TERMINATEDS))
"""The columns a reward net reads, by the argument they feed."""

_INPUT_COLUMNS = tuple(c for _, c in INPUTS)


def _element_shape(space: spaces.Space) -> tuple[int, ...]:
    if isinstance(space, spaces.Discrete):
        return ()
    if isinstance(space, spaces.MultiDiscrete):
        return tuple(space.nvec.shape)
    return tuple(space.shape)


def column_array(values: Any, column: str, space: spaces.Space | None) -> np.ndarray:
    """One column of a batch as an array of shape ``(B, *element shape of space)``.

    Packed strings (RLlib's compressed columns) are unpacked, lists and per-row arrays
    stacked; with a ``space`` the shape is checked. Raises ValueError naming
    ``column`` when its rows do not fit.
    """
    arr = values if isinstance(values, np.ndarray) else np.asarray(values)
    if arr.dtype == object or arr.dtype.kind in "SU":
        # One decode per row: the rows were written one by one, there is no batched form.
        try:
            rows = [unpack_array(v) if isinstance(v, (str, bytes)) else np.asarray(v) for v in arr]
            arr = np.stack(rows) if rows else np.empty((0,))
        except UnsafeDataError:
            raise
        except Exception as err:  # noqa: BLE001 - re-raised naming the column
            raise ValueError(
                f"column {column!r}: could not read its rows as arrays ({err})"
            ) from err
    if not arr.flags.writeable:
        # Ray hands out read-only zero-copy batches; torch would copy them anyway (and warn).
        arr = arr.copy()
    if space is not None:
        expected = _element_shape(space)
        if arr.shape[1:] != expected:
            raise ValueError(
                f"column {column!r}: expected rows of shape {expected} for {space}, got rows "
                f"of shape {arr.shape[1:]}"
            )
    return arr


def check_columns(columns: Any, needed: tuple[str, ...] = _INPUT_COLUMNS) -> None:
    """Raise ValueError naming the first missing transition column."""
    present = list(columns)
    for col in needed:
        if col not in present:
            raise ValueError(
                f"missing column {col!r}: relabeling needs RLlib's transition columns "
                f"{list(needed)}, got columns {present}"
            )


_RAY_TENSOR_TYPES = ("ray.data.arrow_tensor", "ray.data.arrow_tensor_v2")
"""Ray's fixed-shape tensor extension types (storage: a list per row of the flat values)."""


def _tensor_shape(field: pa.Field) -> tuple[int, ...] | None:
    """Row shape of a fixed-shape tensor column: Ray's extension type when Ray is loaded,
    or its name and JSON shape in the field metadata when pyarrow read it alone.
    """
    typ = field.type
    if isinstance(typ, pa.ExtensionType):
        shape = getattr(typ, "shape", None) if typ.extension_name in _RAY_TENSOR_TYPES else None
    else:
        meta = field.metadata or {}
        if meta.get(b"ARROW:extension:name", b"").decode() not in _RAY_TENSOR_TYPES:
            return None
        try:
            shape = json.loads(meta.get(b"ARROW:extension:metadata", b""))
        except ValueError:
            return None  # not JSON (files of Ray 2.49-2.54): read through Ray instead
    if shape is None or any(not isinstance(d, int) for d in shape):
        return None
    return tuple(shape)


def _arrow_element_shape(field: pa.Field) -> tuple[int, ...] | None:
    """Row shape a Parquet/Arrow column's type implies; None when only the data can tell
    (packed strings, lists).
    """
    shape = _tensor_shape(field)
    if shape is not None:
        return shape
    dtype = field.type
    if isinstance(dtype, pa.DataType) and (
        pa.types.is_integer(dtype) or pa.types.is_floating(dtype) or pa.types.is_boolean(dtype)
    ):
        return ()
    return None


def _is_list(dtype: pa.DataType) -> bool:
    return (
        pa.types.is_list(dtype)
        or pa.types.is_large_list(dtype)
        or pa.types.is_fixed_size_list(dtype)
    )


def _uniform_lists(arr: pa.Array) -> np.ndarray | None:
    """Nested lists of one length per level, without nulls, as one reshaped array (the
    flat values are not copied per row); None when they are ragged or have nulls.
    """
    if arr.null_count:
        return None
    if not _is_list(arr.type):
        return arr.to_numpy(zero_copy_only=False) if not pa.types.is_nested(arr.type) else None
    if pa.types.is_fixed_size_list(arr.type):
        width = arr.type.list_size
    else:
        lengths = pc.list_value_length(arr)
        bounds = pc.min_max(lengths)
        width = bounds["min"].as_py()
        if len(arr) and width != bounds["max"].as_py():
            return None
    inner = _uniform_lists(arr.flatten())
    if inner is None:
        return None
    return inner.reshape(len(arr), width or 0, *inner.shape[1:])


def arrow_column(column: pa.Array | pa.ChunkedArray, field: pa.Field) -> np.ndarray:
    """One Arrow column as numpy, without Ray: tensor columns and lists of equal length
    as ``(rows, *row shape)`` arrays, strings (packed columns) as an object array;
    :func:`column_array` then decodes and checks it.
    """
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    storage = arr.storage if isinstance(arr, pa.ExtensionArray) else arr
    shape = _tensor_shape(field)
    if shape is not None and not storage.null_count and _is_list(storage.type):
        flat = storage.flatten().to_numpy(zero_copy_only=False)
        if flat.size == len(storage) * math.prod(shape):
            return flat.reshape(len(storage), *shape)
    if isinstance(arr, pa.ExtensionArray):
        # Another extension type (e.g. Ray's variable-shaped tensors): Ray knows it.
        from ray.data.block import BlockAccessor

        return BlockAccessor.for_block(pa.table({field.name: arr})).to_numpy(field.name)
    if _is_list(storage.type):
        stacked = _uniform_lists(storage)
        if stacked is not None:
            return stacked
    return storage.to_numpy(zero_copy_only=False)


def check_schema(names: list[str], types: list[Any], net: RewardNet | None) -> None:
    """Refuse, before anything runs, a schema missing a column or with row shapes that do
    not fit ``net``'s spaces (as far as the column types tell). ValueError names the column.
    """
    fields = [
        pa.field(n, t if isinstance(t, pa.DataType) else pa.null()) for n, t in zip(names, types)
    ]
    _check_fields(list(names), fields, net)


def check_arrow_schema(schema: pa.Schema, net: RewardNet | None) -> None:
    """:func:`check_schema` of an Arrow schema (a Parquet file's, read with or without
    Ray's extension types loaded: the field metadata tells a tensor column then).
    """
    _check_fields(schema.names, list(schema), net)


def _check_fields(names: list[str], fields: list[pa.Field], net: RewardNet | None) -> None:
    check_columns(names)
    if net is None:
        return
    for column, space in (
        (OBS, net.observation_space),
        (ACTIONS, net.action_space),
        (NEXT_OBS, net.observation_space),
    ):
        shape = _arrow_element_shape(fields[names.index(column)])
        if shape is not None and shape != _element_shape(space):
            raise ValueError(
                f"column {column!r}: expected rows of shape {_element_shape(space)} for "
                f"{space}, but the column holds rows of shape {shape}"
            )


def transition_arrays(
    batch: Mapping[str, Any], net: RewardNet | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(obs, actions, new_obs, terminateds)`` arrays of a numpy batch, checked against
    ``net``'s spaces (None: only decoded). ValueError names a missing or misfit column.
    """
    check_columns(batch)
    obs_space = None if net is None else net.observation_space
    act_space = None if net is None else net.action_space
    return (
        column_array(batch[OBS], OBS, obs_space),
        column_array(batch[ACTIONS], ACTIONS, act_space),
        column_array(batch[NEXT_OBS], NEXT_OBS, obs_space),
        column_array(batch[TERMINATEDS], TERMINATEDS, spaces.Box(0, 1, ())),
    )


def table_transitions(
    table: pa.Table, net: RewardNet | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`transition_arrays` of an Arrow table: only the four input columns become
    numpy (:func:`arrow_column`); the rest stays Arrow.
    """
    check_columns(table.column_names)
    schema = table.schema
    cols = {c: arrow_column(table.column(c), schema.field(c)) for c in _INPUT_COLUMNS}
    return transition_arrays(cols, net)


__all__ = [
    "ACTIONS",
    "INPUTS",
    "NEXT_OBS",
    "OBS",
    "REWARDS",
    "RLLIB_COLUMNS",
    "TERMINATEDS",
    "TRUNCATEDS",
    "arrow_column",
    "check_arrow_schema",
    "check_columns",
    "check_schema",
    "column_array",
    "table_transitions",
    "transition_arrays",
]
