"""Saved nets as reward functions ``(obs, acts, next_obs, dones) -> rewards``.

:func:`load_reward` loads a saved net and returns a ``RewardFn`` as
``imitation.rewards.serialize.load_reward`` does; :data:`reward_registry` holds
the reward types and takes new ones; :class:`ValidateRewardFn` checks any reward
function's output shape.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np
from gymnasium import spaces

from ray_rewards import file_format, reward_nets
from ray_rewards.inspect import format_chain, wrapper_chain
from ray_rewards.reward_wrapper import RewardFn
from ray_rewards.storage import PathLike

RewardFnLoader = Callable[..., RewardFn]
"""``loader(reward_path, venv, **kwargs) -> RewardFn``, as kept in :data:`reward_registry`."""
RewardFnLoaderFn = RewardFnLoader
"""imitation's name for :data:`RewardFnLoader`."""


class RewardRegistry:
    """Reward types by name: what :func:`load_reward` can load.

    ``reward_registry.register("my_type", value=loader)`` (or as a decorator,
    ``@reward_registry.register("my_type")``) adds a type; ``loader(reward_path,
    venv, **kwargs)`` returns a RewardFn.
    """

    def __init__(self) -> None:
        self._loaders: dict[str, RewardFnLoader] = {}

    def register(
        self, key: str, value: RewardFnLoader | None = None, *, overwrite: bool = False
    ) -> Any:
        """Add ``value`` under ``key``; without ``value``, return a decorator that does.

        Raises KeyError when ``key`` is taken, unless ``overwrite``.
        """
        if value is None:
            return lambda fn: self.register(key, fn, overwrite=overwrite)
        if not callable(value):
            raise TypeError(f"register({key!r}): expected a callable loader, got {value!r}")
        if key in self._loaders and not overwrite:
            raise KeyError(f"reward type {key!r} is already registered (pass overwrite=True)")
        self._loaders[key] = value
        return value

    def get(self, key: str) -> RewardFnLoader:
        """The loader for ``key``; KeyError naming the valid types otherwise."""
        try:
            return self._loaders[key]
        except KeyError:
            raise KeyError(
                f"unknown reward type {key!r}; valid types: {', '.join(self.keys())}"
            ) from None

    def keys(self) -> list[str]:
        """Registered reward types, in registration order."""
        return list(self._loaders)

    def __contains__(self, key: object) -> bool:
        return key in self._loaders


reward_registry = RewardRegistry()


class RewardShapeError(ValueError, AssertionError):
    """A reward function gave rewards whose shape is not ``(B,)`` for ``B`` transitions.

    A ValueError like every bad output here, and an AssertionError too, which is what
    imitation's ``ValidateRewardFn`` raised (code written against it catches that).
    """


def check_rewards(rew: Any, batch_size: int, who: str) -> None:
    """RewardShapeError naming ``who`` unless ``rew`` has shape ``(batch_size,)``."""
    shape = getattr(rew, "shape", None)
    if shape != (batch_size,):
        got = f"shape {shape}" if shape is not None else f"a {type(rew).__name__}"
        raise RewardShapeError(f"{who}: expected rewards of shape ({batch_size},), got {got}")


class ValidateRewardFn:
    """Wrap a reward function so that every call checks it returned one reward per
    transition (imitation's ``serialize.ValidateRewardFn``).

    Raises RewardShapeError (a ValueError and an AssertionError) otherwise; picklable
    when ``reward_fn`` is.
    """

    def __init__(self, reward_fn: RewardFn):
        self.reward_fn = reward_fn

    def __call__(
        self,
        state: np.ndarray,
        action: np.ndarray,
        next_state: np.ndarray | None,
        done: np.ndarray | None,
    ) -> np.ndarray:
        """``reward_fn``'s rewards, of shape ``(len(state),)``."""
        rew = self.reward_fn(state, action, next_state, done)
        if getattr(rew, "shape", None) != (len(state),):
            who = getattr(self.reward_fn, "__qualname__", None) or repr(self.reward_fn)
            check_rewards(rew, len(state), who)
        return rew

    def __repr__(self) -> str:
        return f"ValidateRewardFn({self.reward_fn!r})"


