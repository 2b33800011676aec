"""imitation's ``serialize`` surface: save, load and turn saved nets into reward functions.

Everything here lives in a module of its own and is re-exported, so code written
against ``imitation.rewards.serialize`` keeps working with the prefix changed:

- :mod:`ray_rewards.file_format`: the saved-net format and its allowlist
  (:func:`save`, :func:`load`, :func:`register_safe_class`).
- :mod:`ray_rewards.reward_function`: :func:`load_reward`, :data:`reward_registry`
  and :class:`ValidateRewardFn`.
- :mod:`ray_rewards.inspect`: :func:`describe` (``ray-rewards inspect``).
- :mod:`ray_rewards._spaces`: gymnasium spaces as plain data.
- :mod:`ray_rewards.storage`: local paths and URIs, atomic writes.
"""

from __future__ import annotations

from ray_rewards._spaces import decode_spaces, encode_spaces, space_from_data, space_to_data
from ray_rewards.file_format import (
    UnsafeRewardFileError,
    from_bytes,
    load,
    register_safe_class,
    safe_classes,
    save,
    to_bytes,
)
from ray_rewards.inspect import NetDescription, NormStats, describe, format_chain, wrapper_chain
from ray_rewards.reward_function import (
    NetRewardFn,
    RewardFnLoader,
    RewardFnLoaderFn,
    RewardRegistry,
    RewardShapeError,
    ValidateRewardFn,
    frozen_stats_kwargs,
    load_reward,
    load_zero,
    reward_registry,
)
from ray_rewards.reward_wrapper import RewardFn
from ray_rewards.storage import write_bytes

__all__ = [
    "NetDescription",
    "NetRewardFn",
    "NormStats",
    "RewardFn",
    "RewardFnLoader",
    "RewardFnLoaderFn",
    "RewardRegistry",
    "RewardShapeError",
    "UnsafeRewardFileError",
    "ValidateRewardFn",
    "decode_spaces",
    "describe",
    "encode_spaces",
    "format_chain",
    "from_bytes",
    "frozen_stats_kwargs",
    "load",
    "load_reward",
    "load_zero",
    "register_safe_class",
    "reward_registry",
    "safe_classes",
    "save",
    "space_from_data",
    "space_to_data",
    "to_bytes",
    "wrapper_chain",
    "write_bytes",
]
