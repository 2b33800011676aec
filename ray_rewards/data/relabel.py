"""Relabeling a Ray Dataset of transitions with a learned reward: :func:`relabel_dataset`.

Two engines (:mod:`~ray_rewards.data.engine` chooses, or ``engine=`` forces one):
``"ray"`` relabels in a pool of Ray Data actors (lazy), ``"local"`` pulls the
batches into this process and relabels them here (no actor pool to start; a
materialized Dataset). Both run the same
:class:`~ray_rewards.data.batches.BatchRelabeler`, so columns, values and errors
are the same either way.

Normalization statistics stay frozen by default. With ``update_stats=True`` each
net copy (every actor's, or the local one) updates its statistics batch by batch
as ``NormalizedRewardNet.predict_processed`` does; once every batch ran, what the
copies added is merged (exactly) into the ``RewardNet`` object passed in. A failed
run merges nothing. The Dataset is materialized before :func:`relabel_dataset`
returns then.

This module does not import Ray until a Dataset is relabeled.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ray_rewards.data.batches import (
    BatchRelabeler,
    as_source,
    check_action_units,
    check_options,
    check_output_column,
    load_source,
    local_device,
)
from ray_rewards.data.columns import check_schema
from ray_rewards.data.engine import choose_engine, connected_cluster
from ray_rewards.data.local import torch_threads
from ray_rewards.reward_nets import RewardNet

if TYPE_CHECKING:
    import ray

    from ray_rewards.actors.wire import RewardSource


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
    engine: str = "auto",
    actions: str = "env",
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
        concurrency: number of Ray Data actors, each with a copy of the net (Ray engine).
        num_gpus: GPUs per actor (the net runs on CUDA when it gets one); with the
            local engine, > 0 runs the net on this process's GPU.
        num_cpus: CPUs per actor (Ray engine); the local engine runs torch with as many
            threads (at least one).
        predict_kwargs: more keyword arguments for ``predict_processed`` (or the
            reward type's loader), e.g. ``{"alpha": 1.0}``.
        engine: ``"auto"`` (:func:`~ray_rewards.data.engine.choose_engine`: local
            unless GPUs, ``concurrency > 1``, a driver node that takes no tasks, or a
            large input on a multi-node cluster), ``"local"`` or ``"ray"``.
        actions: the units of the ``actions`` column: ``"env"``, what the env received
            (``ray-rewards record`` output, the units the net takes), or ``"module"``,
            the RLModule's normalized actions (RLlib's own offline output with
            ``normalize_actions``, its default), mapped to the net's action space as
            RLlib's ``unsquash_action`` does before the net sees them.

    Returns:
        The dataset with the reward column added (lazy with the Ray engine unless
        ``update_stats``; materialized with the local engine).

    Raises:
        ValueError: a missing column (named), a reserved output column, an unknown
            ``actions`` (or ``"module"`` for a Dict or Tuple action space), or
            ``update_stats`` without a RewardNet object. Batches whose shapes do not
            fit the net fail during execution with a ValueError naming the column.
    """
    from ray_rewards.data import ray_engine

    check_options(
        reward,
        column=column,
        reward_type=reward_type,
        update_stats=update_stats,
        batch_size=batch_size,
        concurrency=concurrency,
        actions=actions,
    )
    # The driver's copy checks the file and the schema before any worker starts.
    if isinstance(reward, RewardNet):
        net = reward
    else:
        net = None if reward_type == "zero" else load_source(reward, "cpu")
    if net is not None and reward_type != "zero":
        check_action_units(actions, net.action_space)
    schema = ds.schema(fetch_if_missing=False)
    if schema is not None:
        check_output_column(column, schema.names)
        check_schema(list(schema.names), list(schema.types), net)
    kwargs = dict(predict_kwargs or {})
    chosen = choose_engine(
        engine,
        rows=_known_rows(ds) if engine == "auto" else None,
        shared_input=True,
        concurrency=concurrency,
        num_gpus=num_gpus,
        cluster=connected_cluster(),
    )
    if chosen == "local":
        relabel = BatchRelabeler(
            net if net is not None and reward_type is None else as_source(reward),
            reward_type,
            column,
            update_stats,
            kwargs,
            local_device(num_gpus),
            actions,
        )
        with torch_threads(num_cpus):
            out = ray_engine.relabel_in_driver(ds, relabel, batch_size)
        if update_stats:
            relabel.merge_into(reward)
        return out
    from ray_rewards.actors.wire import to_wire

    return ray_engine.relabel_with_actors(
        ds,
        reward,
        to_wire(reward),
        column=column,
        reward_type=reward_type,
        update_stats=update_stats,
        batch_size=batch_size,
        concurrency=concurrency,
        num_gpus=num_gpus,
        num_cpus=num_cpus,
        predict_kwargs=kwargs,
        actions=actions,
    )


def _known_rows(ds: ray.data.Dataset) -> int | None:
    """The Dataset's rows when its metadata tells without running anything (e.g.
    read_parquet's footers), else None.
    """
    try:
        return ds._meta_count()
    except Exception:  # noqa: BLE001 - a private API: unknown is a valid answer
        return None


def root_cause(err: BaseException) -> str:
    """The original error line (``ValueError: column 'obs': ...``) of a Ray Data failure.

    A failed ``map_batches`` reaches the driver as Ray's UserCodeException, with the
    worker's error only in its text; this picks that error out for a short message.
    """
    lines = re.findall(r"^\s*((?:\w+\.)*\w*(?:Error|Exception): .*)$", str(err), re.M)
    own = [ln for ln in lines if not ln.startswith(("ray.", "UserCodeException"))]
    return (own or lines or [str(err)])[-1]


__all__ = ["relabel_dataset", "root_cause"]
