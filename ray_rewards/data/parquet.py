"""Parquet in, Parquet out: :func:`relabel_parquet` (the ``ray-rewards relabel`` command).

The input is read where it lies (a local path or a URI); the output is built in a
temporary sibling folder and published by :func:`ray_rewards.storage.publish_dir`
only when the whole job succeeded, so the output path never holds a partial
result. Either engine (:mod:`~ray_rewards.data.engine`) writes the same columns,
rows and values as Parquet parts of that folder: the local one streams file by
file in this process without importing Ray, the Ray one runs Ray Data.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from ray_rewards import storage
from ray_rewards.data.batches import (
    BatchRelabeler,
    as_source,
    check_action_units,
    check_options,
    env_actions,
    load_source,
    local_device,
)
from ray_rewards.data.columns import table_transitions
from ray_rewards.data.engine import choose_engine, connected_cluster
from ray_rewards.data.local import parquet_rows, relabel_files
from ray_rewards.reward_nets import RewardNet

if TYPE_CHECKING:
    from ray_rewards.actors.wire import RewardSource


def relabel_parquet(
    input_path: str,
    output_path: str,
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
) -> int:
    """Relabel Parquet files of transitions into a new Parquet directory.

    Reads ``input_path`` (a file or a directory, searched recursively, e.g. RLlib's
    offline output), adds the reward column as
    :func:`~ray_rewards.data.relabel_dataset` does (same options) and writes
    ``output_path`` (a local path), published only when everything succeeded.
    ``engine="auto"`` applies :func:`~ray_rewards.data.engine.choose_engine` to the
    rows in the files' footers and the Ray cluster this process is connected to (if
    any); ``"local"`` or ``"ray"`` force one. ``actions`` says the units of the
    data's actions: ``"env"`` (``ray-rewards record`` output) or ``"module"`` (RLlib's
    own offline output with ``normalize_actions``). Returns the number of rows written.

    Raises:
        FileExistsError: ``output_path`` exists and is not an empty directory.
    """
    _check_output_outside_input(input_path, output_path)
    check_options(
        reward,
        column=column,
        reward_type=reward_type,
        update_stats=update_stats,
        batch_size=batch_size,
        concurrency=concurrency,
        actions=actions,
    )
    with storage.publish_dir(output_path) as tmp:
        if not isinstance(reward, RewardNet) and reward_type != "zero":
            reward = load_source(reward, "cpu")  # a bad file fails here, not in workers
        fs, files = storage.parquet_files(input_path)
        first = _first_row(fs, files)
        module_units = actions == "module" and reward_type != "zero"
        if isinstance(reward, RewardNet) and module_units:
            check_action_units(actions, reward.action_space)  # refused with or without rows
        if isinstance(reward, RewardNet) and first is not None:
            # Packed columns show their row shapes only when read: check one row now (and
            # that its actions convert), so a net that does not fit the data fails in
            # seconds with a plain ValueError.
            _, first_actions, _, _ = table_transitions(first, reward)
            if module_units:
                env_actions(first_actions, reward.action_space)
        cluster = connected_cluster()
        several = cluster is not None and cluster.nodes > 1
        chosen = choose_engine(
            engine,
            # The footers' row counts matter only on a cluster of several nodes.
            rows=parquet_rows(fs, files) if engine == "auto" and several else None,
            shared_input=storage.is_uri(input_path),
            concurrency=concurrency,
            num_gpus=num_gpus,
            cluster=cluster,
        )
        if chosen == "local":
            relabel = BatchRelabeler(
                as_source(reward),
                reward_type,
                column,
                update_stats,
                dict(predict_kwargs or {}),
                local_device(num_gpus),
                actions,
            )
            rows = relabel_files(fs, files, tmp, relabel, batch_size, num_cpus)
            if update_stats:
                relabel.merge_into(reward)
            return rows
        import ray

        from ray_rewards.data.relabel import relabel_dataset

        ds = ray.data.read_parquet(storage.absolute(input_path))
        relabel_dataset(
            ds,
            reward,
            column=column,
            reward_type=reward_type,
            update_stats=update_stats,
            batch_size=batch_size,
            concurrency=concurrency,
            num_gpus=num_gpus,
            num_cpus=num_cpus,
            predict_kwargs=predict_kwargs,
            engine="ray",
            actions=actions,
        ).write_parquet(tmp)
        return sum(
            pq.ParquetFile(os.path.join(tmp, f)).metadata.num_rows
            for f in os.listdir(tmp)
            if f.endswith(".parquet")
        )


def _check_output_outside_input(input_path: str, output_path: str) -> None:
    """ValueError when the output would land inside the input folder (a later run would
    read its own output as input).
    """
    if storage.is_uri(input_path):
        return
    source = os.path.realpath(input_path)
    target = os.path.realpath(output_path)
    if target == source or target.startswith(source.rstrip(os.sep) + os.sep):
        raise ValueError(
            f"output {output_path} is inside the input {input_path}; choose an output "
            "outside it (a later run would read the output as input)"
        )


def _first_row(fs: Any, files: list[str]) -> pa.Table | None:
    """The first row of the first Parquet file of ``files`` that has one, read with
    pyarrow alone; None when there is no row.
    """
    for name in files:
        with fs.open_input_file(name) as f:
            batch = next(pq.ParquetFile(f).iter_batches(batch_size=1), None)
        if batch is not None and batch.num_rows:
            return pa.Table.from_batches([batch])
    return None


__all__ = ["relabel_parquet"]
