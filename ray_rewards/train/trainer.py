"""Reward training: a Ray Train job (one ``TorchTrainer`` for every loss), or the same
loop in this process when one CPU worker is all a job needs.

:func:`train` runs the loop of :mod:`ray_rewards.train.loop` on ``num_workers``
workers with DDP (Parquet through Ray Data) or, for a small job, in the calling
process (Parquet through pyarrow, no Ray at all: :func:`in_process`); either way it
reports metrics every epoch, checkpoints the net in ray_rewards' format
(``reward_net.pt``, loadable with ``load_reward``) under ``<run>/epoch_<N>`` and
resumes from the latest checkpoint (Ray Train also when a worker dies,
``FailureConfig(max_failures)``).

The result does not depend on the number of workers. Every worker holds the whole
data set; each epoch all of them draw the same permutation, cut it into the same
global batches of ``batch_size`` rows and each takes its own contiguous share of
every batch. A worker scales its mean loss by ``its rows * workers / batch rows``,
so DDP's gradient average is exactly the gradient of the global batch's mean loss:
2 workers take the same optimizer steps as 1 (up to float round-off, which Adam
blows up only in a parameter whose true gradient is 0, such as the last bias under
a Bradley–Terry loss, where it cancels out of every prediction). Holding the
data on every worker is the price; reward-learning data sets (preference pairs,
demonstrations) fit in a worker's memory.

Normalization statistics are never per-worker: input ``RunningNorm`` layers learn
from each worker's share during the epoch and are merged across workers
(:func:`~ray_rewards.networks.merge_norm_updates`) before every checkpoint (layers
that cannot merge, EMANorm, are refused with more than one worker); a
``RunningNorm`` output layer of a ``NormalizedRewardNet`` is fitted, at the last
epoch's end, to the net's rewards on all training transitions (moments merged
across workers), so the saved net's ``predict_processed`` is standardized from the
start of RL (earlier checkpoints, kept for resuming, hold the statistics they
started with).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import torch as th
from gymnasium import spaces

from ray_rewards import networks, serialize, storage
from ray_rewards.config_file import PATH_FIELD, load_settings
from ray_rewards.train import losses, schemas
from ray_rewards.train.loop import STATE_FILE, build_net, ray_train_loop, train_loop
from ray_rewards.train.resume import check_resume, run_dir
from ray_rewards.train.sessions import LocalSession
from ray_rewards.train.validation import config_problems, input_problems, wait_for_gpus

logger = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """What to train, on what, and how (also the schema of ``ray-rewards train CONFIG``).

    A CONFIG file (relative paths are relative to its folder), e.g.::

        train_data: data/train_pairs     # Parquet written by schemas.write_parquet
        eval_data: data/eval_pairs
        loss: preference
        env: Pendulum-v1
        net_kwargs: {hid_sizes: [64, 64]}
        normalize_output: true
        epochs: 10
        batch_size: 64
        num_workers: 2
        output: reward_net.pt

    Attributes:
        train_data: Parquet directory of training rows (``schemas``' columns for the loss).
        loss: ``"preference"``, ``"airl"``, ``"gail"``, ``"regression"``, or a callable
            ``(net, batch, **loss_kwargs) -> (loss, metrics)`` like those of ``losses``.
        output: where the trained net is saved (local path or URI).
        eval_data: optional held-out Parquet directory; its loss and accuracy are
            reported every epoch.
        env: gymnasium id whose spaces the new net takes (resolved on the driver).
        net: reward-net class of ``ray_rewards.reward_nets`` (one of NET_CLASSES).
        net_kwargs: its keyword arguments; ``normalize_input_layer`` may name a norm
            class (``"RunningNorm"``), ``activation`` a ``torch.nn`` class (``"SiLU"``).
        normalize_output: wrap the net in ``NormalizedRewardNet(RunningNorm)`` fitted to
            the net's rewards on the training data (what RL should use).
        init_net: start from this saved net instead of building one (fine-tuning).
        loss_kwargs: keyword arguments of the loss (e.g. ``discount_factor``).
        optimizer, lr, weight_decay: torch optimizer (``adam``/``adamw``/``sgd``).
        epochs: passes over the training data.
        batch_size: global rows per optimizer step, split across workers.
        num_workers, use_gpu, cpus_per_worker: the ScalingConfig.
        seed: initialization and data order.
        storage_path, name: Ray Train's RunConfig (checkpoints and run state).
        max_failures: worker failures to recover from, from the latest checkpoint.
        verbose: log one progress line per epoch (from the rank-0 worker).
        gpu_wait_s: with ``use_gpu``, how long to wait for GPUs to join the cluster (an
            autoscaling one) before failing; 0 fails at once when none are there.
        engine: ``"auto"`` (in this process when one CPU worker with no failures to
            recover suffices, else Ray Train: see :func:`in_process`), ``"local"`` or
            ``"ray"`` to force one. Either way the same loop, checkpoints and resume.
        on_non_finite: rows holding NaN/inf in any number are left out of training,
            evaluation and the statistics and counted (``"skip"``, reported as
            ``num_non_finite_rows``), or stop the run naming them (``"raise"``).

    Every field is checked when the config is made, and every problem is reported
    at once, one line each (ValueError); see :mod:`ray_rewards.train.validation`.
    """

    train_data: str = field(metadata=PATH_FIELD)
    loss: str | losses.LossFn = "preference"
    output: str = field(default=storage.NET_FILE, metadata=PATH_FIELD)
    eval_data: str | None = field(default=None, metadata=PATH_FIELD)
    env: str | None = None
    net: str = "BasicRewardNet"
    net_kwargs: dict[str, Any] = field(default_factory=dict)
    normalize_output: bool = False
    init_net: str | None = field(default=None, metadata=PATH_FIELD)
    loss_kwargs: dict[str, Any] = field(default_factory=dict)
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    epochs: int = 10
    batch_size: int = 64
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    seed: int = 0
    storage_path: str | None = field(default=None, metadata=PATH_FIELD)
    name: str | None = None
    max_failures: int = 0
    verbose: bool = True
    gpu_wait_s: float = 0.0
    on_non_finite: str = "skip"
    engine: str = "auto"

    def __post_init__(self) -> None:
        problems = config_problems(self)
        if problems:
            raise ValueError("\n".join(problems))

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> TrainConfig:
        """Read a YAML (or JSON) mapping of these fields (see :mod:`ray_rewards.config_file`:
        unknown keys and wrong types are errors; relative paths are relative to the file).
        """
        return load_settings(cls, path)


@dataclass
class TrainResult:
    """What :func:`train` produced: the saved net, per-epoch metrics, the last checkpoint."""

    net_path: str
    history: list[dict[str, float]]
    checkpoint_path: str


def env_spaces(env_id: str) -> tuple[spaces.Space, spaces.Space]:
    """Observation and action spaces of a gymnasium env id."""
    import gymnasium as gym

    env = gym.make(env_id)
    try:
        return env.observation_space, env.action_space
    finally:
        env.close()


# ------------------------------------------------------------------------------------
# The driver side
# ------------------------------------------------------------------------------------


def _absolute_paths(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with absolute paths: workers (and a later resume) may run elsewhere."""
    return dataclasses.replace(
        cfg,
        train_data=storage.absolute(cfg.train_data),
        eval_data=cfg.eval_data and storage.absolute(cfg.eval_data),
        init_net=cfg.init_net and storage.absolute(cfg.init_net),
        storage_path=cfg.storage_path and storage.absolute(cfg.storage_path),
    )


def _spaces(cfg: TrainConfig) -> tuple[spaces.Space, spaces.Space]:
    """The spaces of the net to train: ``init_net``'s, else the env's."""
    if cfg.init_net is not None:
        net = serialize.load(cfg.init_net, device="cpu")
        return net.observation_space, net.action_space
    return env_spaces(cfg.env)


def build_trainer(cfg: TrainConfig) -> Any:
    """A ``ray.train.torch.TorchTrainer`` that runs ``cfg`` (call ``.fit()``)."""
    import ray.train
    from ray.train.torch import TorchTrainer

    cfg = _absolute_paths(cfg)
    columns = losses.LOSS_COLUMNS.get(cfg.loss, ()) if isinstance(cfg.loss, str) else ()
    datasets = {"train": schemas.read_parquet(cfg.train_data, columns)}
    if cfg.eval_data:
        datasets["eval"] = schemas.read_parquet(cfg.eval_data, columns)
    # build_net loads init_net itself: its spaces come from the loaded net.
    net = build_net(cfg, *((None, None) if cfg.init_net else env_spaces(cfg.env)))
    obs_space, act_space = net.observation_space, net.action_space
    if cfg.num_workers > 1:
        networks.require_mergeable(net, f"num_workers={cfg.num_workers}", ValueError)
    return TorchTrainer(
        ray_train_loop,
        train_loop_config={"config": cfg, "spaces": (obs_space, act_space)},
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.num_workers,
            use_gpu=cfg.use_gpu,
            resources_per_worker={
                "CPU": cfg.cpus_per_worker,
                **({"GPU": 1} if cfg.use_gpu else {}),
            },
        ),
        run_config=ray.train.RunConfig(
            name=cfg.name,
            storage_path=cfg.storage_path,
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            # Ray Train's own INFO lines (one per report) would drown the progress lines.
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
        ),
        datasets=datasets,
        # Every worker gets all rows; _train_loop shares out each batch (see module doc).
        dataset_config=ray.train.DataConfig(datasets_to_split=[]),
    )


