"""Bulk relabeling of recorded transitions with a learned reward, on Ray Data.

:func:`relabel_dataset` adds a learned-reward column to a ``ray.data.Dataset`` of
transitions in RLlib's column layout (``obs``, ``actions``, ``new_obs``,
``rewards``, ``terminateds``, ``truncateds``), keeping every original column.
It is one ``map_batches`` stage over a pool of actors, each holding a copy of
the net (on a GPU when ``num_gpus`` asks for one), so a recorded data set is
relabeled at the speed of the cluster. :func:`relabel_parquet` (the
``ray-rewards relabel`` command) does Parquet to Parquet and publishes the output
only when the whole job succeeded.

Reading RLlib's offline output. ``config.offline_data(output=...,
output_write_episodes=False)`` writes one row per transition. By default
(``output_compress_columns=["obs", "new_obs"]``) observations are stored as
base64 strings of LZ4-compressed pickles of numpy arrays; with compression off
they are Ray tensor columns, and Parquet written by other tools may hold lists.
All three are read here. The packed form is a pickle, and a data file must not
be able to run code, so it is unpickled with an allowlist of exactly the numpy
globals an array or scalar needs (anything else is refused, naming it). The
net's ``done`` input is ``terminateds`` (a truncated episode's next state still
has a future); ``truncateds`` and ``rewards`` are passed through untouched.

Errors: a missing column, or a tensor column whose row shape does not fit the
net's spaces, is refused by ``relabel_dataset`` from the schema before anything
runs (ValueError naming the column). What only the rows show (packed or list
columns) fails in the batch, naming the column; Ray Data delivers that as its
UserCodeException, and :func:`root_cause` picks the message out.

Normalization statistics stay frozen by default. With ``update_stats=True``
each actor's copy updates its statistics block by block as
``NormalizedRewardNet.predict_processed`` does, and reports what each batch
added (a :class:`~ray_rewards.stats.Moments` per layer) to a small collector
actor: the side channel, because per-block statistics are not rows. Since they
exist only once every block ran, the dataset is executed (materialized) before
``relabel_dataset`` returns, and the merged statistics (the net's own plus every
batch's, an exact merge) are written into the ``RewardNet`` object passed in.
Ray Data re-runs a batch whose worker died; such a batch is counted again
(at-least-once, as any side effect of a Ray Data task).
"""

from __future__ import annotations

import base64
import io
import os
import pickle
import re
import shutil
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray
from gymnasium import spaces
from ray.data.block import BlockAccessor

from ray_rewards import networks, serialize
from ray_rewards.actors import (
    RewardSource,
    actor_device,
    load_reward_source,
    reward_file,
    set_running_moments,
    to_wire,
)
from ray_rewards.reward_nets import NormalizedRewardNet, RewardNet
from ray_rewards.stats import Moments

# RLlib's ``ray.rllib.core.columns.Columns`` names (spelled out so that reading
# data does not import RLlib; a test checks they agree).
OBS = "obs"
ACTIONS = "actions"
NEXT_OBS = "new_obs"
REWARDS = "rewards"
TERMINATEDS = "terminateds"
TRUNCATEDS = "truncateds"
RLLIB_COLUMNS = (OBS, ACTIONS, NEXT_OBS, REWARDS, TERMINATEDS, TRUNCATEDS)

# The columns a reward net reads, by the argument they feed.
_INPUTS = (("state", OBS), ("action", ACTIONS), ("next_state", NEXT_OBS), ("done", TERMINATEDS))


class UnsafeDataError(pickle.UnpicklingError):
    """A packed column asked to unpickle something other than a numpy array."""


# What pickles of numpy arrays and scalars import (numpy 1.x and 2.x names).
_NUMPY_GLOBALS = frozenset(
    (module, name)
    for core in ("numpy.core", "numpy._core")
    for module, name in (
        (f"{core}.numeric", "_frombuffer"),
        (f"{core}.multiarray", "_reconstruct"),
        (f"{core}.multiarray", "scalar"),
    )
) | {("numpy", "ndarray"), ("numpy", "dtype")}


