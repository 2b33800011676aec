"""Where the training loop runs: a Ray Train worker, or the calling process.

The loop (:mod:`ray_rewards.train.loop`) asks its session for its rank, its data,
the checkpoint to resume from and where to report; everything else is the same
code either way. Both write checkpoints in one layout, ``<run>/epoch_<N>/`` holding
``reward_net.pt`` and ``train_state.pt``, so that a run's checkpoints are found
whichever way it ran.

- :class:`RayTrainSession`: inside a ``TorchTrainer`` worker (data through Ray Data,
  DDP, checkpoints reported to Ray Train, which keeps two).
- :class:`LocalSession`: in this process, without Ray: Parquet read with pyarrow,
  checkpoints published atomically into the run's folder (two kept), resume from
  the newest. What a small job (one CPU worker) and a loop that retrains often need.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
from torch import nn

from ray_rewards import storage

KEEP_CHECKPOINTS = 2
_EPOCH_DIR = re.compile(r"^epoch_(\d+)$")


def epoch_dir_name(epoch: int) -> str:
    """The folder name of an epoch's checkpoint."""
    return f"epoch_{epoch:05d}"


class RayTrainSession:
    """The loop's view of a Ray Train worker."""

    def __init__(self) -> None:
        import ray.train

        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()

    def data(self, name: str) -> Any:
        """This worker's shard of dataset ``name`` (every row: see the trainer's doc)."""
        import ray.train

        return ray.train.get_dataset_shard(name)

    @contextlib.contextmanager
    def resume_dir(self) -> Iterator[str | None]:
        """The folder of the checkpoint to resume from, or None for a fresh start."""
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            yield None
            return
        with checkpoint.as_directory() as d:
            yield d

    def prepare(self, net: nn.Module) -> nn.Module:
        """The net under DDP (with several workers), on this worker's device."""
        import ray.train.torch

        # Each worker keeps its own input statistics during an epoch (no buffer
        # broadcast); they are merged at the epoch's end.
        return ray.train.torch.prepare_model(
            net, parallel_strategy_kwargs={"forward_sync_buffers": False}
        )

    def report(self, metrics: dict[str, Any], epoch: int, write: Callable[[str], None]) -> None:
        """Report the epoch's metrics; rank 0 also its checkpoint, written by ``write``."""
        import ray.train

        if self.rank != 0:
            ray.train.report(metrics, checkpoint=None)
            return
        with tempfile.TemporaryDirectory() as d:
            write(d)
            ray.train.report(
                metrics,
                checkpoint=ray.train.Checkpoint.from_directory(d),
                checkpoint_dir_name=epoch_dir_name(epoch),
            )


class LocalSession:
    """The loop in this process: rank 0 of 1, checkpoints in ``run_dir`` (a local path)."""

    rank = 0
    world = 1

    def __init__(self, run_dir: str, datasets: Mapping[str, dict[str, np.ndarray]]):
        self.run_dir = run_dir
        self.datasets = datasets
        self.last_checkpoint: str | None = latest_checkpoint(run_dir)

    def data(self, name: str) -> dict[str, np.ndarray]:
        """Dataset ``name`` as numpy columns."""
        return self.datasets[name]

    @contextlib.contextmanager
    def resume_dir(self) -> Iterator[str | None]:
        """The newest checkpoint of the run, or None."""
        yield self.last_checkpoint

    def prepare(self, net: nn.Module) -> nn.Module:
        """The net itself: one process needs no DDP."""
        return net

    def report(self, metrics: dict[str, Any], epoch: int, write: Callable[[str], None]) -> None:
        """Publish the epoch's checkpoint (atomically) and drop all but the newest two."""
        target = os.path.join(self.run_dir, epoch_dir_name(epoch))
        with storage.publish_dir(target, overwrite=True) as tmp:
            write(tmp)
        self.last_checkpoint = target
        for old in _checkpoints(self.run_dir)[:-KEEP_CHECKPOINTS]:
            shutil.rmtree(old, ignore_errors=True)


def _checkpoints(run_dir: str) -> list[str]:
    """The run's epoch folders, oldest first."""
    if not os.path.isdir(run_dir):
        return []
    found = []
    for name in os.listdir(run_dir):
        m = _EPOCH_DIR.match(name)
        if m and os.path.isdir(os.path.join(run_dir, name)):
            found.append((int(m.group(1)), os.path.join(run_dir, name)))
    return [path for _, path in sorted(found)]


def latest_checkpoint(run_dir: str) -> str | None:
    """The run's newest epoch checkpoint (folders are published whole), or None."""
    found = _checkpoints(run_dir)
    return found[-1] if found else None


__all__ = ["LocalSession", "RayTrainSession", "epoch_dir_name", "latest_checkpoint"]
