"""One relabeling step, the same on every engine: an Arrow batch in, the batch plus the
reward column out (:class:`BatchRelabeler`), and the checks every engine makes first.

The local engine runs it in the caller's process, the Ray engine in each Ray Data
actor; sharing it is what makes both engines' outputs (values, columns, errors)
the same. Nothing here imports Ray.
"""

from __future__ import annotations

import copy
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import torch as th
from gymnasium import spaces

from ray_rewards import file_format, networks, storage
from ray_rewards.data.columns import INPUTS, RLLIB_COLUMNS, table_transitions
from ray_rewards.reward_function import (
    NetRewardFn,
    frozen_stats_kwargs,
    load_reward,
    reward_registry,
)
from ray_rewards.reward_nets import NormalizedRewardNet, RewardNet

if TYPE_CHECKING:
    from ray_rewards.actors.wire import RewardSource


AS_REWARDS = "rewards"
"""The output column that makes the learned rewards RLlib's ``rewards`` (the recorded
ones kept as :data:`ENV_REWARDS`), so RLlib's offline input trains on them."""
ENV_REWARDS = "env_rewards"

ACTION_UNITS = ("env", "module")
"""The units the data's ``actions`` can be in: ``"env"``, what the env received (as
``ray-rewards record`` writes them, and what the nets take); ``"module"``, the
RLModule's normalized actions, as RLlib's own offline output holds them with
``normalize_actions`` (its default), mapped by :func:`env_actions` before the net."""


def check_output_column(column: Any, existing: Sequence[str] = ()) -> None:
    """ValueError unless ``column`` is a usable name for the new column: a non-empty
    string that is neither one of RLlib's columns nor already in the data (the
    original data is never overwritten); or ``"rewards"`` (:data:`AS_REWARDS`), when
    the data has no ``env_rewards`` column to keep the recorded rewards in.
    """
    if not isinstance(column, str) or not column.strip():
        raise ValueError(f"column: expected a non-empty column name, got {column!r}")
    if column == AS_REWARDS:
        if ENV_REWARDS in existing:
            raise ValueError(
                f"column: writing the learned rewards as {AS_REWARDS!r} keeps the recorded "
                f"ones as {ENV_REWARDS!r}, which the data already has (nothing is overwritten)"
            )
        return
    if column in RLLIB_COLUMNS:
        raise ValueError(
            f"column: {column!r} is one of RLlib's columns {list(RLLIB_COLUMNS)}; choose "
            "another name (the original data is kept; rename it afterwards if you want), or "
            f"{AS_REWARDS!r} to write the learned rewards as RLlib's rewards (the recorded "
            f"ones kept as {ENV_REWARDS!r})"
        )
    if column in existing:
        raise ValueError(
            f"column: the data already has a column {column!r}; choose another name "
            "(nothing is overwritten)"
        )


def check_action_units(actions: Any, space: spaces.Space | None = None) -> None:
    """ValueError unless ``actions`` is one of :data:`ACTION_UNITS` and, for
    ``"module"``, the net's action ``space`` (when given) is one :func:`env_actions` maps.
    """
    if actions not in ACTION_UNITS:
        raise ValueError(f"actions: expected one of {list(ACTION_UNITS)}, got {actions!r}")
    if actions == "module" and isinstance(space, (spaces.Dict, spaces.Tuple)):
        raise ValueError(
            f"actions='module': the net's action space is a {type(space).__name__}, whose "
            "actions a single column cannot hold; only single spaces (Box, Discrete...) map"
        )


def _mapped_box(space: spaces.Space) -> str | None:
    """How RLlib maps ``space``'s actions between the RLModule and the env: ``"float"``
    (a float32/float64 Box with finite bounds: squashed to [-1, 1]), ``"int"`` (an
    integer Box with finite bounds: shifted by ``low``) or None (unchanged).
    ValueError for Dict and Tuple spaces (:func:`check_action_units`).
    """
    check_action_units("module", space)
    if not isinstance(space, spaces.Box):
        return None
    if not (np.all(space.bounded_below) and np.all(space.bounded_above)):
        return None
    if space.dtype == np.float32 or space.dtype == np.float64:
        return "float"
    return "int" if np.issubdtype(space.dtype, np.integer) else None