class NetRewardFn:
    """A RewardFn calling one prediction method of a reward net with fixed kwargs.

    Picklable with plain pickle (the net pickles safely; no closures), so it can be
    shipped to Ray workers. Checks that the net returns one reward per transition.
    """

    def __init__(self, net: reward_nets.RewardNet, method: str, kwargs: dict[str, Any]):
        self.net = net
        self.method = method
        self.kwargs = dict(kwargs)

    def __call__(
        self,
        obs: np.ndarray,
        acts: np.ndarray,
        next_obs: np.ndarray | None,
        dones: np.ndarray | None,
    ) -> np.ndarray:
        """Rewards of shape ``(B,)`` for a batch of ``B`` transitions."""
        rew = getattr(self.net, self.method)(obs, acts, next_obs, dones, **self.kwargs)
        if getattr(rew, "shape", None) != (len(obs),):  # the message only when it fails
            check_rewards(rew, len(obs), f"{type(self.net).__name__}.{self.method}")
        return rew

    def __repr__(self) -> str:
        kw = "".join(f", {k}={v!r}" for k, v in self.kwargs.items())
        return f"NetRewardFn({format_chain(self.net)}.{self.method}{kw})"


def _env_spaces(venv: Any) -> tuple[spaces.Space, spaces.Space]:
    """A vector env's single-env spaces (a plain env's own spaces)."""
    if hasattr(venv, "single_observation_space"):
        return venv.single_observation_space, venv.single_action_space
    return venv.observation_space, venv.action_space


def _load_for_env(path: PathLike, venv: Any) -> reward_nets.RewardNet:
    """Load a net and check its spaces are ``venv``'s (None skips the check)."""
    net = file_format.load(path)
    if venv is not None:
        for what, net_space, env_space in zip(
            ("observation", "action"),
            (net.observation_space, net.action_space),
            _env_spaces(venv),
        ):
            if net_space != env_space:
                raise ValueError(
                    f"{os.fspath(path)}: the net's {what} space {net_space} does not match "
                    f"the environment's {env_space}"
                )
    return net


def _expect(net: reward_nets.RewardNet, ok: bool, reward_type: str, expected: str) -> None:
    if not ok:
        raise TypeError(
            f"{reward_type}: expected a net of the form {expected}, found {format_chain(net)}"
        )


