"""Resuming a named reward-training run only with the config that started it.

A run with a ``name`` keeps its checkpoints under ``<storage_path>/<name>``, and a
second run under the same name resumes from them. That is right when the second
run only extends or steers the first (more epochs, more failures allowed, another
output), and wrong when it would train another net on other data while keeping
the old weights. So the fields that define the net, the data and the optimization
are stored beside the checkpoints when a run starts, and a later run whose
defining fields differ is refused, naming them, unless it asks to start fresh.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import TYPE_CHECKING, Any

from ray_rewards import storage

if TYPE_CHECKING:
    from ray_rewards.train.trainer import TrainConfig

CONFIG_FILE = "ray_rewards_train_config.json"

# Fields that only extend or steer a run: they may change between its attempts.
STEERING_FIELDS = frozenset(
    {
        "epochs",
        "max_failures",
        "verbose",
        "storage_path",
        "name",
        "output",
        "eval_data",
        "num_workers",
        "use_gpu",
        "cpus_per_worker",
        "gpu_wait_s",
        "engine",
    }
)


def run_dir(cfg: TrainConfig) -> str | None:
    """Where a named run keeps its checkpoints (Ray Train's layout); None if unnamed."""
    if cfg.name is None:
        return None
    base = cfg.storage_path or os.path.join(os.path.expanduser("~"), "ray_results")
    base = storage.absolute(base)
    return f"{base.rstrip('/')}/{cfg.name}"


def defining_fields(cfg: TrainConfig) -> dict[str, Any]:
    """The fields that define what a run trains, as JSON-able values."""
    import dataclasses

    out = {}
    for f in dataclasses.fields(cfg):
        if f.name in STEERING_FIELDS:
            continue
        value = getattr(cfg, f.name)
        if callable(value):
            value = f"{value.__module__}.{value.__qualname__}"
        out[f.name] = json.loads(json.dumps(value, default=str))
    return out


def check_resume(cfg: TrainConfig, *, fresh: bool = False) -> None:
    """Refuse to resume a named run whose defining fields changed; record them otherwise.

    Args:
        cfg: the new run's config.
        fresh: delete the run's earlier checkpoints and start over instead.

    Raises:
        ValueError: the run exists and was started with other defining fields (the
            message names each key with its old and new value, and the way out).
    """
    folder = run_dir(cfg)
    if folder is None:
        return
    if fresh:
        _remove(folder)
    path = f"{folder}/{CONFIG_FILE}"
    new = defining_fields(cfg)
    try:
        old = json.loads(storage.read_bytes(path))
    except FileNotFoundError:
        old = None
    if old is not None and old != new:
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        lines = [f"  {k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed]
        raise ValueError(
            f"run {cfg.name!r} in {folder} was started with another config and would resume "
            "from its checkpoints; these keys define the net or the data and changed:\n"
            + "\n".join(lines)
            + "\nKeep them, choose a new name, or start fresh (ray-rewards train --fresh; "
            "train(cfg, fresh=True)), which deletes the earlier checkpoints."
        )
    storage.write_bytes(path, json.dumps(new, indent=2, sort_keys=True).encode())


def _remove(folder: str) -> None:
    fs, path = storage.resolve(folder)
    if fs is None:
        shutil.rmtree(path, ignore_errors=True)
    else:
        from pyarrow import fs as pafs

        if fs.get_file_info(path).type != pafs.FileType.NotFound:
            fs.delete_dir(path)


__all__ = ["CONFIG_FILE", "STEERING_FIELDS", "check_resume", "defining_fields", "run_dir"]
