"""``LearnedRewardAlgorithm``: an RLlib Algorithm whose checkpoints carry the reward net.

:func:`~ray_rewards.rllib.with_learned_reward` sets a config's ``algo_class`` to
``learned_reward_algorithm_class(algo_class)``: the original class (PPO, SAC, ...)
with this mixin in front. The mixin

- checks at setup that the net fits the env (spaces, action handling); lets
  off-policy learners relabel their train batch rather than each replayed
  episode; and where the learner runs in the process of the (local) env runner,
  makes it relabel copies so that the env runner's episode returns stay the env's;
- on ``save_to_path`` (which ``Algorithm.save`` and Tune use too) first merges the
  normalization statistics of all copies, then writes the net next to RLlib's
  files as ``<checkpoint>/reward_net.pt`` in ray_rewards' format (loadable by
  ``ray_rewards.serialize.load``, ``load_reward`` and ``ray-rewards inspect``),
  and for GAIL/AIRL the discriminator's optimizer state beside it;
- on ``restore_from_path`` (and so ``Algorithm.from_checkpoint``) loads that file
  and gives it to every learner's copy.

The combined classes are made on demand and live in this module under a name that
encodes the base class (``__qualname__``), so pickle (Ray, Tune and RLlib's own
checkpoint files pickle the algorithm class) finds them again in any process.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

import pyarrow.fs as pafs
from ray.rllib.algorithms.algorithm import Algorithm

from ray_rewards import storage
from ray_rewards.rllib._compat import algorithm_class
from ray_rewards.rllib.reward_state import REWARD_NET_FILE, state_of

_PREFIX = "LearnedReward__"


class LearnedRewardAlgorithm:
    """Mixin for an RLlib Algorithm built by ``with_learned_reward``."""

    def setup(self, config: Any) -> None:
        """The algorithm's setup, then a check that the reward net fits the env."""
        super().setup(config)  # type: ignore[misc]
        reward_state = state_of(self)  # type: ignore[arg-type]
        reward_state.check(self)  # type: ignore[arg-type]
        reward_state.place_pieces(self)  # type: ignore[arg-type]

    def save_to_path(
        self,
        path: str | os.PathLike | None = None,
        *,
        state: Any = None,
        filesystem: pafs.FileSystem | None = None,
        use_msgpack: bool = False,
    ) -> str:
        """RLlib's checkpoint, plus the reward net with merged statistics as
        ``<path>/reward_net.pt``. Returns the checkpoint path.
        """
        if path is not None:
            filesystem, path = storage.resolve(path, filesystem)
        reward_state = state_of(self)  # type: ignore[arg-type]
        reward_state.sync(self)  # type: ignore[arg-type]
        reward_state.pull(self)  # type: ignore[arg-type]
        path = super().save_to_path(  # type: ignore[misc]
            path, state=state, filesystem=filesystem, use_msgpack=use_msgpack
        )
        reward_state.save(path, filesystem=filesystem)
        for part in _checkpoint_parts(self):
            part.save_checkpoint(path, filesystem)
        return path

    def restore_from_path(self, path: str | os.PathLike, *args: Any, **kwargs: Any) -> None:
        """RLlib's restore, then ``<path>/reward_net.pt`` (if present) into every copy."""
        super().restore_from_path(path, *args, **kwargs)  # type: ignore[misc]
        if kwargs.get("component") is None:
            filesystem, fs_path = storage.resolve(path, kwargs.get("filesystem"))
            state_of(self).restore(self, fs_path, filesystem=filesystem)  # type: ignore[arg-type]
            for part in _checkpoint_parts(self):
                part.restore_checkpoint(fs_path, filesystem)


def _checkpoint_parts(algorithm: Any) -> list[Any]:
    """The config's callbacks that keep files of their own in checkpoints (those with
    ``save_checkpoint``/``restore_checkpoint``, e.g. preference learning's labels).
    """
    callbacks = algorithm.config.callbacks_on_train_result
    if not isinstance(callbacks, (list, tuple)):
        callbacks = [callbacks]
    return [c for c in callbacks if hasattr(c, "save_checkpoint")]


def learned_reward_algorithm_class(base: type[Algorithm] | str) -> type[Algorithm]:
    """``base`` (an Algorithm class, or a registered name like ``"PPO"``) with the mixin."""
    if isinstance(base, str):
        base = algorithm_class(base)
    if not (isinstance(base, type) and issubclass(base, Algorithm)):
        raise TypeError(f"expected an RLlib Algorithm class, got {base!r}")
    if issubclass(base, LearnedRewardAlgorithm):
        return base
    name = _encode(base)
    cls = globals().get(name)
    if cls is None:
        cls = type(
            f"{base.__name__}WithLearnedReward",
            (LearnedRewardAlgorithm, base),
            {"__module__": __name__, "__qualname__": name, "__doc__": base.__doc__},
        )
        globals()[name] = cls
    return cls


def __getattr__(name: str) -> Any:
    """Re-create a combined class when pickle looks it up in a fresh process."""
    if name.startswith(_PREFIX):
        return learned_reward_algorithm_class(_decode(name))
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _encode(base: type) -> str:
    # A reversible, dot-free spelling of "module:qualname" (pickle splits names at dots).
    ref = f"{base.__module__}:{base.__qualname__}"
    return _PREFIX + ref.replace("_", "_u").replace(".", "_d").replace(":", "_c")


def _decode(name: str) -> type:
    ref = name[len(_PREFIX) :]
    out, i = [], 0
    while i < len(ref):
        if ref[i] == "_":
            out.append({"u": "_", "d": ".", "c": ":"}[ref[i + 1]])
            i += 2
        else:
            out.append(ref[i])
            i += 1
    module, qualname = "".join(out).split(":")
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


__all__ = ["REWARD_NET_FILE", "LearnedRewardAlgorithm", "learned_reward_algorithm_class"]
