"""RLlib's transition columns: their names, checks, and the arrays a reward net reads.

Observation columns come in three forms: RLlib's packed strings (see
:mod:`~ray_rewards.data.packed`), Ray tensor columns (compression off), and
lists (Parquet written by other tools); all three are read here. The net's
``done`` input is ``terminateds`` (a truncated episode's next state still has a
future); ``truncateds`` and ``rewards`` are passed through untouched.

Errors: a missing column, or a tensor column whose row shape does not fit the
net's spaces, is refused from the schema (:func:`check_schema`) before anything
runs (ValueError naming the column). What only the rows show (packed or list
columns) fails when the rows are read (:func:`column_array`), naming the column.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa
from gymnasium import spaces
from ray.data.block import BlockAccessor

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


def _arrow_element_shape(dtype: Any) -> tuple[int, ...] | None:
    """Row shape a Parquet/Arrow column type implies; None when only the data can tell
    (packed strings, lists).
    """
    if isinstance(dtype, pa.ExtensionType) and getattr(dtype, "shape", None) is not None:
        shape = tuple(dtype.shape)
        return None if any(d is None for d in shape) else shape
    if isinstance(dtype, pa.DataType) and (
        pa.types.is_integer(dtype) or pa.types.is_floating(dtype) or pa.types.is_boolean(dtype)
    ):
        return ()
    return None


def check_schema(names: list[str], types: list[Any], net: RewardNet | None) -> None:
    """Refuse, before anything runs, a schema missing a column or with row shapes that do
    not fit ``net``'s spaces (as far as the column types tell). ValueError names the column.
    """
    check_columns(names)
    if net is None:
        return
    for column, space in (
        (OBS, net.observation_space),
        (ACTIONS, net.action_space),
        (NEXT_OBS, net.observation_space),
    ):
        shape = _arrow_element_shape(types[names.index(column)])
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
    numpy (tensor columns through Ray's extension types); the rest stays Arrow.
    """
    check_columns(table.column_names)
    return transition_arrays(BlockAccessor.for_block(table).to_numpy(list(_INPUT_COLUMNS)), net)


__all__ = [
    "ACTIONS",
    "INPUTS",
    "NEXT_OBS",
    "OBS",
    "REWARDS",
    "RLLIB_COLUMNS",
    "TERMINATEDS",
    "TRUNCATEDS",
    "check_columns",
    "check_schema",
    "column_array",
    "table_transitions",
    "transition_arrays",
]