def env_actions(actions: np.ndarray, space: spaces.Space) -> np.ndarray:
    """The RLModule's normalized ``actions`` in the units of ``space`` (the env's), as
    RLlib's ``unsquash_action`` maps them: for a float32/float64 Box with finite bounds,
    [-1, 1] to [low, high] (clipped to it); for an integer Box, shifted by ``low``;
    for other spaces, unchanged. Written here so that reading data needs no RLlib.

    Raises:
        ValueError: a Dict or Tuple space (:func:`check_action_units`).
    """
    kind = _mapped_box(space)
    if kind == "float":
        unsquashed = space.low + (actions + 1.0) * (space.high - space.low) / 2.0
        return np.clip(unsquashed, space.low, space.high)
    return space.low + actions if kind == "int" else actions


def module_actions(actions: np.ndarray, space: spaces.Space) -> np.ndarray:
    """The inverse of :func:`env_actions`: env-unit ``actions`` in the RLModule's
    normalized units (a float32/float64 Box with finite bounds: [low, high] to
    [-1, 1]; an integer Box: shifted by ``-low``; other spaces unchanged).

    Raises:
        ValueError: a Dict or Tuple space (:func:`check_action_units`).
    """
    kind = _mapped_box(space)
    if kind == "float":
        return (actions - space.low) * 2.0 / (space.high - space.low) - 1.0
    return actions - space.low if kind == "int" else actions


def check_options(
    reward: RewardSource,
    *,
    column: str,
    reward_type: str | None,
    update_stats: bool,
    batch_size: int,
    concurrency: int,
    actions: str,
) -> None:
    """The option checks of every engine, before any data is read (ValueError, TypeError
    or KeyError naming the option).
    """
    check_output_column(column)
    check_action_units(actions)
    if update_stats and not isinstance(reward, RewardNet):
        raise ValueError(
            "update_stats=True merges the statistics back into the net: pass the RewardNet "
            f"object, not a {type(reward).__name__}"
        )
    if update_stats and reward_type is not None:
        raise ValueError("update_stats=True uses the net's predict_processed: omit reward_type")
    if update_stats:
        for m in reward.modules():
            layer = getattr(m, "normalize_output_layer", None)
            if isinstance(m, NormalizedRewardNet) and not isinstance(layer, networks.RunningNorm):
                raise TypeError(
                    f"update_stats=True: the output normalization is {type(layer).__name__}; "
                    "only RunningNorm statistics merge across the relabeling actors"
                )
    if batch_size < 1 or concurrency < 1:
        raise ValueError(
            f"batch_size and concurrency: expected >= 1, got {batch_size} and {concurrency}"
        )
    if reward_type is not None:
        reward_registry.get(reward_type)  # KeyError naming the valid types


