"""Reward training as a Ray Train job: one ``TorchTrainer`` for every loss.

:func:`train` reads Parquet data through Ray Data, runs the training loop below on
``num_workers`` workers with DDP, reports metrics every epoch, checkpoints the net in
ray_rewards' format (``reward_net.pt``, loadable with ``load_reward``) and resumes
from the latest checkpoint when a worker dies (``FailureConfig(max_failures)``).

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
``RunningNorm`` output layer of a ``NormalizedRewardNet`` is fitted, at every
epoch's end, to the net's rewards on all training transitions (moments merged
across workers), so the saved net's ``predict_processed`` is standardized from the
start of RL.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces

from ray_rewards import networks, preprocessing, reward_nets, serialize, storage
from ray_rewards.config_file import PATH_FIELD, load_settings
from ray_rewards.stats import Moments
from ray_rewards.train import losses, schemas
from ray_rewards.train.resume import check_resume
from ray_rewards.train.validation import (
    NORM_CLASSES,
    OPTIMIZERS,
    activation_class,
    config_problems,
    input_problems,
    wait_for_gpus,
)

STATE_FILE = "train_state.pt"
PREDICT_CHUNK = 8192

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


def build_net(
    cfg: TrainConfig, observation_space: spaces.Space, action_space: spaces.Space
) -> reward_nets.RewardNet:
    """The config's initial net: ``init_net`` loaded, or ``net(**net_kwargs)`` seeded."""
    if cfg.init_net is not None:
        return serialize.load(cfg.init_net, device="cpu")
    kwargs = dict(cfg.net_kwargs)
    # Names were checked when the config was made (validation.config_problems).
    if isinstance(kwargs.get("normalize_input_layer"), str):
        kwargs["normalize_input_layer"] = NORM_CLASSES[kwargs["normalize_input_layer"]]
    if isinstance(kwargs.get("activation"), str):
        kwargs["activation"] = activation_class(kwargs["activation"])
    th.manual_seed(cfg.seed)
    net = getattr(reward_nets, cfg.net)(observation_space, action_space, **kwargs)
    if cfg.normalize_output:
        net = reward_nets.NormalizedRewardNet(net, networks.RunningNorm)
    return net


# ------------------------------------------------------------------------------------
# The training loop, run by every Ray Train worker
# ------------------------------------------------------------------------------------


