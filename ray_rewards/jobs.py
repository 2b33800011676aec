r"""Cluster job entrypoints: each job reads one config file and writes to one storage path.

Submit a job to any Ray cluster (local, cloud, KubeRay) with::

    ray job submit --address http://HEAD:8265 --working-dir cluster/jobs \
        -- python -m ray_rewards.jobs pipeline --config pipeline.yaml

Jobs (``JOBS``), each the library's own function run on the cluster:

- ``pipeline``: the end-to-end preference-learning job
  (:func:`ray_rewards.train.pipeline.run`): rollouts, oracle preferences, reward
  training with Ray Train, PPO on the learned reward vs the true reward.
- ``train``: reward training alone (:func:`ray_rewards.train.trainer.train`).
- ``rllib``: any RLlib algorithm trained on a saved reward net
  (:func:`ray_rewards.rllib.with_learned_reward`).
- ``relabel``: a learned-reward column added to Parquet transitions
  (:func:`ray_rewards.data.relabel_dataset`).

Config file (YAML or JSON): a mapping with ``storage_path`` (a local path or a URI
that ``pyarrow.fs`` understands: ``s3://``, ``gs://``, ``abfs://``, ``hdfs://``) and
one section named after the job, whose keys are the fields of that job's settings
(``PipelineConfig``, ``TrainConfig``, :class:`RLlibJobConfig`,
:class:`RelabelJobConfig`). Unknown keys, missing keys, wrong types and a section
for another job are errors that name the key, what was expected and what came.
Relative local paths are resolved against the config file's directory (not the
job's working directory, which Ray picks).

Results: ``<storage_path>/results.json`` (the job, its settings, metrics, output
files, timings and *placement*: which cluster nodes ran the driver and every task
and actor of the job, from Ray's state API) is written last, atomically, so its
presence means the job finished. Next to it: ``reward_net.pt`` (pipeline, train;
relabel with ``update_stats``), ``checkpoint/`` (rllib: RLlib's checkpoint with
``reward_net.pt`` inside), ``relabeled/`` (relabel: Parquet).

Multi-node note: Ray Train checkpoints, the pipeline's Parquet data and reward
file are read by tasks on other nodes, so those must live where every node sees
them: a cloud URI or a shared filesystem (NFS/EFS, a ReadWriteMany volume). The
pipeline writes local files, so with a URI ``storage_path`` it needs ``work_dir``
on a shared filesystem and uploads the results when done.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import time
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import click

from ray_rewards import serialize

RESULTS_FILE = "results.json"
NET_FILE = "reward_net.pt"


# ------------------------------------------------------------------------------------
# Settings of the jobs this module defines (pipeline and train reuse the library's)
# ------------------------------------------------------------------------------------


@dataclass
class RLlibJobConfig:
    """An RLlib algorithm trained on a saved reward net.

    Attributes:
        reward: path or URI of a net saved by ``ray_rewards.serialize.save``.
        algorithm: a registered RLlib algorithm name (``PPO``, ``APPO``, ``SAC``...).
        config: ``AlgorithmConfig`` settings by their attribute names, as
            ``AlgorithmConfig.update_from_dict`` takes them (``env``,
            ``num_env_runners``, ``custom_resources_per_env_runner``,
            ``num_learners``, ``num_gpus_per_learner``, ``lr``...); ``model_config``
            goes to ``rl_module(model_config=...)``.
        reward_options: keyword arguments of ``with_learned_reward`` (``mode``,
            ``coef``, ``update_stats``, ``env_actions``, ``predict_kwargs``).
        iterations, env_steps: stop after this many ``train()`` calls or sampled env
            steps, whichever comes first (at least one is required).
        checkpoint: save the final algorithm (with the net) to
            ``<storage_path>/checkpoint``.
    """

    reward: str
    algorithm: str = "PPO"
    config: dict[str, Any] = field(default_factory=dict)
    reward_options: dict[str, Any] = field(default_factory=dict)
    iterations: int | None = None
    env_steps: int | None = None
    checkpoint: bool = True

    def __post_init__(self) -> None:
        if self.iterations is None and self.env_steps is None:
            raise ValueError("rllib: give iterations, env_steps or both (when to stop)")
        for name in ("iterations", "env_steps"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"rllib.{name}: expected >= 1, got {value}")


@dataclass
class RelabelJobConfig:
    """Parquet transitions relabeled with a saved reward net (``relabel_dataset``'s options).

    Attributes:
        input: Parquet file or directory (local path or URI) with RLlib's columns.
        reward: path or URI of the saved net.
        column: the new column; reward_type: a ``load_reward`` type or None for the
            net's ``predict_processed``; update_stats: update the net's normalization
            statistics with every batch, merged over all actors, and save the net.
        batch_size, concurrency, num_cpus, num_gpus: rows per forward pass, number of
            actors, and resources of each (a GPU per actor puts the net on CUDA).
        predict_kwargs: more keyword arguments of ``predict_processed``.
    """

    input: str
    reward: str
    column: str = "learned_rewards"
    reward_type: str | None = None
    update_stats: bool = False
    batch_size: int = 1024
    concurrency: int = 1
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    predict_kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class JobSpec:
    """How a job reads its section: the settings class, the fields the job sets itself
    (refused in the file), and the fields holding paths (resolved like storage_path).
    """

    settings: Callable[[], type]
    owned: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()


def _pipeline_config() -> type:
    from ray_rewards.train.pipeline import PipelineConfig

    return PipelineConfig


def _train_config() -> type:
    from ray_rewards.train.trainer import TrainConfig

    return TrainConfig


JOBS: dict[str, JobSpec] = {
    "pipeline": JobSpec(_pipeline_config, owned=("output_dir",)),
    "train": JobSpec(
        _train_config,
        owned=("output", "storage_path"),
        paths=("train_data", "eval_data", "init_net"),
    ),
    "rllib": JobSpec(lambda: RLlibJobConfig, paths=("reward",)),
    "relabel": JobSpec(lambda: RelabelJobConfig, paths=("input", "reward")),
}
# Keys besides the job's section (``work_dir``: the pipeline's shared scratch space).
_TOP_LEVEL = {"storage_path", "work_dir"}


@dataclass
class JobConfig:
    """A parsed config file: which job, its settings and where its results go."""

    job: str
    storage_path: str
    settings: Any
    work_dir: str | None = None
    source: str | None = None


# ------------------------------------------------------------------------------------
# Reading and checking config files
# ------------------------------------------------------------------------------------


def load_config(path: str | os.PathLike, job: str, storage_path: str | None = None) -> JobConfig:
    """Read and check the config file of ``job``; ``storage_path`` overrides the file's
    (a relative override is relative to the working directory, like any command-line path).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a mapping, unknown job, unknown/missing keys or a section for
            another job (the message names the file and the key).
        TypeError: a value of the wrong type.
    """
    import yaml

    path = os.path.abspath(os.fspath(path))
    if storage_path is not None and not _is_uri(storage_path):
        storage_path = os.path.abspath(storage_path)
    if job not in JOBS:
        raise ValueError(f"unknown job {job!r}; expected one of {sorted(JOBS)}")
    with open(path) as f:
        try:
            data = yaml.safe_load(f)
        except yaml.YAMLError as err:
            raise ValueError(f"{path}: not valid YAML/JSON: {err}") from None
    return parse_config(
        data, job, base_dir=os.path.dirname(path), source=path, storage_path=storage_path
    )


def parse_config(
    data: Any,
    job: str,
    *,
    base_dir: str | None = None,
    source: str | None = None,
    storage_path: str | None = None,
) -> JobConfig:
    """Check a config mapping (see :func:`load_config`); relative paths join ``base_dir``."""
    where = source or "config"
    if job not in JOBS:
        raise ValueError(f"unknown job {job!r}; expected one of {sorted(JOBS)}")
    if not isinstance(data, Mapping):
        raise ValueError(f"{where}: expected a mapping of settings, got {type(data).__name__}")
    others = sorted(set(data) & (set(JOBS) - {job}))
    if others:
        raise ValueError(
            f"{where}: has a section for job {others[0]!r}, but the job to run is {job!r}"
        )
    unknown = sorted(set(data) - _TOP_LEVEL - {job})
    if unknown:
        raise ValueError(
            f"{where}: unknown top-level keys {unknown}; expected 'storage_path', "
            f"'{job}' (the job's settings) and, for the pipeline, 'work_dir'"
        )
    if "work_dir" in data and job != "pipeline":
        raise ValueError(f"{where}: 'work_dir' is a pipeline setting; job {job!r} has none")
    base_dir = base_dir or os.getcwd()
    storage = storage_path if storage_path is not None else data.get("storage_path")
    if not isinstance(storage, str) or not storage:
        raise ValueError(
            f"{where}: 'storage_path' is required: a local path or a URI (s3://..., gs://...) "
            f"where results go; got {storage!r}"
        )
    section = data.get(job, {})
    if section is None:
        section = {}
    if not isinstance(section, Mapping):
        raise ValueError(f"{where}: '{job}' must be a mapping, got {type(section).__name__}")
    spec = JOBS[job]
    owned = sorted(set(section) & set(spec.owned))
    if owned:
        raise ValueError(
            f"{where}: {job}.{owned[0]} is set by the job from 'storage_path'; remove it"
        )
    section = {
        k: _resolve_path(v, base_dir) if k in spec.paths and isinstance(v, str) else v
        for k, v in section.items()
    }
    settings = build_settings(spec.settings(), section, prefix=job, exclude=spec.owned)
    work_dir = data.get("work_dir")
    if work_dir is not None:
        if not isinstance(work_dir, str) or _is_uri(work_dir):
            raise ValueError(
                f"{where}: 'work_dir' must be a local (shared) directory path, got {work_dir!r}"
            )
        work_dir = _resolve_path(work_dir, base_dir)
    storage = _resolve_path(storage, base_dir)
    if job == "pipeline" and _is_uri(storage) and work_dir is None:
        raise ValueError(
            f"{where}: storage_path {storage!r} is a URI, but the pipeline writes local "
            "files: set 'work_dir' to a directory every node can read (e.g. an NFS/EFS "
            "mount); results are uploaded to storage_path at the end"
        )
    if job == "train":
        for name in ("train_data", "eval_data"):
            value = getattr(settings, name)
            if value is not None and _is_uri(value):
                raise ValueError(
                    f"{where}: train.{name} is a URI ({value!r}); reward training reads "
                    "Parquet from a path every node can read (a shared filesystem)"
                )
    return JobConfig(job, storage, settings, work_dir, source)


def build_settings(
    cls: type, values: Mapping[str, Any], *, prefix: str, exclude: Sequence[str] = ()
) -> Any:
    """``cls(**values)`` for a dataclass, after checking names and types of the values.

    YAML lists become tuples where the field is a tuple. Errors name ``prefix.key``.
    """
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in exclude}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"{prefix}: unknown keys {unknown}; known keys: {sorted(fields)}")
    missing = sorted(
        name
        for name, f in fields.items()
        if name not in values
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    )
    if missing:
        raise ValueError(f"{prefix}: missing required keys {missing}")
    hints = typing.get_type_hints(cls)
    kwargs = {name: _check_type(v, hints[name], f"{prefix}.{name}") for name, v in values.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise type(err)(f"{prefix}: {err}") from None


def _check_type(value: Any, hint: Any, name: str) -> Any:
    """``value`` (converted list -> tuple where needed) if it fits ``hint``, else TypeError."""
    converted = _convert(value, hint)
    if converted is _MISMATCH:
        raise TypeError(f"{name}: expected {_type_name(hint)}, got {value!r}")
    return converted


_MISMATCH = object()


def _convert(value: Any, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for member in typing.get_args(hint):
            out = _convert(value, member)
            if out is not _MISMATCH:
                return out
        return _MISMATCH
    if hint is type(None):
        return None if value is None else _MISMATCH
    if hint is bool:
        return value if isinstance(value, bool) else _MISMATCH
    if hint is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else _MISMATCH
    if hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return float(value) if ok else _MISMATCH
    if hint is str:
        return value if isinstance(value, str) else _MISMATCH
    if origin is tuple or hint is tuple:
        if not isinstance(value, (list, tuple)):
            return _MISMATCH
        args = typing.get_args(hint)
        item = args[0] if len(args) == 2 and args[1] is Ellipsis else Any
        items = [_convert(v, item) for v in value]
        return _MISMATCH if any(v is _MISMATCH for v in items) else tuple(items)
    if origin is list or hint is list:
        return list(value) if isinstance(value, (list, tuple)) else _MISMATCH
    if origin is dict or hint is dict:
        return dict(value) if isinstance(value, Mapping) else _MISMATCH
    if origin is collections.abc.Callable or hint is collections.abc.Callable:
        return value if callable(value) else _MISMATCH
    return value if isinstance(hint, type) and isinstance(value, hint) else _MISMATCH


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(hint))
    if hint is type(None):
        return "null"
    if typing.get_origin(hint) is collections.abc.Callable:
        return "a callable"
    return getattr(hint, "__name__", str(hint)) if typing.get_origin(hint) is None else str(hint)


def _is_uri(path: str) -> bool:
    return "://" in path


def _resolve_path(path: str, base_dir: str) -> str:
    """URIs as they are; ``~`` expanded; relative paths joined to ``base_dir``."""
    if _is_uri(path):
        return path
    return os.path.normpath(os.path.join(base_dir, os.path.expanduser(path)))


def storage_join(storage_path: str, *names: str) -> str:
    """``names`` under a storage path (a URI keeps its scheme and ``/`` separators)."""
    if _is_uri(storage_path):
        return "/".join([storage_path.rstrip("/"), *names])
    return os.path.join(storage_path, *names)


# ------------------------------------------------------------------------------------
# Running the jobs
# ------------------------------------------------------------------------------------


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
        output=storage_join(cfg.storage_path, NET_FILE),
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
    from ray.tune.error import TuneError
    from ray.tune.registry import get_trainable_cls

    try:
        config = get_trainable_cls(settings.algorithm).get_default_config()
    except (TuneError, ValueError) as err:
        raise ValueError(f"rllib.algorithm: {err} (e.g. PPO, APPO, IMPALA, SAC, DQN)") from None
    options = dict(settings.config)
    model_config = options.pop("model_config", None)
    for key in options:
        attr = config._translate_special_keys(key, warn_deprecated=False)
        if not hasattr(config, attr):
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
            files = {"checkpoint": path, "reward_net": storage_join(path, NET_FILE)}
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
    if not (_is_uri(settings.input) or _is_uri(output)):
        # Local to local: relabel_parquet publishes the output only when complete.
        rows = data.relabel_parquet(settings.input, output, reward, **options)
    else:
        ds = ray.data.read_parquet(settings.input)
        data.relabel_dataset(ds, reward, **options).write_parquet(output)
        rows = ray.data.read_parquet(output).count()
    files = {"relabeled": output}
    if settings.update_stats:
        files["reward_net"] = storage_join(cfg.storage_path, NET_FILE)
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
    serialize.write_bytes(path, json.dumps(results, indent=2).encode())
    _log(f"{cfg.job} job done in {results['seconds']:.0f}s; results: {path}")
    return results


def work_placement() -> dict[str, Any]:
    """Which nodes ran this job: the driver, and every task and actor of the job by node.

    ``{"driver_node": id, "nodes": {id: {"address", "head", "resources"}},
    "tasks": {id: {name: count}}, "actors": {id: {class: count}}}``. Tasks and actors
    come from Ray's state API (it needs the dashboard, which ``ray job submit`` has);
    without it ``error`` says why and only the driver and nodes are given.
    """
    import ray

    ctx = ray.get_runtime_context()
    nodes = {
        n["NodeID"]: {
            "address": n["NodeManagerAddress"],
            "head": "node:__internal_head__" in n["Resources"],
            "resources": n["Resources"],
        }
        for n in ray.nodes()
        if n["Alive"]
    }
    out: dict[str, Any] = {"driver_node": ctx.get_node_id(), "nodes": nodes}
    try:
        from ray.util import state

        job = [("job_id", "=", ctx.get_job_id())]
        tasks = state.list_tasks(filters=job, limit=10_000, raise_on_missing_output=False)
        actors = state.list_actors(filters=job, limit=10_000, raise_on_missing_output=False)
    except Exception as err:  # noqa: BLE001 - any failure only costs the report
        out["error"] = f"state API unavailable: {type(err).__name__}: {err}"
        return out
    out["tasks"] = _count_by_node(
        (t.node_id, t.func_or_class_name) for t in tasks if t.type == "NORMAL_TASK"
    )
    out["actors"] = _count_by_node((a.node_id, a.class_name) for a in actors)
    return out


def _count_by_node(pairs: Any) -> dict[str, dict[str, int]]:
    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for node, name in pairs:
        if node:
            counts[node][name] += 1
    return {node: dict(c) for node, c in counts.items()}


def _exists(path: str) -> bool:
    if not _is_uri(path):
        return os.path.exists(path)
    import pyarrow.fs as pafs

    fs, fs_path = pafs.FileSystem.from_uri(path)
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


@click.command()
@click.argument("job", type=click.Choice(sorted(JOBS)))
@click.option(
    "--config", "config_path", required=True, help="The job's YAML (or JSON) config file."
)
@click.option(
    "--storage-path", default=None, help="Where results go; overrides the file's storage_path."
)
def main(job: str, config_path: str, storage_path: str | None) -> None:
    """Run JOB (pipeline, train, rllib, relabel) with the settings in --config."""
    try:
        cfg = load_config(config_path, job, storage_path=storage_path)
    except (OSError, ValueError, TypeError) as err:
        raise click.UsageError(str(err)) from err
    run_job(cfg)


if __name__ == "__main__":
    main()