class _NumpyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _NUMPY_GLOBALS:
            raise UnsafeDataError(
                f"refused to unpickle {module}.{name} from a packed data column: only numpy "
                "arrays are read from data files (nothing from the file was run)"
            )
        return super().find_class(module, name)


def unpack_array(packed: str | bytes) -> np.ndarray:
    """Decode one value of RLlib's packed columns (``ray.rllib.utils.compression.pack``:
    base64 of LZ4 of a pickled array) without running code from the data.
    """
    import lz4.frame

    raw = lz4.frame.decompress(base64.b64decode(packed))
    return np.asarray(_NumpyUnpickler(io.BytesIO(raw)).load())


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


def check_columns(columns: Any, needed: tuple[str, ...] = tuple(c for _, c in _INPUTS)) -> None:
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


def _frozen_or(update_stats: bool, net: RewardNet, kwargs: Mapping[str, Any]) -> dict:
    """Keyword arguments for ``predict_processed``: statistics frozen unless asked (the
    rule of ``load_reward``: only nets with a NormalizedRewardNet get the keyword).
    """
    asked = {"update_stats": True} if update_stats else {}
    return serialize._frozen_stats(net, {**kwargs, **asked})


@ray.remote(num_cpus=0)
class _MomentsCollector:
    """Side channel: collects what each relabeled batch added to the statistics."""

    def __init__(self) -> None:
        self._added: list[dict[str, Moments]] = []

    def add(self, added: dict[str, Moments]) -> None:
        self._added.append(added)

    def added(self) -> list[dict[str, Moments]]:
        return self._added


class _RelabelBatches:
    """The ``map_batches`` callable: one reward-net copy per Ray Data actor."""

    def __init__(
        self,
        wire: bytes | str,
        reward_type: str | None,
        column: str,
        update_stats: bool,
        predict_kwargs: dict[str, Any],
        collector: Any,
    ):
        device = actor_device()
        self.column = column
        self.collector = collector
        self.net: RewardNet | None = None
        if reward_type is None:
            self.net = load_reward_source(wire, device)
            kwargs = _frozen_or(update_stats, self.net, predict_kwargs)
            self.reward_fn: Callable[..., np.ndarray] = serialize.NetRewardFn(
                self.net, "predict_processed", kwargs
            )
        else:
            self.reward_fn = _load_typed_reward(reward_type, wire, predict_kwargs)
            self.net = getattr(self.reward_fn, "net", None)
            if self.net is not None:
                self.net.to(device)

    def __call__(self, batch: pa.Table) -> pa.Table:
        # Arrow in, Arrow out: only the four input columns become numpy; every other
        # column (ids, packed strings, extra model outputs) passes through untouched.
        check_columns(batch.column_names)
        inputs = [c for _, c in _INPUTS]
        arrays = transition_arrays(BlockAccessor.for_block(batch).to_numpy(inputs), self.net)
        before = networks.norm_moments(self.net) if self.collector is not None else None
        try:
            rewards = np.asarray(self.reward_fn(*arrays))
        except ValueError as err:
            names = ", ".join(f"{arg}={col!r}" for arg, col in _INPUTS)
            raise ValueError(f"{err} (the net's inputs come from columns {names})") from err
        if self.collector is not None:
            after = networks.norm_moments(self.net)
            ray.get(self.collector.add.remote({k: after[k].subtract(before[k]) for k in after}))
        if self.column in batch.column_names:
            batch = batch.drop_columns([self.column])
        return batch.append_column(self.column, pa.array(rewards))


def _load_typed_reward(reward_type: str, wire: bytes | str, kwargs: dict[str, Any]) -> Any:
    """``serialize.load_reward`` for saved-format bytes or a path (no env to check)."""
    with reward_file(wire) as path:
        return serialize.load_reward(reward_type, path, None, **kwargs)


