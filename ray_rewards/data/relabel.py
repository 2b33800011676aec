"""Relabeling a Ray Dataset of transitions with a learned reward: :func:`relabel_dataset`.

One ``map_batches`` stage over a pool of actors, each holding a copy of the net
(on a GPU when ``num_gpus`` asks for one), so a recorded data set is relabeled at
the speed of the cluster. A batch whose rows do not fit the net fails in its
worker; Ray Data delivers that as its UserCodeException, and :func:`root_cause`
picks the message out.

Normalization statistics stay frozen by default. With ``update_stats=True``
each actor's copy updates its statistics block by block as
``NormalizedRewardNet.predict_processed`` does, and reports what each batch
added (a :class:`~ray_rewards.stats.Moments` per layer, from a
:class:`~ray_rewards.networks.NormSync`) to a small collector actor: the side
channel, because per-block statistics are not rows. Since they exist only once
every block ran, the dataset is executed (materialized) before
:func:`relabel_dataset` returns, and the merged statistics (the net's own plus
every batch's, an exact merge) are written into the ``RewardNet`` object passed
in. Ray Data re-runs a batch whose worker died; such a batch is counted again
(at-least-once, as any side effect of a Ray Data task).
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import ray

from ray_rewards import networks, storage
from ray_rewards.actors.wire import RewardSource, actor_device, load_reward_source, to_wire
from ray_rewards.data.columns import INPUTS, RLLIB_COLUMNS, check_schema, table_transitions
from ray_rewards.reward_function import (
    NetRewardFn,
    frozen_stats_kwargs,
    load_reward,
    reward_registry,
)
from ray_rewards.reward_nets import NormalizedRewardNet, RewardNet
from ray_rewards.stats import Moments


def _frozen_or(update_stats: bool, net: RewardNet, kwargs: Mapping[str, Any]) -> dict:
    """Keyword arguments for ``predict_processed``: statistics frozen unless asked (the
    rule of ``load_reward``: only nets with a NormalizedRewardNet get the keyword).
    """
    asked = {"update_stats": True} if update_stats else {}
    return frozen_stats_kwargs(net, {**kwargs, **asked})


def _load_typed_reward(reward_type: str, wire: bytes | str, kwargs: dict[str, Any]) -> Any:
    """``load_reward`` for a path or saved-format bytes (no env to check).

    Reward-type loaders (users register their own) read a path, so bytes are
    written to a temporary file for them.
    """
    if isinstance(wire, str):
        return load_reward(reward_type, wire, None, **kwargs)
    with tempfile.TemporaryDirectory(prefix="ray_rewards_") as tmp:
        path = os.path.join(tmp, storage.NET_FILE)
        storage.write_bytes(path, wire)
        return load_reward(reward_type, path, None, **kwargs)


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
            self.reward_fn: Callable[..., np.ndarray] = NetRewardFn(
                self.net, "predict_processed", kwargs
            )
        else:
            self.reward_fn = _load_typed_reward(reward_type, wire, predict_kwargs)
            self.net = getattr(self.reward_fn, "net", None)
            if self.net is not None:
                self.net.to(device)
        self.sync = networks.NormSync(self.net) if collector is not None else None

    def __call__(self, batch: pa.Table) -> pa.Table:
        # Arrow in, Arrow out: only the four input columns become numpy; every other
        # column (ids, packed strings, extra model outputs) passes through untouched.
        arrays = table_transitions(batch, self.net)
        try:
            rewards = np.asarray(self.reward_fn(*arrays))
        except ValueError as err:
            names = ", ".join(f"{arg}={col!r}" for arg, col in INPUTS)
            raise ValueError(f"{err} (the net's inputs come from columns {names})") from err
        if self.sync is not None:
            added = self.sync.report()
            self.sync.reset()
            ray.get(self.collector.add.remote(added))
        check_output_column(self.column, batch.column_names)
        return batch.append_column(self.column, pa.array(rewards))


def check_output_column(column: Any, existing: Sequence[str] = ()) -> None:
    """ValueError unless ``column`` is a usable name for the new column: a non-empty
    string that is neither one of RLlib's columns nor already in the data (the
    original data is never overwritten).
    """
    if not isinstance(column, str) or not column.strip():
        raise ValueError(f"column: expected a non-empty column name, got {column!r}")
    if column in RLLIB_COLUMNS:
        raise ValueError(
            f"column: {column!r} is one of RLlib's columns {list(RLLIB_COLUMNS)}; choose "
            "another name (the original data is kept; rename it afterwards if you want)"
        )
    if column in existing:
        raise ValueError(
            f"column: the data already has a column {column!r}; choose another name "
            "(nothing is overwritten)"
        )


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
            column names and columns the data already has are refused, so the
            original data is never overwritten.
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
    check_output_column(column)
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
        reward_registry.get(reward_type)  # KeyError naming the valid types
    # The driver's copy checks the file and the schema before any worker starts.
    if isinstance(reward, RewardNet):
        net = reward
    else:
        net = None if reward_type == "zero" else load_reward_source(reward, "cpu")
    schema = ds.schema(fetch_if_missing=False)
    if schema is not None:
        check_output_column(column, schema.names)
        check_schema(list(schema.names), list(schema.types), net)
    collector = _MomentsCollector.remote() if update_stats else None
    sync = networks.NormSync(reward) if update_stats else None
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
    sync.absorb(networks.merge_norm_reports(sync.synced, added))
    return out


def root_cause(err: BaseException) -> str:
    """The original error line (``ValueError: column 'obs': ...``) of a Ray Data failure.

    A failed ``map_batches`` reaches the driver as Ray's UserCodeException, with the
    worker's error only in its text; this picks that error out for a short message.
    """
    lines = re.findall(r"^\s*((?:\w+\.)*\w*(?:Error|Exception): .*)$", str(err), re.M)
    own = [ln for ln in lines if not ln.startswith(("ray.", "UserCodeException"))]
    return (own or lines or [str(err)])[-1]


__all__ = ["relabel_dataset", "root_cause"]
