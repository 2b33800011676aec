"""Running the jobs: each runner is the library's own function on the connected cluster,
and :func:`run_job` writes ``results.json`` when one finishes. The RLlib jobs' runners
(rllib, adversarial, preferences, offline, record) are in :mod:`ray_rewards.jobs.rllib_runners`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

from ray_rewards import serialize, storage
from ray_rewards.jobs.outputs import exists, log, storage_join, upload_dir
from ray_rewards.jobs.placement import work_placement
from ray_rewards.jobs.rllib_runners import (
    run_adversarial,
    run_offline,
    run_preferences,
    run_record,
    run_rllib,
)
from ray_rewards.jobs.specs import JobConfig, RelabelJobConfig

RESULTS_FILE = "results.json"


def run_pipeline(cfg: JobConfig) -> dict[str, Any]:
    """The end-to-end pipeline in ``work_dir`` (default: storage_path), then uploaded."""
    from ray_rewards.train import pipeline

    out_dir = cfg.work_dir or cfg.storage_path
    settings = dataclasses.replace(cfg.settings, output_dir=out_dir)
    summary = pipeline.run(settings)
    if os.path.normpath(out_dir) != os.path.normpath(cfg.storage_path):
        upload_dir(out_dir, cfg.storage_path)
    files = {
        name: storage_join(cfg.storage_path, os.path.relpath(path, out_dir))
        for name, path in summary["files"].items()
        if path is not None
    }
    return {"summary": summary, "files": files}


def run_train(cfg: JobConfig) -> dict[str, Any]:
    """Reward training as a Ray Train job; the net goes to ``<storage>/reward_net.pt``."""
    from ray_rewards.train import trainer

    settings = dataclasses.replace(
        cfg.settings,
        output=storage_join(cfg.storage_path, storage.NET_FILE),
        storage_path=storage_join(cfg.storage_path, "ray_train"),
    )
    result = trainer.train(settings)
    return {
        "history": result.history,
        "files": {"reward_net": result.net_path, "checkpoint": result.checkpoint_path},
    }


def run_relabel(cfg: JobConfig) -> dict[str, Any]:
    """Relabel ``input`` into ``<storage>/relabeled`` (Parquet); with ``update_stats`` the
    net with merged statistics goes to ``<storage>/reward_net.pt``.
    """
    import ray.data

    from ray_rewards import data

    settings: RelabelJobConfig = cfg.settings
    output = storage_join(cfg.storage_path, "relabeled")
    reward: Any = settings.reward
    if settings.update_stats:
        reward = serialize.load(settings.reward, device="cpu")
    options = {
        "column": settings.column,
        "reward_type": settings.reward_type,
        "update_stats": settings.update_stats,
        "batch_size": settings.batch_size,
        "concurrency": settings.concurrency,
        "num_cpus": settings.num_cpus,
        "num_gpus": settings.num_gpus,
        "predict_kwargs": settings.predict_kwargs,
        "actions": settings.actions,
    }
    if not (storage.is_uri(settings.input) or storage.is_uri(output)):
        # Local to local: relabel_parquet publishes the output only when complete.
        rows = data.relabel_parquet(settings.input, output, reward, **options)
    else:
        ds = ray.data.read_parquet(settings.input)
        data.relabel_dataset(ds, reward, **options).write_parquet(output)
        rows = ray.data.read_parquet(output).count()
    files = {"relabeled": output}
    if settings.update_stats:
        files["reward_net"] = storage_join(cfg.storage_path, storage.NET_FILE)
        serialize.save(reward, files["reward_net"])
    return {"rows": rows, "column": settings.column, "files": files}


RUNNERS: dict[str, Callable[[JobConfig], dict[str, Any]]] = {
    "pipeline": run_pipeline,
    "train": run_train,
    "rllib": run_rllib,
    "relabel": run_relabel,
    "record": run_record,
    "adversarial": run_adversarial,
    "preferences": run_preferences,
    "offline": run_offline,
}


def run_job(cfg: JobConfig) -> dict[str, Any]:
    """Run the job on the connected Ray cluster; write and return ``results.json``'s content."""
    import ray

    path = storage_join(cfg.storage_path, RESULTS_FILE)
    if exists(path):
        raise FileExistsError(
            f"{path} exists: {cfg.storage_path} holds a finished job's results; choose a "
            "new storage_path (or pass --storage-path) rather than mixing two runs"
        )
    if not ray.is_initialized():
        # Under ``ray job submit`` RAY_ADDRESS names the cluster; elsewhere Ray's usual
        # lookup applies (a local cluster, or a new local instance).
        ray.init()
    start = time.perf_counter()
    log(f"{cfg.job} job on {len(ray.nodes())} node(s); results -> {cfg.storage_path}")
    out = RUNNERS[cfg.job](cfg)
    results = {
        "job": cfg.job,
        "config_file": cfg.source,
        "storage_path": cfg.storage_path,
        "settings": _jsonable(dataclasses.asdict(cfg.settings)),
        **_jsonable(out),
        "seconds": time.perf_counter() - start,
        "placement": work_placement(),
    }
    storage.write_bytes(path, json.dumps(results, indent=2).encode())
    log(f"{cfg.job} job done in {results['seconds']:.0f}s; results: {path}")
    return results


def _jsonable(value: Any) -> Any:
    """Plain JSON data: tuples as lists, numpy scalars as numbers, NaN as null."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float):
        return None if value != value else value
    if hasattr(value, "item") and callable(value.item):
        return _jsonable(value.item())
    if value is None or isinstance(value, (bool, int, str)):
        return value
    return repr(value)
