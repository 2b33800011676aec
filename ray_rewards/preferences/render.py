"""Frames of queried fragments, for a person to judge: rendered on demand, never per step.

Envs are not rendered while they sample (that would cost a frame per step, and most
steps are never shown to anyone). Instead, for the few fragments that are queried,
:class:`FragmentRenderer` puts a render-only copy of the env into the state each
observation describes and renders it (``render_mode="rgb_array"``). That needs a
function from observation to env state, which gymnasium's classic-control envs
allow (their observations are their state); other envs register one with
:func:`register_state_setter`. Envs without one are shown by their observations
(the labeling page plots them).

Classic control's renderer needs pygame: ``pip install 'ray_rewards[render]'``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np

StateSetter = Callable[[Any, np.ndarray, np.ndarray | None], None]
"""``setter(env.unwrapped, obs, action)``: put the env in the state ``obs`` (one step's
observation) describes; ``action`` (the action taken there, or None) for renderers
that draw it.
"""


def _pendulum(env: Any, obs: np.ndarray, action: np.ndarray | None) -> None:
    env.state = np.array([math.atan2(obs[1], obs[0]), obs[2]])
    env.last_u = None if action is None else float(np.ravel(action)[0])


def _obs_is_state(env: Any, obs: np.ndarray, action: np.ndarray | None) -> None:
    env.state = np.array(obs, dtype=np.float64)


def _acrobot(env: Any, obs: np.ndarray, action: np.ndarray | None) -> None:
    env.state = np.array([math.atan2(obs[1], obs[0]), math.atan2(obs[3], obs[2]), obs[4], obs[5]])


_STATE_SETTERS: dict[str, StateSetter] = {
    "Pendulum-v1": _pendulum,
    "CartPole-v0": _obs_is_state,
    "CartPole-v1": _obs_is_state,
    "MountainCar-v0": _obs_is_state,
    "MountainCarContinuous-v0": _obs_is_state,
    "Acrobot-v1": _acrobot,
}


def register_state_setter(env_id: str, setter: StateSetter) -> None:
    """Make ``env_id``'s fragments renderable: ``setter`` puts the unwrapped env in the
    state an observation describes (see :data:`StateSetter`).
    """
    _STATE_SETTERS[env_id] = setter


def can_render(env_id: str) -> bool:
    """Whether ``env_id`` has a state setter (built in or registered)."""
    return env_id in _STATE_SETTERS


class FragmentRenderer:
    """Renders fragments of ``env_id``: observations ``(T, ...)`` to frames
    ``(T, H, W, 3)`` uint8, shrunk by whole-pixel averaging so the longer side is at
    most ``max_size`` (Pendulum's 500×500 becomes 125×125: a few KB per frame).

    Picklable (it travels inside an RLlib config): the render env is made on first
    use and dropped when pickled.

    Raises:
        ValueError: ``env_id`` has no state setter.
        ImportError: the env's renderer needs pygame and it is not installed.
    """

    def __init__(self, env_id: str, *, max_size: int = 160, **env_kwargs: Any) -> None:
        if not can_render(env_id):
            raise ValueError(
                f"FragmentRenderer: no way to put {env_id!r} in an observation's state; "
                f"built in: {sorted(_STATE_SETTERS)}; register one with "
                "ray_rewards.preferences.render.register_state_setter"
            )
        if max_size < 1:
            raise ValueError(f"FragmentRenderer: max_size must be >= 1, got {max_size}")
        self.env_id = env_id
        self.max_size = max_size
        self.env_kwargs = env_kwargs
        self._env: gym.Env | None = None
        self._make_env()  # fail now, not when the first query comes

    def _make_env(self) -> gym.Env:
        if self._env is None:
            # Frames only: no window, no sound device (pygame's init opens both).
            os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
            os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
            try:
                env = gym.make(self.env_id, render_mode="rgb_array", **self.env_kwargs)
                env.reset(seed=0)
            except gym.error.DependencyNotInstalled as err:
                raise ImportError(
                    f"FragmentRenderer: rendering {self.env_id} needs pygame: "
                    "pip install 'ray_rewards[render]'"
                ) from err
            self._env = env
        return self._env

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_env": None}

    def __call__(self, obs: np.ndarray, actions: np.ndarray | None = None) -> np.ndarray:
        """Frames ``(T, H, W, 3)`` uint8 of one fragment's observations ``(T, ...)``
        (and its actions ``(T, ...)``, drawn where the renderer shows them).
        """
        env = self._make_env()
        setter = _STATE_SETTERS[self.env_id]
        frames = []
        for t in range(len(obs)):
            setter(env.unwrapped, np.asarray(obs[t]), None if actions is None else actions[t])
            frames.append(self._shrink(np.asarray(env.render())))
        return np.stack(frames)

    def _shrink(self, frame: np.ndarray) -> np.ndarray:
        k = math.ceil(max(frame.shape[:2]) / self.max_size)
        if k <= 1:
            return frame.astype(np.uint8)
        h, w = (frame.shape[0] // k) * k, (frame.shape[1] // k) * k
        blocks = frame[:h, :w].reshape(h // k, k, w // k, k, frame.shape[2]).mean(axis=(1, 3))
        return np.round(blocks).astype(np.uint8)

    def close(self) -> None:
        """Close the render env (made again if used later)."""
        if self._env is not None:
            self._env.close()
            self._env = None


__all__ = ["FragmentRenderer", "StateSetter", "can_render", "register_state_setter"]