def train(cfg: TrainConfig, *, fresh: bool = False) -> TrainResult:
    """Run the job to completion, save the final net to ``cfg.output``, return the history.

    Inputs, the output's folder and GPUs are checked before anything starts. A named
    run resumes from its checkpoints only with the config that started it (see
    :mod:`ray_rewards.train.resume`); ``fresh`` deletes them and starts over.

    Raises:
        ValueError: every problem with the inputs, one line each; a changed config on
            resume; too few GPUs.
        ray.train.TrainingFailedError: the run failed beyond ``max_failures``.
    """
    problems = input_problems(cfg)
    if problems:
        raise ValueError("\n".join(problems))
    check_resume(cfg, fresh=fresh)
    if in_process(cfg):
        checkpoint_path = _train_in_process(cfg)
        checkpoint_dir: Any = contextlib.nullcontext(checkpoint_path)
    else:
        wait_for_gpus(cfg, logger.warning)
        result = build_trainer(cfg).fit()
        if result.checkpoint is None:
            raise RuntimeError("reward training finished without a checkpoint")
        checkpoint_path, checkpoint_dir = result.checkpoint.path, result.checkpoint.as_directory()
    with checkpoint_dir as d:
        net = serialize.load(os.path.join(d, storage.NET_FILE), device="cpu")
        history = th.load(os.path.join(d, STATE_FILE), weights_only=True)["history"]
    output = storage.absolute(cfg.output)
    serialize.save(net, output)
    return TrainResult(net_path=output, history=history, checkpoint_path=checkpoint_path)


