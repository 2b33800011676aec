"""Arrow schemas for reward-training data, and Parquet I/O through Ray Data.

Two kinds of tables, with RLlib's column names:

- transitions: ``obs``, ``actions``, ``new_obs``, ``terminateds`` and, as a loss
  needs them, ``rewards`` (regression), ``is_expert`` (adversarial labels) and
  ``action_logp`` (AIRL: the generator policy's log-probability of the action);
- preference pairs: two fragments of ``T`` transitions each (``obs_1``,
  ``actions_1``, ``new_obs_1``, ``terminateds_1`` and the same with ``_2``) and
  ``preference``, the probability that fragment 1 is preferred.

Multi-dimensional values are PyArrow's canonical ``fixed_shape_tensor`` type, so the
files read back as ``(N, *shape)`` numpy arrays in Ray Data and in any Arrow reader.
Arrow tensors hold numbers only, so the ``terminateds`` of a fragment are 0/1 uint8
(a transition's scalar ``terminateds`` is bool).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
from gymnasium import spaces

from ray_rewards import preprocessing, storage

TRANSITION_COLUMNS = ("obs", "actions", "new_obs", "terminateds")
OPTIONAL_TRANSITION_COLUMNS = {
    "rewards": pa.float32(),
    "is_expert": pa.bool_(),
    "action_logp": pa.float32(),
    "truncateds": pa.bool_(),
    "eps_id": pa.int64(),
}
FRAGMENT_COLUMNS = TRANSITION_COLUMNS
PREFERENCE_COLUMNS = (
    *(f"{c}_1" for c in FRAGMENT_COLUMNS),
    *(f"{c}_2" for c in FRAGMENT_COLUMNS),
    "preference",
)


def _element(space: spaces.Space) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and numpy dtype of one element of ``space`` as stored (not one-hot)."""
    preprocessing.check_supported(space)
    if isinstance(space, spaces.Discrete):
        return (), np.dtype(np.int64)
    if isinstance(space, spaces.MultiDiscrete):
        return tuple(space.nvec.shape), np.dtype(np.int64)
    if isinstance(space, spaces.MultiBinary):
        return tuple(np.shape(np.zeros(space.shape))), np.dtype(np.int8)
    return tuple(space.shape), np.dtype(space.dtype)


def _arrow_type(shape: tuple[int, ...], dtype: np.dtype) -> pa.DataType:
    if not shape:
        return pa.from_numpy_dtype(dtype)
    # Arrow tensors hold numbers only: flags inside a tensor are stored as 0/1 uint8.
    value_type = pa.uint8() if dtype == np.bool_ else pa.from_numpy_dtype(dtype)
    return pa.fixed_shape_tensor(value_type, list(shape))


def _space_fields(
    observation_space: spaces.Space,
    action_space: spaces.Space,
    prefix: tuple[int, ...] = (),
    suffix: str = "",
) -> list[pa.Field]:
    obs_shape, obs_dtype = _element(observation_space)
    act_shape, act_dtype = _element(action_space)
    obs_type = _arrow_type(prefix + obs_shape, obs_dtype)
    return [
        pa.field(f"obs{suffix}", obs_type, nullable=False),
        pa.field(f"actions{suffix}", _arrow_type(prefix + act_shape, act_dtype), nullable=False),
        pa.field(f"new_obs{suffix}", obs_type, nullable=False),
        pa.field(f"terminateds{suffix}", _arrow_type(prefix, np.dtype(bool)), nullable=False),
    ]


def transitions_schema(
    observation_space: spaces.Space,
    action_space: spaces.Space,
    extra: Iterable[str] = (),
) -> pa.Schema:
    """Schema of a transitions table; ``extra`` names optional columns to include
    (any of ``rewards``, ``is_expert``, ``action_logp``).
    """
    fields = _space_fields(observation_space, action_space)
    for name in extra:
        if name not in OPTIONAL_TRANSITION_COLUMNS:
            raise ValueError(
                f"transitions_schema: unknown extra column {name!r}; expected one of "
                f"{sorted(OPTIONAL_TRANSITION_COLUMNS)}"
            )
        fields.append(pa.field(name, OPTIONAL_TRANSITION_COLUMNS[name], nullable=False))
    return pa.schema(fields, metadata={"ray_rewards.kind": "transitions"})


def preference_schema(
    observation_space: spaces.Space, action_space: spaces.Space, fragment_length: int
) -> pa.Schema:
    """Schema of a preference-pairs table with fragments of ``fragment_length`` steps."""
    if fragment_length < 1:
        raise ValueError(f"fragment_length must be >= 1, got {fragment_length}")
    prefix = (fragment_length,)
    fields = [
        *_space_fields(observation_space, action_space, prefix, "_1"),
        *_space_fields(observation_space, action_space, prefix, "_2"),
        pa.field("preference", pa.float64(), nullable=False),
    ]
    return pa.schema(
        fields,
        metadata={
            "ray_rewards.kind": "preference_pairs",
            "ray_rewards.fragment_length": str(fragment_length),
        },
    )


def _field_shape_dtype(field: pa.Field) -> tuple[tuple[int, ...], np.dtype]:
    if isinstance(field.type, pa.FixedShapeTensorType):
        return tuple(field.type.shape), np.dtype(field.type.value_type.to_pandas_dtype())
    return (), np.dtype(field.type.to_pandas_dtype())


