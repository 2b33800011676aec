"""Everything wrong with a reward-training config, found before Ray starts.

:func:`config_problems` checks every field and returns one line per problem, each
naming the key, the value and what is allowed; ``TrainConfig`` raises them all at
once (``ray-rewards train`` prints them without a traceback). A run that would fail
15 s later inside a Ray worker, or never, fails here in milliseconds instead.
"""

from __future__ import annotations

import inspect
import numbers
import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch as th
from torch import nn

from ray_rewards import networks, reward_nets, storage
from ray_rewards.train import losses

if TYPE_CHECKING:
    from ray_rewards.train.trainer import TrainConfig

NET_CLASSES = ("BasicRewardNet", "BasicShapedRewardNet", "CNNRewardNet")
NORM_CLASSES = {"RunningNorm": networks.RunningNorm, "EMANorm": networks.EMANorm}
OPTIMIZERS = {"adam": th.optim.Adam, "adamw": th.optim.AdamW, "sgd": th.optim.SGD}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def activation_class(name: Any) -> type[nn.Module] | None:
    """The ``torch.nn`` activation class called ``name`` (None if there is none)."""
    if not isinstance(name, str) or name not in nn.modules.activation.__all__:
        return None
    cls = getattr(nn, name, None)
    return cls if isinstance(cls, type) and issubclass(cls, nn.Module) else None