def load_source(source: bytes | str | os.PathLike, device: th.device | str = "cpu") -> RewardNet:
    """A net from a path (or URI) or saved-format bytes, loaded safely (as
    ``actors.wire.load_reward_source``, without importing Ray).
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        return file_format.from_bytes(bytes(source), device)
    if isinstance(source, (str, os.PathLike)):
        return file_format.load(source, device)
    raise TypeError(
        "reward: expected a RewardNet, a path saved by ray_rewards or its bytes, "
        f"got {type(source).__name__}"
    )


def _load_typed_reward(reward_type: str, source: bytes | str, kwargs: dict[str, Any]) -> Any:
    """``load_reward`` for a path or saved-format bytes (no env to check).

    Reward-type loaders (users register their own) read a path, so bytes are
    written to a temporary file for them.
    """
    if isinstance(source, str):
        return load_reward(reward_type, source, None, **kwargs)
    with tempfile.TemporaryDirectory(prefix="ray_rewards_") as tmp:
        path = os.path.join(tmp, storage.NET_FILE)
        storage.write_bytes(path, source)
        return load_reward(reward_type, path, None, **kwargs)


def as_source(reward: RewardSource) -> RewardNet | bytes | str:
    """What :class:`BatchRelabeler` loads: a net, bytes, or a path made a string."""
    if isinstance(reward, (RewardNet, bytes)):
        return reward
    if isinstance(reward, (str, os.PathLike)):
        return storage.absolute(reward)
    raise TypeError(
        "reward: expected a RewardNet, a path saved by ray_rewards or its bytes, "
        f"got {type(reward).__name__}"
    )


def local_device(num_gpus: float) -> str:
    """Where the local engine runs the net: CUDA when GPUs are asked for, else CPU.

    Raises:
        ValueError: GPUs asked for but torch sees none in this process.
    """
    if num_gpus <= 0:
        return "cpu"
    if not th.cuda.is_available():
        raise ValueError(
            f"num_gpus={num_gpus} with the local engine: torch sees no CUDA device in this "
            "process (use engine='ray' to place the net on a cluster's GPUs)"
        )
    return "cuda"


class BatchRelabeler:
    """Adds the reward column to Arrow batches with one copy of the reward.

    Args:
        source: the net itself (used as is, or a private copy when statistics update:
            :meth:`merge_into` merges them back), a path or URI, or saved-format bytes.
        reward_type: a ``load_reward`` type, or None for the net's ``predict_processed``.
        column: the new column's name.
        update_stats: let the net's normalization statistics update with every batch
            (:attr:`sync` then tells what was added).
        predict_kwargs: more keyword arguments for ``predict_processed`` or the loader.
        device: where a loaded net runs (a net passed in stays where it is).
        actions: the units of the data's actions (:data:`ACTION_UNITS`); ``"module"``
            ones are mapped to the net's action space (:func:`env_actions`) first.
    """

    def __init__(
        self,
        source: RewardNet | bytes | str,
        reward_type: str | None,
        column: str,
        update_stats: bool,
        predict_kwargs: Mapping[str, Any],
        device: th.device | str = "cpu",
        actions: str = "env",
    ):
        check_action_units(actions)
        self.column = column
        given = source
        kwargs = dict(predict_kwargs)
        self.net: RewardNet | None
        if reward_type is None:
            if isinstance(source, RewardNet):
                net = copy.deepcopy(source) if update_stats else source
            else:
                net = load_source(source, device)
            asked = {"update_stats": True} if update_stats else {}
            self.net = net
            # Statistics frozen unless asked (the rule of load_reward: only nets with a
            # NormalizedRewardNet get the keyword).
            self.reward_fn: Callable[..., np.ndarray] = NetRewardFn(
                net, "predict_processed", frozen_stats_kwargs(net, {**kwargs, **asked})
            )
        else:
            if isinstance(source, RewardNet):
                source = file_format.to_bytes(source)
            elif not isinstance(source, bytes):
                source = storage.absolute(source)
            self.reward_fn = _load_typed_reward(reward_type, source, kwargs)
            self.net = getattr(self.reward_fn, "net", None)
            if self.net is not None:
                self.net.to(device)
        self.sync = networks.NormSync(self.net) if update_stats else None
        # The space that maps module-unit actions; None: the actions go in as they are
        # (env units, or the zero reward, which reads none).
        self.action_space: spaces.Space | None = None
        if actions == "module" and reward_type != "zero":
            # A loader of the user's may keep no net: the saved net tells the space then.
            if self.net is not None:
                net_of_space = self.net
            elif isinstance(given, RewardNet):
                net_of_space = given
            else:
                net_of_space = load_source(given, "cpu")
            self.action_space = net_of_space.action_space
            check_action_units(actions, self.action_space)

    def __call__(self, batch: pa.Table) -> pa.Table:
        """``batch`` with the reward column appended; every other column passes through
        untouched (only the four input columns become numpy).
        """
        arrays = table_transitions(batch, self.net)
        if self.action_space is not None:
            obs, acts, new_obs, dones = arrays
            arrays = (obs, env_actions(acts, self.action_space), new_obs, dones)
        try:
            rewards = np.asarray(self.reward_fn(*arrays))
        except ValueError as err:
            names = ", ".join(f"{arg}={col!r}" for arg, col in INPUTS)
            raise ValueError(f"{err} (the net's inputs come from columns {names})") from err
        check_output_column(self.column, batch.column_names)
        if self.column != AS_REWARDS:
            return batch.append_column(self.column, pa.array(rewards))
        # RLlib's offline input reads `rewards`: the learned ones go there, in the
        # recorded column's type; the recorded ones stay, as `env_rewards`.
        recorded = batch.column(AS_REWARDS)
        names = [ENV_REWARDS if n == AS_REWARDS else n for n in batch.column_names]
        learned = pa.array(rewards).cast(recorded.type)
        return batch.rename_columns(names).append_column(AS_REWARDS, learned)

    def merge_into(self, net: RewardNet) -> None:
        """Merge the statistics this copy added (``update_stats``) into ``net``, as the
        Ray engine merges its actors' reports: call it once every batch succeeded.
        """
        if self.sync is None:
            return
        sync = networks.NormSync(net)
        sync.absorb(networks.merge_norm_reports(sync.synced, [self.sync.report()]))


__all__ = [
    "ACTION_UNITS",
    "AS_REWARDS",
    "ENV_REWARDS",
    "BatchRelabeler",
    "as_source",
    "check_action_units",
    "check_options",
    "check_output_column",
    "env_actions",
    "module_actions",
    "load_source",
    "local_device",
]