def frozen_stats_kwargs(net: reward_nets.RewardNet, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` with ``update_stats=False`` unless given, where ``net`` normalizes.

    A loaded reward is for evaluation or RL on a fixed reward: statistics fitted in
    training stay frozen unless the caller says ``update_stats=True``. Nets without a
    NormalizedRewardNet anywhere (ensemble members included) do not get the
    keyword, so custom nets need not accept it.
    """
    if any(isinstance(m, reward_nets.NormalizedRewardNet) for m in net.modules()):
        return {"update_stats": False, **kwargs}
    return kwargs


def _no_kwargs(reward_type: str, kwargs: dict[str, Any]) -> None:
    if kwargs:
        raise TypeError(
            f"{reward_type} takes no keyword arguments (it calls predict), got {sorted(kwargs)}"
        )


def _load_normalized(path: PathLike, venv: Any, **kwargs: Any) -> RewardFn:
    net = _load_for_env(path, venv)
    _expect(
        net,
        isinstance(net, reward_nets.NormalizedRewardNet),
        "RewardNet_normalized",
        "NormalizedRewardNet(...)",
    )
    return NetRewardFn(net, "predict_processed", frozen_stats_kwargs(net, kwargs))


def _load_unnormalized(path: PathLike, venv: Any, **kwargs: Any) -> RewardFn:
    net = _load_for_env(path, venv)
    if isinstance(net, reward_nets.NormalizedRewardNet):
        net = net.base
    return NetRewardFn(net, "predict_processed", frozen_stats_kwargs(net, kwargs))


def _load_shaped(path: PathLike, venv: Any, **kwargs: Any) -> RewardFn:
    _no_kwargs("RewardNet_shaped", kwargs)
    net = _load_for_env(path, venv)
    _expect(
        net,
        any(isinstance(n, reward_nets.ShapedRewardNet) for n in wrapper_chain(net)),
        "RewardNet_shaped",
        "ShapedRewardNet(...) or a wrapper of one (e.g. NormalizedRewardNet(ShapedRewardNet(...)))",
    )
    return NetRewardFn(net, "predict", {})


def _load_unshaped(path: PathLike, venv: Any, **kwargs: Any) -> RewardFn:
    _no_kwargs("RewardNet_unshaped", kwargs)
    net = _load_for_env(path, venv)
    if isinstance(net, reward_nets.NormalizedRewardNet):
        net = net.base
    if isinstance(net, reward_nets.ShapedRewardNet):
        net = net.base
    return NetRewardFn(net, "predict", {})


def _load_std_added(path: PathLike, venv: Any, **kwargs: Any) -> RewardFn:
    net = _load_for_env(path, venv)
    inner = net.base if isinstance(net, reward_nets.NormalizedRewardNet) else net
    _expect(
        net,
        isinstance(inner, reward_nets.AddSTDRewardWrapper),
        "RewardNet_std_added",
        "AddSTDRewardWrapper(...) or NormalizedRewardNet(AddSTDRewardWrapper(...))",
    )
    return NetRewardFn(inner, "predict_processed", frozen_stats_kwargs(inner, kwargs))


class _ZeroReward:
    """Zero reward for every transition (a baseline; picklable)."""

    def __call__(
        self, obs: np.ndarray, acts: Any = None, next_obs: Any = None, dones: Any = None
    ) -> np.ndarray:
        # float32 like the nets' rewards at torch's default dtype.
        return np.zeros(len(obs), dtype=np.float32)


def load_zero(path: PathLike | None, venv: Any, **kwargs: Any) -> RewardFn:
    """The ``zero`` reward type's loader: zeros for every transition; ``path`` is ignored."""
    _no_kwargs("zero", kwargs)
    return _ZeroReward()


reward_registry.register("RewardNet_normalized", _load_normalized)
reward_registry.register("RewardNet_unnormalized", _load_unnormalized)
reward_registry.register("RewardNet_shaped", _load_shaped)
reward_registry.register("RewardNet_unshaped", _load_unshaped)
reward_registry.register("RewardNet_std_added", _load_std_added)
reward_registry.register("zero", load_zero)


def load_reward(
    reward_type: str, reward_path: PathLike | None, venv: Any, **kwargs: Any
) -> RewardFn:
    """Load a saved reward as a RewardFn ``(obs, acts, next_obs, dones) -> (B,)``.

    Built-in types (``reward_registry.keys()`` lists all):

    - ``RewardNet_normalized``: the net must be ``NormalizedRewardNet(...)``; calls
      ``predict_processed`` with ``update_stats=False`` unless ``kwargs`` says
      ``update_stats=True``; other kwargs pass down.
    - ``RewardNet_unnormalized``: strips an outer NormalizedRewardNet if present;
      the base's ``predict_processed(**kwargs)``.
    - ``RewardNet_shaped``: the net as is (``predict``); its chain must contain a
      ShapedRewardNet.
    - ``RewardNet_unshaped``: strips a NormalizedRewardNet, then a ShapedRewardNet
      (each if present); the rest's ``predict``.
    - ``RewardNet_std_added``: ``AddSTDRewardWrapper(...)``, optionally under a
      NormalizedRewardNet (stripped); ``predict_processed`` with ``alpha=`` from kwargs.
    - ``zero``: zeros; ``reward_path`` is ignored.

    Wherever normalization layers remain, their statistics stay frozen unless
    ``update_stats=True`` is passed.

    Args:
        reward_type: a key of :data:`reward_registry`.
        reward_path: where the net was saved (local path or URI).
        venv: the (vector) env the reward will be used with: the net's spaces must
            match its single observation/action spaces (ValueError otherwise). None
            skips the check (e.g. relabeling offline data).
        **kwargs: passed to the reward type's loader.

    Raises:
        KeyError: unknown ``reward_type`` (the message lists the valid ones).
        TypeError: the saved wrapper chain does not fit ``reward_type`` (the message
            shows the expected and the found chain), or unexpected kwargs.
    """
    return reward_registry.get(reward_type)(reward_path, venv, **kwargs)
