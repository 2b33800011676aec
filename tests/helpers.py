"""Nets and transitions the test modules share (import as ``from helpers import ...``)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch as th

from ray_rewards import networks
from ray_rewards.reward_nets import BasicRewardNet, NormalizedRewardNet, RewardNet

# Pendulum-v1's spaces, widened for random data.
OBS = gym.spaces.Box(-10.0, 10.0, (3,), np.float32)
ACT = gym.spaces.Box(-2.0, 2.0, (1,), np.float32)


def make_net(
    obs_space: gym.Space = OBS,
    act_space: gym.Space = ACT,
    *,
    seed: int = 0,
    normalized: bool = False,
    **kwargs,
) -> RewardNet:
    """A small BasicRewardNet (next state and done used, 8 hidden units), optionally
    under a NormalizedRewardNet with RunningNorm; weights fixed by ``seed``.
    """
    th.manual_seed(seed)
    kw = {"use_next_state": True, "use_done": True, "hid_sizes": (8,), **kwargs}
    net = BasicRewardNet(obs_space, act_space, **kw)
    return NormalizedRewardNet(net, networks.RunningNorm) if normalized else net


def random_transitions(
    rng: np.random.Generator,
    n: int,
    obs_space: gym.Space = OBS,
    act_space: gym.Space = ACT,
) -> dict[str, np.ndarray]:
    """``n`` random transitions in RLlib's column names (obs, actions, new_obs,
    terminateds): Box values uniform in [-1, 1], Discrete values uniform.
    """

    def sample(space: gym.Space, size: int) -> np.ndarray:
        if isinstance(space, gym.spaces.Discrete):
            return rng.integers(space.start, space.start + space.n, size).astype(space.dtype)
        return rng.uniform(-1, 1, (size, *space.shape)).astype(space.dtype)

    return {
        "obs": sample(obs_space, n),
        "actions": sample(act_space, n),
        "new_obs": sample(obs_space, n),
        "terminateds": rng.random(n) < 0.1,
    }
