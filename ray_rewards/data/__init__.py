"""Bulk relabeling of recorded transitions with a learned reward, on Ray Data.

:func:`relabel_dataset` adds a learned-reward column to a ``ray.data.Dataset`` of
transitions in RLlib's column layout (``obs``, ``actions``, ``new_obs``,
``rewards``, ``terminateds``, ``truncateds``), keeping every original column.
:func:`relabel_parquet` (the ``ray-rewards relabel`` command) does Parquet to
Parquet and publishes the output only when the whole job succeeded.

Modules:

- :mod:`~ray_rewards.data.columns`: RLlib's column names, schema and column
  checks, the arrays a reward net reads.
- :mod:`~ray_rewards.data.packed`: RLlib's packed (compressed) columns, decoded
  without running code from the data.
- :mod:`~ray_rewards.data.relabel`: :func:`relabel_dataset`, its batch mapper and
  the merge of normalization statistics.
- :mod:`~ray_rewards.data.parquet`: :func:`relabel_parquet`.
"""

from __future__ import annotations

from ray_rewards.data.columns import (
    ACTIONS,
    NEXT_OBS,
    OBS,
    REWARDS,
    RLLIB_COLUMNS,
    TERMINATEDS,
    TRUNCATEDS,
    check_columns,
    check_schema,
    column_array,
    transition_arrays,
)
from ray_rewards.data.packed import UnsafeDataError, unpack_array
from ray_rewards.data.parquet import relabel_parquet
from ray_rewards.data.relabel import relabel_dataset, root_cause

__all__ = [
    "ACTIONS",
    "NEXT_OBS",
    "OBS",
    "REWARDS",
    "RLLIB_COLUMNS",
    "TERMINATEDS",
    "TRUNCATEDS",
    "UnsafeDataError",
    "check_columns",
    "check_schema",
    "column_array",
    "relabel_dataset",
    "relabel_parquet",
    "root_cause",
    "transition_arrays",
    "unpack_array",
]