def relabel_dataset(
    ds: ray.data.Dataset,
    reward: RewardSource,
    *,
    column: str = "learned_rewards",
    reward_type: str | None = None,
    update_stats: bool = False,
    batch_size: int = 1024,
    concurrency: int = 1,
    num_gpus: float = 0,
    num_cpus: float = 1,
    predict_kwargs: Mapping[str, Any] | None = None,
) -> ray.data.Dataset:
    """Add a learned-reward column to a Dataset of transitions (see the module docstring).

    Args:
        ds: transitions with RLlib's columns ``obs``, ``actions``, ``new_obs`` and
            ``terminateds`` (others, ``rewards`` included, are kept as they are).
        reward: a RewardNet (shipped to the workers as bytes of the saved format), a
            path saved by ray_rewards, or the bytes of such a file.
        column: name of the new column (float rewards, one per row); RLlib's own
            column names are refused so the original data is never overwritten.
        reward_type: a :func:`~ray_rewards.serialize.load_reward` type (e.g.
            ``"RewardNet_unnormalized"``); None uses the net's ``predict_processed``.
        update_stats: update the normalization statistics with every batch and merge
            them back into ``reward`` (which must then be a RewardNet object); the
            dataset is materialized before returning.
        batch_size: rows per forward pass.
        concurrency: number of Ray Data actors, each with a copy of the net.
        num_gpus: GPUs per actor (the net runs on CUDA when it gets one).
        num_cpus: CPUs per actor.
        predict_kwargs: more keyword arguments for ``predict_processed`` (or the
            reward type's loader), e.g. ``{"alpha": 1.0}``.

    Returns:
        The dataset with the reward column added (lazy unless ``update_stats``).

    Raises:
        ValueError: a missing column (named), a reserved output column, or
            ``update_stats`` without a RewardNet object. Batches whose shapes do not
            fit the net fail during execution with a ValueError naming the column.
    """
    if column in RLLIB_COLUMNS:
        raise ValueError(
            f"column: {column!r} is one of RLlib's columns {list(RLLIB_COLUMNS)}; choose "
            "another name (the original data is kept; rename it afterwards if you want)"
        )
    if update_stats and not isinstance(reward, RewardNet):
        raise ValueError(
            "update_stats=True merges the statistics back into the net: pass the RewardNet "
            f"object, not a {type(reward).__name__}"
        )
    if update_stats and reward_type is not None:
        raise ValueError("update_stats=True uses the net's predict_processed: omit reward_type")
    if update_stats:
        for m in reward.modules():
            layer = getattr(m, "normalize_output_layer", None)
            if isinstance(m, NormalizedRewardNet) and not isinstance(layer, networks.RunningNorm):
                raise TypeError(
                    f"update_stats=True: the output normalization is {type(layer).__name__}; "
                    "only RunningNorm statistics merge across the relabeling actors"
                )
    if batch_size < 1 or concurrency < 1:
        raise ValueError(
            f"batch_size and concurrency: expected >= 1, got {batch_size} and {concurrency}"
        )
    if reward_type is not None:
        serialize.reward_registry.get(reward_type)  # KeyError naming the valid types
    # The driver's copy checks the file and the schema before any worker starts.
    if isinstance(reward, RewardNet):
        net = reward
    else:
        net = None if reward_type == "zero" else load_reward_source(reward, "cpu")
    schema = ds.schema(fetch_if_missing=False)
    if schema is not None:
        check_schema(list(schema.names), list(schema.types), net)
    collector = _MomentsCollector.remote() if update_stats else None
    base = networks.norm_moments(reward) if update_stats else None
    out = ds.map_batches(
        _RelabelBatches,
        fn_constructor_kwargs=dict(
            wire=to_wire(reward),
            reward_type=reward_type,
            column=column,
            update_stats=update_stats,
            predict_kwargs=dict(predict_kwargs or {}),
            collector=collector,
        ),
        batch_size=batch_size,
        batch_format="pyarrow",
        concurrency=concurrency,
        num_gpus=num_gpus,
        num_cpus=num_cpus,
        udf_modifying_row_count=False,
    )
    if not update_stats:
        return out
    try:
        out = out.materialize()
        added = ray.get(collector.added.remote())
    finally:
        ray.kill(collector)
    set_running_moments(
        reward,
        {name: Moments.merge_all([m, *(a[name] for a in added)]) for name, m in base.items()},
    )
    return out


