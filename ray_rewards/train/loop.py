"""The reward-training loop: the same code in a Ray Train worker and in one process.

:func:`train_loop` builds (or resumes) the net, runs the epochs and reports each
through its session (:mod:`ray_rewards.train.sessions`), which decides where the
data comes from and where checkpoints go. How rows are shared among workers and
how normalization statistics are merged is written down in
:mod:`ray_rewards.train.trainer`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import torch as th
from gymnasium import spaces

from ray_rewards import networks, preprocessing, reward_nets, serialize, storage
from ray_rewards.stats import Moments
from ray_rewards.train import losses, schemas
from ray_rewards.train.validation import NORM_CLASSES, OPTIMIZERS, activation_class

if TYPE_CHECKING:
    from ray_rewards.train.sessions import LocalSession, RayTrainSession
    from ray_rewards.train.trainer import TrainConfig

STATE_FILE = "train_state.pt"
PREDICT_CHUNK = 8192

logger = logging.getLogger("ray_rewards.train.trainer")


def build_net(
    cfg: TrainConfig,
    observation_space: spaces.Space | None,
    action_space: spaces.Space | None,
) -> reward_nets.RewardNet:
    """The config's initial net: ``init_net`` loaded (the spaces are then its own and may
    be None), or ``net(**net_kwargs)`` for the spaces, seeded.
    """
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


def ray_train_loop(loop_config: dict[str, Any]) -> None:
    """The ``TorchTrainer`` entry point: the loop in a Ray Train worker."""
    import ray.data

    from ray_rewards.train.sessions import RayTrainSession

    # This process is ours: keep Ray Data's per-dataset progress lines out of the output.
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    ray.data.DataContext.get_current().enable_progress_bars = False
    train_loop(loop_config["config"], loop_config["spaces"], RayTrainSession())


def train_loop(
    cfg: TrainConfig,
    net_spaces: tuple[spaces.Space, spaces.Space],
    session: LocalSession | RayTrainSession,
) -> None:
    """Train ``cfg``'s net from its latest checkpoint (if any) to ``cfg.epochs``."""
    logger.setLevel(logging.INFO if cfg.verbose else logging.WARNING)
    rank, world = session.rank, session.world
    loss_fn = losses.LOSSES[cfg.loss] if isinstance(cfg.loss, str) else cfg.loss
    data, skipped = _finite_rows(session.data("train"), "train_data", cfg)
    eval_data = None
    if cfg.eval_data:
        eval_data, eval_skipped = _finite_rows(session.data("eval"), "eval_data", cfg)
        skipped += eval_skipped
    if skipped and rank == 0:
        logger.warning(
            "[reward training] left out %d row(s) holding NaN or inf (on_non_finite='skip')",
            skipped,
        )

    net = build_net(cfg, *net_spaces)
    start_epoch, history, opt_state = 0, [], None
    with session.resume_dir() as d:
        if d is not None:
            net = serialize.load(os.path.join(d, storage.NET_FILE), device="cpu")
            state = th.load(os.path.join(d, STATE_FILE), weights_only=True)
            start_epoch, history = state["epoch"] + 1, state["history"]
            opt_state = state["optimizer"]
    model = session.prepare(net)
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
        if (
            epoch == cfg.epochs - 1
            and isinstance(net, reward_nets.NormalizedRewardNet)
            and isinstance(net.normalize_output_layer, networks.RunningNorm)
        ):
            # Once, for the net the run ends with: a pass over every training
            # transition costs as much as a third of an epoch's training.
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

        def write(d: str, epoch: int = epoch) -> None:
            serialize.save(net, os.path.join(d, storage.NET_FILE))
            th.save(
                {"epoch": epoch, "history": history, "optimizer": opt.state_dict()},
                os.path.join(d, STATE_FILE),
            )

        session.report(metrics, epoch, write)


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


__all__ = ["STATE_FILE", "build_net", "ray_train_loop", "train_loop"]