def _accepted_keywords(fn: Callable[..., Any], skip: int) -> tuple[set[str], bool]:
    """The keyword names ``fn`` takes after its first ``skip`` parameters, and whether it
    also takes ``**kwargs``.
    """
    params = list(inspect.signature(fn).parameters.values())[skip:]
    names = {p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    return names, any(p.kind is p.VAR_KEYWORD for p in params)


# Where each trainable net class passes the keywords it does not name itself, and
# the builder keywords it sets on its own (so a config may not).
_NET_BUILDERS = {
    "BasicRewardNet": (networks.build_mlp, {"out_size", "squeeze_output", "flatten_input"}),
    "BasicShapedRewardNet": (
        networks.build_mlp,
        {"hid_sizes", "out_size", "squeeze_output", "flatten_input"},
    ),
    "CNNRewardNet": (networks.build_cnn, {"out_size", "squeeze_output"}),
}


def _net_keywords(net: str) -> set[str]:
    names, more = _accepted_keywords(getattr(reward_nets, net).__init__, 3)
    if more:
        builder, set_by_class = _NET_BUILDERS[net]
        names |= _accepted_keywords(builder, 1)[0] - set_by_class
    return names


def _net_kwargs_problems(net: str, kwargs: Any) -> list[str]:
    if not isinstance(kwargs, Mapping):
        return [f"net_kwargs: expected a mapping of keyword arguments, got {kwargs!r}"]
    problems = []
    if net in NET_CLASSES:
        known = _net_keywords(net)
        unknown = sorted(set(kwargs) - known)
        if unknown:
            problems.append(
                f"net_kwargs: {unknown} are not arguments of {net}; known: {sorted(known)}"
            )
    hid = kwargs.get("hid_sizes")
    if hid is not None and not (
        isinstance(hid, (list, tuple)) and all(_is_int(h) and h >= 1 for h in hid)
    ):
        problems.append(f"net_kwargs.hid_sizes: expected a list of integers >= 1, got {hid!r}")
    act = kwargs.get("activation")
    if isinstance(act, str) and activation_class(act) is None:
        problems.append(
            "net_kwargs.activation: expected the torch.nn module name of an activation such "
            f"as 'ReLU' or 'SiLU', got {act!r}"
        )
    norm = kwargs.get("normalize_input_layer")
    if isinstance(norm, str) and norm not in NORM_CLASSES:
        problems.append(
            f"net_kwargs.normalize_input_layer: expected one of {sorted(NORM_CLASSES)}, "
            f"got {norm!r}"
        )
    return problems


def _path_problems(name: str, value: Any, *, required: bool, must_exist: bool) -> list[str]:
    if value is None:
        return [f"{name}: required (a local path or URI)"] if required else []
    if not isinstance(value, (str, os.PathLike)) or not os.fspath(value):
        return [f"{name}: expected a path or URI, got {value!r}"]
    if must_exist and not storage.is_uri(value) and not os.path.exists(value):
        return [f"{name}: {value} does not exist"]
    return []


def _output_problems(output: Any) -> list[str]:
    problems = _path_problems("output", output, required=True, must_exist=False)
    if problems or storage.is_uri(output):
        return problems
    path = os.path.abspath(output)
    if os.path.isdir(path):
        return [f"output: {output} is a directory; expected a file path such as reward_net.pt"]
    parent = os.path.dirname(path)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not (os.path.isdir(parent) and os.access(parent, os.W_OK | os.X_OK)):
        return [f"output: cannot write {output} ({parent} is not a writable folder)"]
    return []


def _env_problems(env: Any) -> list[str]:
    if not isinstance(env, str):
        return []
    import gymnasium as gym

    try:
        gym.spec(env)
    except gym.error.Error as err:
        return [f"env: {env!r} is not a registered gymnasium environment ({err})"]
    return []


def config_problems(cfg: TrainConfig) -> list[str]:
    """One line per problem with ``cfg``; empty when it can run."""
    problems: list[str] = []
    add = problems.append
    if isinstance(cfg.loss, str):
        if cfg.loss not in losses.LOSSES:
            add(f"loss: expected one of {sorted(losses.LOSSES)}, got {cfg.loss!r}")
    elif not callable(cfg.loss):
        add(f"loss: expected a name or a callable, got {type(cfg.loss).__name__}")
    loss_fn = losses.LOSSES.get(cfg.loss) if isinstance(cfg.loss, str) else cfg.loss
    if not isinstance(cfg.loss_kwargs, Mapping):
        add(f"loss_kwargs: expected a mapping, got {cfg.loss_kwargs!r}")
    elif callable(loss_fn):
        known, more = _accepted_keywords(loss_fn, 2)
        unknown = [] if more else sorted(set(cfg.loss_kwargs) - known)
        if unknown:
            add(f"loss_kwargs: {unknown} are not arguments of the loss; known: {sorted(known)}")
    if cfg.net not in NET_CLASSES:
        add(f"net: expected one of {list(NET_CLASSES)}, got {cfg.net!r}")
    problems += _net_kwargs_problems(cfg.net, cfg.net_kwargs)
    if cfg.optimizer not in OPTIMIZERS:
        add(f"optimizer: expected one of {sorted(OPTIMIZERS)}, got {cfg.optimizer!r}")
    for name in ("epochs", "batch_size", "num_workers"):
        value = getattr(cfg, name)
        if not _is_int(value) or value < 1:
            add(f"{name}: expected an integer >= 1, got {value!r}")
    if (
        _is_int(cfg.batch_size)
        and _is_int(cfg.num_workers)
        and 1 <= cfg.batch_size < cfg.num_workers
    ):
        add(
            f"batch_size ({cfg.batch_size}) must be >= num_workers ({cfg.num_workers}): "
            "every worker takes a share of every batch"
        )
    if not _is_number(cfg.lr) or not cfg.lr > 0:
        add(f"lr: expected a number > 0, got {cfg.lr!r}")
    if not _is_number(cfg.weight_decay) or not cfg.weight_decay >= 0:
        add(f"weight_decay: expected a number >= 0, got {cfg.weight_decay!r}")
    if not _is_number(cfg.cpus_per_worker) or not cfg.cpus_per_worker > 0:
        add(f"cpus_per_worker: expected a number > 0, got {cfg.cpus_per_worker!r}")
    if not _is_int(cfg.max_failures) or cfg.max_failures < -1:
        add(f"max_failures: expected an integer >= 0 (or -1: no limit), got {cfg.max_failures!r}")
    if not _is_number(cfg.gpu_wait_s) or not cfg.gpu_wait_s >= 0:
        add(f"gpu_wait_s: expected a number of seconds >= 0, got {cfg.gpu_wait_s!r}")
    if cfg.engine not in ("auto", "local", "ray"):
        add(f"engine: expected 'auto', 'local' or 'ray', got {cfg.engine!r}")
    elif cfg.engine == "local" and (
        cfg.num_workers != 1 or cfg.use_gpu or storage.is_uri(cfg.storage_path or "")
    ):
        add(
            "engine: 'local' trains in this process: it needs num_workers: 1, no use_gpu and "
            f"a local storage_path (got num_workers={cfg.num_workers!r}, "
            f"use_gpu={cfg.use_gpu!r}, storage_path={cfg.storage_path!r})"
        )
    if cfg.on_non_finite not in ("skip", "raise"):
        add(f"on_non_finite: expected 'skip' or 'raise', got {cfg.on_non_finite!r}")
    if not _is_int(cfg.seed):
        add(f"seed: expected an integer, got {cfg.seed!r}")
    for flag in ("normalize_output", "use_gpu", "verbose"):
        if not isinstance(getattr(cfg, flag), bool):
            add(f"{flag}: expected true or false, got {getattr(cfg, flag)!r}")
    for name, required in (("train_data", True), ("eval_data", False), ("init_net", False)):
        problems += _path_problems(name, getattr(cfg, name), required=required, must_exist=False)
    problems += _path_problems("output", cfg.output, required=True, must_exist=False)
    if cfg.env is None and cfg.init_net is None:
        add("env: give env (a gymnasium id for the net's spaces) or init_net")
    elif cfg.env is not None and not isinstance(cfg.env, str):
        add(f"env: expected a gymnasium id such as 'Pendulum-v1', got {cfg.env!r}")
    return problems


def input_problems(cfg: TrainConfig) -> list[str]:
    """What the machine says is wrong right before a run: inputs that do not exist,
    an output that cannot be written, an env id gymnasium does not know.

    Separate from :func:`config_problems`: a cluster job's config names data that an
    earlier job writes, so a config is valid before its inputs exist.
    """
    problems: list[str] = []
    for name in ("train_data", "eval_data", "init_net"):
        problems += _path_problems(name, getattr(cfg, name), required=False, must_exist=True)
    if not problems and cfg.init_net is not None:
        problems += _init_net_problems(cfg.init_net)
    problems += _output_problems(cfg.output)
    problems += _env_problems(cfg.env)
    return problems


def _init_net_problems(path: str) -> list[str]:
    import pickle

    from ray_rewards import file_format

    try:
        file_format.load(path, device="cpu")
    except (OSError, ValueError, TypeError, pickle.UnpicklingError) as err:
        return [f"init_net: {err}"]
    return []


def wait_for_gpus(cfg: TrainConfig, log: Callable[[str], None] = print) -> None:
    """With ``use_gpu``, make sure the Ray cluster has a GPU for every worker.

    A cluster without them fails at once (a local Ray without GPUs never gets one)
    unless ``gpu_wait_s`` > 0: then the GPUs are requested from the autoscaler and
    awaited, with a progress line every 10 s, until the timeout.

    Raises:
        ValueError: not enough GPUs (after the wait), naming what there is.
    """
    if not cfg.use_gpu:
        return
    import time

    import ray

    if not ray.is_initialized():
        ray.init()  # what TorchTrainer.fit would do next anyway

    def have() -> float:
        return ray.cluster_resources().get("GPU", 0.0)

    if have() >= cfg.num_workers:
        return
    if cfg.gpu_wait_s > 0:
        from ray.autoscaler.sdk import request_resources

        request_resources(bundles=[{"GPU": 1}] * cfg.num_workers)
        deadline = time.monotonic() + cfg.gpu_wait_s
        next_line = 0.0
        while have() < cfg.num_workers and time.monotonic() < deadline:
            if time.monotonic() >= next_line:
                log(
                    f"waiting for GPUs: {have():g} of {cfg.num_workers} in the cluster, "
                    f"{deadline - time.monotonic():.0f} s left (gpu_wait_s={cfg.gpu_wait_s:g})"
                )
                next_line = time.monotonic() + 10
            time.sleep(1)
        if have() >= cfg.num_workers:
            return
    raise ValueError(
        f"use_gpu: the Ray cluster has {have():g} GPUs and {cfg.num_workers} are needed "
        "(one per worker); train on CPUs (use_gpu: false), or on an autoscaling cluster set "
        "gpu_wait_s to wait for GPU nodes"
    )


__all__ = [
    "NET_CLASSES",
    "NORM_CLASSES",
    "OPTIMIZERS",
    "activation_class",
    "config_problems",
    "input_problems",
    "wait_for_gpus",
]
