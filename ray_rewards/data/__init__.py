"""Bulk relabeling of recorded transitions with a learned reward, locally or on Ray Data.

:func:`relabel_dataset` adds a learned-reward column to a ``ray.data.Dataset`` of
transitions in RLlib's column layout (``obs``, ``actions``, ``new_obs``,
``rewards``, ``terminateds``, ``truncateds``), keeping every original column.
:func:`relabel_parquet` (the ``ray-rewards relabel`` command) does Parquet to
Parquet and publishes the output only when the whole job succeeded. Both choose
an engine (``engine="auto"``): this process, streaming, or a pool of Ray Data
actors, which pays a fixed start-up cost per call and wins only when it spreads
the work (see :mod:`~ray_rewards.data.engine`). Importing this package does not
import Ray; only the Ray engine does.

Modules:

- :mod:`~ray_rewards.data.columns`: RLlib's column names, schema and column
  checks, the arrays a reward net reads.
- :mod:`~ray_rewards.data.packed`: RLlib's packed (compressed) columns, decoded
  without running code from the data.
- :mod:`~ray_rewards.data.batches`: one relabeling step (Arrow batch in, batch plus
  reward column out), shared by the engines, and the option checks.
- :mod:`~ray_rewards.data.engine`: the automatic choice of engine and its reasons.
- :mod:`~ray_rewards.data.local`: the local engine, Parquet file by file.
- :mod:`~ray_rewards.data.ray_engine`: the Ray Data actor pool and the merge of
  normalization statistics; relabeling a Dataset in the driver.
- :mod:`~ray_rewards.data.relabel`: :func:`relabel_dataset`.
- :mod:`~ray_rewards.data.parquet`: :func:`relabel_parquet`.
"""

from __future__ import annotations

from ray_rewards.data.batches import AS_REWARDS, ENV_REWARDS
from ray_rewards.data.columns import (
    ACTIONS,
    NEXT_OBS,
    OBS,
    REWARDS,
    RLLIB_COLUMNS,
    TERMINATEDS,
    TRUNCATEDS,
    arrow_column,
    check_columns,
    check_schema,
    column_array,
    transition_arrays,
)
from ray_rewards.data.engine import LOCAL_MAX_ROWS, choose_engine
from ray_rewards.data.packed import UnsafeDataError, unpack_array
from ray_rewards.data.parquet import relabel_parquet
from ray_rewards.data.relabel import relabel_dataset, root_cause

__all__ = [
    "ACTIONS",
    "AS_REWARDS",
    "ENV_REWARDS",
    "NEXT_OBS",
    "OBS",
    "REWARDS",
    "RLLIB_COLUMNS",
    "TERMINATEDS",
    "LOCAL_MAX_ROWS",
    "TRUNCATEDS",
    "UnsafeDataError",
    "arrow_column",
    "check_columns",
    "choose_engine",
    "check_schema",
    "column_array",
    "relabel_dataset",
    "relabel_parquet",
    "root_cause",
    "transition_arrays",
    "unpack_array",
]