def relabel_parquet(
    input_path: str,
    output_path: str,
    reward: RewardSource,
    **options: Any,
) -> int:
    """Relabel Parquet files of transitions into a new Parquet directory.

    Reads ``input_path`` (a file or a directory, searched recursively, e.g. RLlib's
    offline output), adds the reward column with :func:`relabel_dataset`
    (``options`` go there) and writes ``output_path``. The output is written to a
    temporary sibling directory and renamed into place only when everything
    succeeded, so ``output_path`` never holds a partial result. Returns the number
    of rows written.

    Raises:
        FileExistsError: ``output_path`` exists and is not an empty directory.
    """
    output_path = os.path.abspath(output_path)
    if os.path.exists(output_path) and not (
        os.path.isdir(output_path) and not os.listdir(output_path)
    ):
        raise FileExistsError(f"output {output_path} already exists; choose a new path")
    if not isinstance(reward, RewardNet) and options.get("reward_type") != "zero":
        reward = load_reward_source(reward, "cpu")  # a bad file fails here, not in workers
    first = _first_row(input_path)
    if isinstance(reward, RewardNet) and first is not None:
        # Packed columns show their row shapes only when read: check one row now, so
        # a net that does not fit the data fails in seconds with a plain ValueError.
        check_columns(first.column_names)
        inputs = [c for _, c in _INPUTS]
        transition_arrays(BlockAccessor.for_block(first).to_numpy(inputs), reward)
    ds = ray.data.read_parquet(input_path if "://" in input_path else os.path.abspath(input_path))
    parent = os.path.dirname(output_path)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(output_path)}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        os.makedirs(tmp)
        relabel_dataset(ds, reward, **options).write_parquet(tmp)
        rows = sum(
            _parquet_rows(os.path.join(tmp, f)) for f in os.listdir(tmp) if f.endswith(".parquet")
        )
        os.replace(tmp, output_path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return rows


def _first_row(path: str) -> pa.Table | None:
    """The first row of the first Parquet file at ``path`` (file or directory, searched
    recursively; local or URI), read with pyarrow alone; None when there is no row.
    """
    if "://" in path:
        fs, root = pafs.FileSystem.from_uri(path)
    else:
        fs, root = pafs.LocalFileSystem(), os.path.abspath(path)
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"input {path}: no such file or directory")
    if info.type == pafs.FileType.Directory:
        found = fs.get_file_info(pafs.FileSelector(root, recursive=True))
        files = sorted(f.path for f in found if f.is_file and f.path.endswith(".parquet"))
    else:
        files = [root]
    for name in files:
        with fs.open_input_file(name) as f:
            batch = next(pq.ParquetFile(f).iter_batches(batch_size=1), None)
        if batch is not None and batch.num_rows:
            return pa.Table.from_batches([batch])
    return None


def root_cause(err: BaseException) -> str:
    """The original error line (``ValueError: column 'obs': ...``) of a Ray Data failure.

    A failed ``map_batches`` reaches the driver as Ray's UserCodeException, with the
    worker's error only in its text; this picks that error out for a short message.
    """
    lines = re.findall(r"^\s*((?:\w+\.)*\w*(?:Error|Exception): .*)$", str(err), re.M)
    own = [ln for ln in lines if not ln.startswith(("ray.", "UserCodeException"))]
    return (own or lines or [str(err)])[-1]


def _parquet_rows(path: str) -> int:
    return pq.ParquetFile(path).metadata.num_rows


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