def in_process(cfg: TrainConfig) -> bool:
    """Whether ``cfg`` trains in the calling process rather than as a Ray Train job.

    ``engine="auto"`` trains in process when Ray Train would buy nothing: one worker,
    no GPU, no failures to recover from (a worker group restarts dead workers; one
    process cannot restart itself) and local storage. Ray Train's fixed cost is a
    worker group and a controller, about 20 s per call on a 2-core machine, where
    the epochs of a small preference data set take about a second.
    """
    if cfg.engine != "auto":
        return cfg.engine == "local"
    return (
        cfg.num_workers == 1
        and not cfg.use_gpu
        and cfg.max_failures == 0
        and not storage.is_uri(cfg.storage_path or "")
    )


def _train_in_process(cfg: TrainConfig) -> str:
    """Run the loop here (data read with pyarrow, no Ray); the last checkpoint's folder."""
    cfg = _absolute_paths(cfg)
    columns = losses.LOSS_COLUMNS.get(cfg.loss, ()) if isinstance(cfg.loss, str) else ()
    datasets = {"train": schemas.read_numpy(cfg.train_data, columns)}
    if cfg.eval_data:
        datasets["eval"] = schemas.read_numpy(cfg.eval_data, columns)
    folder = run_dir(cfg) or os.path.join(
        cfg.storage_path or os.path.join(os.path.expanduser("~"), "ray_results"),
        f"reward_training_{time.strftime('%Y-%m-%d_%H-%M-%S')}_{os.getpid()}",
    )
    session = LocalSession(folder, datasets)
    # Progress lines go to stdout, as a Ray Train worker's do.
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    propagate, logger.propagate = logger.propagate, False
    try:
        train_loop(cfg, _spaces(cfg), session)
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate
    if session.last_checkpoint is None:
        raise RuntimeError("reward training finished without a checkpoint")
    return session.last_checkpoint