def _train_loop(loop_config: dict[str, Any]) -> None:
    import ray.data
    import ray.train
    import ray.train.torch

    cfg: TrainConfig = loop_config["config"]
    # This process is ours: keep Ray Data's per-dataset progress lines out of the output.
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    ray.data.DataContext.get_current().enable_progress_bars = False
    logger.setLevel(logging.INFO if cfg.verbose else logging.WARNING)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    loss_fn = losses.LOSSES[cfg.loss] if isinstance(cfg.loss, str) else cfg.loss
    data, skipped = _finite_rows(ray.train.get_dataset_shard("train"), "train_data", cfg)
    eval_data = None
    if cfg.eval_data:
        eval_data, eval_skipped = _finite_rows(
            ray.train.get_dataset_shard("eval"), "eval_data", cfg
        )
        skipped += eval_skipped
    if skipped and rank == 0:
        logger.warning(
            "[reward training] left out %d row(s) holding NaN or inf (on_non_finite='skip')",
            skipped,
        )

    net = build_net(cfg, *loop_config["spaces"])
    start_epoch, history, opt_state = 0, [], None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            net = serialize.load(os.path.join(d, storage.NET_FILE), device="cpu")
            state = th.load(os.path.join(d, STATE_FILE), weights_only=True)
        start_epoch, history, opt_state = state["epoch"] + 1, state["history"], state["optimizer"]
    # Each worker keeps its own input statistics during an epoch (no buffer broadcast);
    # they are merged at the epoch's end.
    model = ray.train.torch.prepare_model(
        net, parallel_strategy_kwargs={"forward_sync_buffers": False}
    )
    opt = OPTIMIZERS[cfg.optimizer](net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if opt_state is not None:
        opt.load_state_dict(opt_state)

    num_rows = len(next(iter(data.values())))
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        base_moments = networks.norm_moments(net)
        sums = _MetricSums()
        order = np.random.default_rng([cfg.seed, epoch]).permutation(num_rows)
        with networks.training(net):
            for begin in range(0, num_rows, cfg.batch_size):
                rows = order[begin : begin + cfg.batch_size]
                if len(rows) < world:
                    break  # too few rows to give every worker a share
                mine = np.array_split(rows, world)[rank]
                loss, metrics = loss_fn(model, _take(data, mine), **cfg.loss_kwargs)
                opt.zero_grad()
                (loss * (len(mine) * world / len(rows))).backward()
                opt.step()
                sums.add(metrics, len(mine))
        _merge_input_norms(net, base_moments, world)
        if isinstance(net, reward_nets.NormalizedRewardNet) and isinstance(
            net.normalize_output_layer, networks.RunningNorm
        ):
            _fit_output_norm(net, data, rank, world)
        metrics = {"epoch": epoch, "start_epoch": start_epoch, "num_non_finite_rows": skipped}
        metrics.update({f"train_{k}": v for k, v in sums.means(net).items()})
        if eval_data is not None:
            evaluated = _evaluate(net, eval_data, loss_fn, cfg, rank, world)
            metrics.update({f"eval_{k}": v for k, v in evaluated.items()})
        metrics["time_s"] = time.perf_counter() - t0
        history.append(metrics)
        if rank == 0:
            shown = " ".join(
                f"{k}={v:.4g}" for k, v in metrics.items() if k.startswith(("train", "eval"))
            )
            logger.info("[reward training] epoch %d/%d %s", epoch + 1, cfg.epochs, shown)
        _report(net, opt, epoch, history, metrics, rank)


def _finite_rows(shard: Any, name: str, cfg: TrainConfig) -> tuple[dict[str, np.ndarray], int]:
    """A data shard's rows as numpy columns without those holding NaN/inf in any float
    column, and how many those were; ValueError naming them when ``on_non_finite="raise"``.
    """
    data = shard if isinstance(shard, dict) else schemas.collect_numpy(shard)
    bad: set[int] = set()
    for column, values in data.items():
        if values.dtype.kind in "fc" and len(values):
            rows = preprocessing.non_finite_rows(values)
            if rows and cfg.on_non_finite == "raise":
                raise ValueError(
                    f"{name}: column {column!r} holds NaN or inf at rows "
                    f"{preprocessing.format_rows(rows)} of {len(values)} "
                    "(on_non_finite='raise'; 'skip' leaves such rows out)"
                )
            bad.update(rows)
    if not bad:
        return data, 0
    keep = np.setdiff1d(np.arange(len(next(iter(data.values())))), sorted(bad))
    if not len(keep):
        raise ValueError(f"{name}: every one of its {len(bad)} rows holds NaN or inf")
    return _take(data, keep), len(bad)


def _take(data: Mapping[str, np.ndarray], rows: np.ndarray) -> dict[str, np.ndarray]:
    return {name: col[rows] for name, col in data.items()}


class _MetricSums:
    """Row-weighted sums of per-example metric means, summed over workers on request."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.rows = 0

    def add(self, metrics: Mapping[str, th.Tensor], rows: int) -> None:
        for k, v in metrics.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v) * rows
        self.rows += rows

    def means(self, net: th.nn.Module) -> dict[str, float]:
        names = sorted(self.sums)
        totals = _all_reduce_sum([*(self.sums[k] for k in names), self.rows], net)
        return {k: totals[i] / max(totals[-1], 1) for i, k in enumerate(names)}


def _all_reduce_sum(values: list[float], net: th.nn.Module) -> list[float]:
    if not (th.distributed.is_available() and th.distributed.is_initialized()):
        return list(values)
    device = next(net.parameters()).device
    t = th.tensor(values, dtype=th.float64, device=device)
    th.distributed.all_reduce(t)
    return t.tolist()


def _all_gather(obj: Any) -> list[Any]:
    if not (th.distributed.is_available() and th.distributed.is_initialized()):
        return [obj]
    out: list[Any] = [None] * th.distributed.get_world_size()
    th.distributed.all_gather_object(out, obj)
    return out


def _merge_input_norms(net: th.nn.Module, base: dict[str, Moments], world: int) -> None:
    """Merge what every worker's RunningNorm layers learned this epoch (from ``base``)."""
    if world > 1 and base:
        merged = networks.merge_norm_updates(base, _all_gather(networks.norm_moments(net)))
        networks.set_norm_moments(net, merged)


def _fit_output_norm(
    net: reward_nets.NormalizedRewardNet, data: Mapping[str, np.ndarray], rank: int, world: int
) -> None:
    """Set the output statistics to the moments of the net's rewards on the training
    transitions (this worker's share in chunks of PREDICT_CHUNK, merged over workers).
    """
    cols = _transition_columns(data)
    share = np.array_split(np.arange(len(cols[0])), world)[rank]
    mine = Moments.empty((1,))
    for begin in range(0, len(share), PREDICT_CHUNK):
        rows = share[begin : begin + PREDICT_CHUNK]
        mine = mine.merge(Moments.of(net.base.predict(*(c[rows] for c in cols)).reshape(-1, 1)))
    merged = Moments.merge_all(_all_gather(mine))
    if merged.count:
        net.normalize_output_layer.set_moments(merged)


def _transition_columns(data: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """``(obs, actions, new_obs, terminateds)`` of a transitions or preference table."""
    if all(c in data for c in schemas.TRANSITION_COLUMNS):
        return [data[c] for c in schemas.TRANSITION_COLUMNS]
    out = []
    for c in schemas.FRAGMENT_COLUMNS:
        both = np.concatenate([data[f"{c}_1"], data[f"{c}_2"]])
        out.append(both.reshape(-1, *both.shape[2:]))
    return out


def _evaluate(
    net: th.nn.Module,
    data: Mapping[str, np.ndarray],
    loss_fn: Any,
    cfg: TrainConfig,
    rank: int,
    world: int,
) -> dict[str, float]:
    """Loss metrics on held-out rows: each worker its share, summed over workers."""
    share = np.array_split(np.arange(len(next(iter(data.values())))), world)[rank]
    sums = _MetricSums()
    with networks.evaluating(net), th.no_grad():
        for begin in range(0, len(share), cfg.batch_size):
            rows = share[begin : begin + cfg.batch_size]
            _, metrics = loss_fn(net, _take(data, rows), **cfg.loss_kwargs)
            sums.add(metrics, len(rows))
    return sums.means(net)


def _report(
    net: reward_nets.RewardNet,
    opt: th.optim.Optimizer,
    epoch: int,
    history: list[dict[str, float]],
    metrics: dict[str, float],
    rank: int,
) -> None:
    import ray.train

    if rank != 0:
        ray.train.report(metrics, checkpoint=None)
        return
    with tempfile.TemporaryDirectory() as d:
        serialize.save(net, os.path.join(d, storage.NET_FILE))
        th.save(
            {"epoch": epoch, "history": history, "optimizer": opt.state_dict()},
            os.path.join(d, STATE_FILE),
        )
        ray.train.report(
            metrics,
            checkpoint=ray.train.Checkpoint.from_directory(d),
            checkpoint_dir_name=f"epoch_{epoch:05d}",
        )


# ------------------------------------------------------------------------------------
# The driver side
# ------------------------------------------------------------------------------------


def build_trainer(cfg: TrainConfig) -> Any:
    """A ``ray.train.torch.TorchTrainer`` that runs ``cfg`` (call ``.fit()``)."""
    import ray.train
    from ray.train.torch import TorchTrainer

    cfg = dataclasses.replace(
        cfg,
        train_data=storage.absolute(cfg.train_data),
        eval_data=cfg.eval_data and storage.absolute(cfg.eval_data),
        init_net=cfg.init_net and storage.absolute(cfg.init_net),
        storage_path=cfg.storage_path and storage.absolute(cfg.storage_path),
    )
    columns = losses.LOSS_COLUMNS.get(cfg.loss, ()) if isinstance(cfg.loss, str) else ()
    datasets = {"train": schemas.read_parquet(cfg.train_data, columns)}
    if cfg.eval_data:
        datasets["eval"] = schemas.read_parquet(cfg.eval_data, columns)
    if cfg.init_net is not None:
        net = serialize.load(cfg.init_net, device="cpu")
        obs_space, act_space = net.observation_space, net.action_space
    else:
        obs_space, act_space = env_spaces(cfg.env)
        net = build_net(cfg, obs_space, act_space)
    if cfg.num_workers > 1:
        networks.require_mergeable(net, f"num_workers={cfg.num_workers}", ValueError)
    return TorchTrainer(
        _train_loop,
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
    wait_for_gpus(cfg, logger.warning)
    result = build_trainer(cfg).fit()
    if result.checkpoint is None:
        raise RuntimeError("reward training finished without a checkpoint")
    with result.checkpoint.as_directory() as d:
        net = serialize.load(os.path.join(d, storage.NET_FILE), device="cpu")
        history = th.load(os.path.join(d, STATE_FILE), weights_only=True)["history"]
    output = storage.absolute(cfg.output)
    serialize.save(net, output)
    return TrainResult(net_path=output, history=history, checkpoint_path=result.checkpoint.path)
