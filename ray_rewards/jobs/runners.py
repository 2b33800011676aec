"""Running the jobs: each runner is the library's own function on the connected cluster,
and :func:`run_job` writes ``results.json`` when one finishes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

from ray_rewards import serialize, storage
from ray_rewards.jobs.placement import work_placement
from ray_rewards.jobs.specs import JobConfig, RelabelJobConfig, RLlibJobConfig

RESULTS_FILE = "results.json"


def storage_join(storage_path: str, *names: str) -> str:
    """``names`` under a storage path (a URI keeps its scheme and ``/`` separators)."""
    if storage.is_uri(storage_path):
        return "/".join([storage_path.rstrip("/"), *names])
    return os.path.join(storage_path, *names)


def run_pipeline(cfg: JobConfig) -> dict[str, Any]:
    """The end-to-end pipeline in ``work_dir`` (default: storage_path), then uploaded."""
    from ray_rewards.train import pipeline

    out_dir = cfg.work_dir or cfg.storage_path
    settings = dataclasses.replace(cfg.settings, output_dir=out_dir)
    summary = pipeline.run(settings)
    if os.path.normpath(out_dir) != os.path.normpath(cfg.storage_path):
        _upload_dir(out_dir, cfg.storage_path)
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


def algorithm_config(settings: RLlibJobConfig) -> Any:
    """The job's RLlib ``AlgorithmConfig`` (before the learned reward is wired in).

    Raises ValueError naming the key for an unknown algorithm or setting.
    """
    from ray_rewards.rllib import _compat

    try:
        config = _compat.algorithm_class(settings.algorithm).get_default_config()
    except ValueError as err:
        raise ValueError(f"rllib.algorithm: {err}") from None
    options = dict(settings.config)
    model_config = options.pop("model_config", None)
    for key in options:
        if not hasattr(config, _compat.config_attribute(config, key)):
            raise ValueError(
                f"rllib.config.{key}: {type(config).__name__} has no such setting "
                "(keys are AlgorithmConfig attribute names, e.g. num_env_runners, lr)"
            )
    try:
        config.update_from_dict(options)
        if model_config is not None:
            config.rl_module(model_config=model_config)
    except (AttributeError, TypeError, ValueError) as err:
        raise ValueError(f"rllib.config: {err}") from None
    return config


def run_rllib(cfg: JobConfig) -> dict[str, Any]:
    """Train until ``iterations``/``env_steps``; metrics per iteration, checkpoint at the end.

    ``episode_return_mean`` is the env's own reward (what the env runners saw);
    ``learned_reward_mean`` is the net's reward on the transitions learned from.
    """
    import ray

    from ray_rewards.rllib import with_learned_reward

    settings: RLlibJobConfig = cfg.settings
    config = with_learned_reward(
        algorithm_config(settings), settings.reward, **settings.reward_options
    )
    algo = config.build_algo()
    history: list[dict[str, Any]] = []
    files: dict[str, str] = {}
    try:
        runner_nodes = algo.env_runner_group.foreach_env_runner(
            lambda _: ray.get_runtime_context().get_node_id(), local_env_runner=False
        )
        steps = 0
        while (settings.iterations is None or len(history) < settings.iterations) and (
            settings.env_steps is None or steps < settings.env_steps
        ):
            result = algo.train()
            runners = result.get("env_runners", {})
            steps = int(runners.get("num_env_steps_sampled_lifetime", 0))
            history.append(
                {
                    "iteration": len(history) + 1,
                    "env_steps": steps,
                    "episode_return_mean": _float(runners.get("episode_return_mean")),
                    "learned_reward_mean": _float(result.get("learned_reward", {}).get("mean")),
                }
            )
            _log(f"rllib: iteration {len(history)}: {history[-1]}")
        if settings.checkpoint:
            # save_to_path returns the path inside the filesystem (no URI scheme): keep ours.
            path = storage_join(cfg.storage_path, "checkpoint")
            algo.save_to_path(path)
            files = {"checkpoint": path, "reward_net": storage_join(path, storage.NET_FILE)}
    finally:
        algo.stop()
    return {"history": history, "env_runner_nodes": runner_nodes, "files": files}


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
}


def run_job(cfg: JobConfig) -> dict[str, Any]:
    """Run the job on the connected Ray cluster; write and return ``results.json``'s content."""
    import ray

    path = storage_join(cfg.storage_path, RESULTS_FILE)
    if _exists(path):
        raise FileExistsError(
            f"{path} exists: {cfg.storage_path} holds a finished job's results; choose a "
            "new storage_path (or pass --storage-path) rather than mixing two runs"
        )
    if not ray.is_initialized():
        # Under ``ray job submit`` RAY_ADDRESS names the cluster; elsewhere Ray's usual
        # lookup applies (a local cluster, or a new local instance).
        ray.init()
    start = time.perf_counter()
    _log(f"{cfg.job} job on {len(ray.nodes())} node(s); results -> {cfg.storage_path}")
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
    _log(f"{cfg.job} job done in {results['seconds']:.0f}s; results: {path}")
    return results


def _exists(path: str) -> bool:
    import pyarrow.fs as pafs

    fs, fs_path = storage.resolve(path)
    if fs is None:
        return os.path.exists(fs_path)
    return fs.get_file_info(fs_path).type != pafs.FileType.NotFound


def _upload_dir(local_dir: str, uri: str) -> None:
    import pyarrow.fs as pafs

    _log(f"uploading {local_dir} -> {uri}")
    pafs.copy_files(local_dir, uri)


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


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


def _log(msg: str) -> None:
    print(f"[ray_rewards.jobs {time.strftime('%H:%M:%S')}] {msg}", flush=True)
