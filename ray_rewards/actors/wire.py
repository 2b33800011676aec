"""What crosses the process boundary between a caller and a served reward net.

A net never crosses as a pickled module: it travels as bytes of ray_rewards' saved
format (:func:`~ray_rewards.file_format.to_bytes`) and is loaded on the other side
by :func:`~ray_rewards.file_format.from_bytes`, through the safe-loading allowlist
(a class registered with ``register_safe_class`` must be registered in that
process too). A path travels as an absolute path (the other process may run in
another working directory) and must be readable where it is loaded. Batches
travel as numpy arrays with a leading batch axis.
"""

from __future__ import annotations

import os

import numpy as np
import ray
import torch as th

from ray_rewards import file_format, storage
from ray_rewards.reward_nets import RewardNet

RewardSource = RewardNet | str | os.PathLike | bytes
"""A reward net, a path to one saved by ray_rewards, or the bytes of such a file."""


def _not_a_source(source: object) -> TypeError:
    return TypeError(
        "reward: expected a RewardNet, a path saved by ray_rewards or its bytes, "
        f"got {type(source).__name__}"
    )


def to_wire(source: RewardSource) -> bytes | str:
    """What to ship to another process for ``source``: a path stays a path (made
    absolute), a net becomes bytes of the saved format, bytes stay bytes.
    """
    if isinstance(source, RewardNet):
        return file_format.to_bytes(source)
    if isinstance(source, (str, os.PathLike)):
        return storage.absolute(source)
    if isinstance(source, bytes):
        return source
    raise _not_a_source(source)


def load_reward_source(
    source: bytes | str | os.PathLike, device: th.device | str = "cpu"
) -> RewardNet:
    """Load a net from a path (or URI) or saved-format bytes onto ``device``, safely."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return file_format.from_bytes(bytes(source), device)
    if isinstance(source, (str, os.PathLike)):
        return file_format.load(source, device)
    raise _not_a_source(source)


def actor_device() -> th.device:
    """CUDA when Ray gave the current worker a GPU and torch can use it, else CPU."""
    if ray.get_gpu_ids() and th.cuda.is_available():
        return th.device("cuda")
    return th.device("cpu")


def _rows(name: str, x: np.ndarray | None, expected: int | None) -> int | None:
    if x is None:
        return expected
    if x.ndim == 0:
        raise ValueError(f"{name}: expected a batch with a leading batch axis, got a scalar")
    if expected is not None and x.shape[0] != expected:
        raise ValueError(f"{name}: expected {expected} rows (as obs), got {x.shape[0]}")
    return int(x.shape[0])


def batch_rows(
    obs: np.ndarray,
    actions: np.ndarray,
    next_obs: np.ndarray | None,
    dones: np.ndarray | None,
) -> int:
    """The number of transitions in a request; ValueError naming an array whose rows
    do not match ``obs``'s (or that has no batch axis).
    """
    rows = _rows("obs", obs, None)
    for name, x in (("actions", actions), ("next_obs", next_obs), ("dones", dones)):
        _rows(name, x, rows)
    return rows


__all__ = ["RewardSource", "actor_device", "batch_rows", "load_reward_source", "to_wire"]