def to_table(columns: Mapping[str, Any], schema: pa.Schema) -> pa.Table:
    """Build a table of ``schema`` from numpy columns of shape ``(N, *field_shape)``.

    Values are cast to the schema's dtypes where numpy's same-kind casting allows
    (float64 -> float32 yes, float -> int no). Raises ValueError on missing or
    unexpected columns, wrong shapes, unsafe dtypes or an empty table.
    """
    names = set(schema.names)
    if set(columns) != names:
        raise ValueError(
            f"to_table: expected columns {sorted(names)}, got {sorted(columns)} "
            f"(missing {sorted(names - set(columns))}, unexpected {sorted(set(columns) - names)})"
        )
    num_rows = len(np.asarray(columns[schema.names[0]]))
    if num_rows == 0:
        raise ValueError("to_table: expected at least one row, got 0")
    arrays = []
    for field in schema:
        shape, dtype = _field_shape_dtype(field)
        arr = np.asarray(columns[field.name])
        if arr.shape != (num_rows, *shape):
            raise ValueError(
                f"to_table: column {field.name!r}: expected shape {(num_rows, *shape)}, "
                f"got {arr.shape}"
            )
        if not np.can_cast(arr.dtype, dtype, casting="same_kind"):
            raise ValueError(
                f"to_table: column {field.name!r}: expected values castable to {dtype}, "
                f"got {arr.dtype}"
            )
        arr = np.ascontiguousarray(arr, dtype=dtype)
        if shape:
            arrays.append(pa.FixedShapeTensorArray.from_numpy_ndarray(arr))
        else:
            arrays.append(pa.array(arr, type=field.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def write_parquet(
    data: Mapping[str, Any] | pa.Table,
    path: str | os.PathLike,
    schema: pa.Schema,
    *,
    overwrite: bool = False,
) -> str:
    """Write ``data`` (numpy columns or a table) as a local Parquet directory (pyarrow, in
    this process: no Ray needed).

    The files are written to a temporary directory beside ``path`` and renamed into
    place (:func:`ray_rewards.storage.publish_dir`), so readers never see a
    half-written data set. Returns the absolute path. Raises FileExistsError when
    ``path`` exists (other than as an empty folder) and not ``overwrite``.
    """
    import pyarrow.parquet as pq

    table = data if isinstance(data, pa.Table) else to_table(data, schema)
    if not table.schema.equals(schema, check_metadata=False):
        raise ValueError(f"write_parquet: expected schema\n{schema}\ngot\n{table.schema}")
    path = os.path.abspath(os.fspath(path))
    with storage.publish_dir(path, overwrite=overwrite) as tmp:
        pq.write_table(
            table.replace_schema_metadata(schema.metadata), os.path.join(tmp, "part-00000.parquet")
        )
    return path


def read_parquet(path: str | os.PathLike, columns: Sequence[str] = ()) -> Any:
    """Open a Parquet data set (local path or URI) as a ``ray.data.Dataset``, checking
    it has ``columns``.

    Raises FileNotFoundError for a missing local path and ValueError naming the
    missing columns (reading the schema only, before any data moves).
    """
    import ray.data

    path = storage.absolute(path)
    if not storage.is_uri(path) and not os.path.exists(path):
        raise FileNotFoundError(f"read_parquet: no data at {path}")
    ds = ray.data.read_parquet(path)
    missing = sorted(set(columns) - set(ds.schema().names))
    if missing:
        raise ValueError(
            f"read_parquet: {path}: expected columns {sorted(columns)}, missing {missing} "
            f"(has {sorted(ds.schema().names)})"
        )
    return ds


def read_numpy(path: str | os.PathLike, columns: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """Read a Parquet data set (local path or URI) into numpy columns ``(N, *shape)``
    with pyarrow alone, in this process; ``columns`` must be there (the same checks
    and errors as :func:`read_parquet`).
    """
    import pyarrow.parquet as pq

    path = storage.absolute(path)
    if not storage.is_uri(path) and not os.path.exists(path):
        raise FileNotFoundError(f"read_parquet: no data at {path}")
    fs, files = storage.parquet_files(path, "read_parquet:")
    tables = []
    for name in files:
        with fs.open_input_file(name) as f:
            tables.append(pq.read_table(f))
    table = pa.concat_tables(tables) if tables else None
    if table is None or not table.num_rows:
        raise ValueError(f"read_parquet: {path}: the data set is empty")
    missing = sorted(set(columns) - set(table.column_names))
    if missing:
        raise ValueError(
            f"read_parquet: {path}: expected columns {sorted(columns)}, missing {missing} "
            f"(has {sorted(table.column_names)})"
        )
    out = {}
    for name in table.column_names:
        column = table.column(name).combine_chunks()
        if isinstance(column.type, pa.FixedShapeTensorType):
            out[name] = column.to_numpy_ndarray()
        else:
            out[name] = column.to_numpy(zero_copy_only=False)
    return out


def collect_numpy(batches: Any) -> dict[str, np.ndarray]:
    """Concatenate a Ray Dataset or DataIterator into numpy columns ``(N, *shape)``."""
    parts: dict[str, list[np.ndarray]] = {}
    for batch in batches.iter_batches(batch_size=None, batch_format="numpy"):
        for name, values in batch.items():
            parts.setdefault(name, []).append(np.asarray(values))
    if not parts:
        raise ValueError("collect_numpy: the data set is empty")
    return {name: np.concatenate(chunks) for name, chunks in parts.items()}
