"""Parquet in, Parquet out: :func:`relabel_parquet` (the ``ray-rewards relabel`` command).

The input is read where it lies (a local path or a URI); the output is built in a
temporary sibling folder and published by :func:`ray_rewards.storage.publish_dir`
only when the whole job succeeded, so the output path never holds a partial
result.
"""

from __future__ import annotations

import os
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import ray

from ray_rewards import storage
from ray_rewards.actors.wire import RewardSource, load_reward_source
from ray_rewards.data.columns import table_transitions
from ray_rewards.data.relabel import relabel_dataset
from ray_rewards.reward_nets import RewardNet


def relabel_parquet(
    input_path: str,
    output_path: str,
    reward: RewardSource,
    **options: Any,
) -> int:
    """Relabel Parquet files of transitions into a new Parquet directory.

    Reads ``input_path`` (a file or a directory, searched recursively, e.g. RLlib's
    offline output), adds the reward column with
    :func:`~ray_rewards.data.relabel_dataset` (``options`` go there) and writes
    ``output_path`` (a local path), published only when everything succeeded.
    Returns the number of rows written.

    Raises:
        FileExistsError: ``output_path`` exists and is not an empty directory.
    """
    _check_output_outside_input(input_path, output_path)
    with storage.publish_dir(output_path) as tmp:
        if not isinstance(reward, RewardNet) and options.get("reward_type") != "zero":
            reward = load_reward_source(reward, "cpu")  # a bad file fails here, not in workers
        first = _first_row(input_path)
        if isinstance(reward, RewardNet) and first is not None:
            # Packed columns show their row shapes only when read: check one row now, so
            # a net that does not fit the data fails in seconds with a plain ValueError.
            table_transitions(first, reward)
        ds = ray.data.read_parquet(storage.absolute(input_path))
        relabel_dataset(ds, reward, **options).write_parquet(tmp)
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


def _first_row(path: str) -> pa.Table | None:
    """The first row of the first Parquet file at ``path`` (file or directory, searched
    recursively; local or URI), read with pyarrow alone; None when there is no row.
    """
    fs, files = storage.parquet_files(path)
    for name in files:
        with fs.open_input_file(name) as f:
            batch = next(pq.ParquetFile(f).iter_batches(batch_size=1), None)
        if batch is not None and batch.num_rows:
            return pa.Table.from_batches([batch])
    return None


__all__ = ["relabel_parquet"]
