"""make_gym_vec_env: seeded sync/async gymnasium vector envs (SB3 ones: test_sb3_envs.py)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.envs.classic_control.pendulum import PendulumEnv
from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv

from ray_rewards.util import make_gym_vec_env


def rollout(venv, steps: int = 3) -> list[np.ndarray]:
    obs, _ = venv.reset()
    out = [obs]
    for _ in range(steps):
        out.append(venv.step(venv.action_space.sample())[0])
    return out


def test_sync_env_shape_and_mode():
    venv = make_gym_vec_env("Pendulum-v1", n_envs=3, rng=np.random.default_rng(0))
    assert isinstance(venv, SyncVectorEnv)
    assert venv.num_envs == 3
    assert venv.observation_space.shape == (3, 3)
    assert venv.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    # A private metadata dict: gymnasium would otherwise share the env class's.
    assert venv.metadata is not PendulumEnv.metadata
    venv.close()


def test_same_rng_same_rollout_and_distinct_sub_envs():
    a = rollout(make_gym_vec_env("Pendulum-v1", n_envs=4, rng=np.random.default_rng(7)))
    b = rollout(make_gym_vec_env("Pendulum-v1", n_envs=4, rng=np.random.default_rng(7)))
    c = rollout(make_gym_vec_env("Pendulum-v1", n_envs=4, rng=np.random.default_rng(8)))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.allclose(a[0], c[0])
    # Every sub-env has its own seed: no two start in the same state.
    assert len({tuple(row) for row in a[0]}) == 4


def test_parallel_is_async_and_matches_sync():
    sync = make_gym_vec_env("Pendulum-v1", n_envs=2, rng=np.random.default_rng(3))
    par = make_gym_vec_env("Pendulum-v1", n_envs=2, rng=np.random.default_rng(3), parallel=True)
    try:
        assert isinstance(par, AsyncVectorEnv)
        for x, y in zip(rollout(sync), rollout(par)):
            np.testing.assert_array_equal(x, y)
    finally:
        par.close()
        sync.close()


def test_max_episode_steps_and_env_make_kwargs():
    venv = make_gym_vec_env(
        "Pendulum-v1",
        n_envs=2,
        rng=np.random.default_rng(0),
        max_episode_steps=3,
        env_make_kwargs={"g": 1.62},
    )
    assert venv.get_attr("g") == (1.62, 1.62)
    venv.reset()
    truncs = [venv.step(venv.action_space.sample())[3].tolist() for _ in range(3)]
    assert truncs == [[False, False], [False, False], [True, True]]


def test_post_wrappers_applied_in_order_with_index():
    calls = []

    def record(tag):
        def wrap(env, i):
            calls.append((tag, i))
            return gym.wrappers.TransformReward(env, lambda r: r + 1000 * i)

        return wrap

    venv = make_gym_vec_env(
        "Pendulum-v1",
        n_envs=2,
        rng=np.random.default_rng(0),
        post_wrappers=[record("a"), record("b")],
    )
    assert calls == [("a", 0), ("b", 0), ("a", 1), ("b", 1)]
    venv.reset()
    rew = venv.step(venv.action_space.sample())[1]
    # Pendulum rewards are in [-16.3, 0]; env 1 got +1000 twice.
    assert -17 < rew[0] <= 0 and 1983 < rew[1] <= 2000


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"n_envs": 0}, ValueError, "n_envs: expected an integer >= 1, got 0"),
        ({"n_envs": 2.0}, ValueError, "n_envs: expected an integer >= 1"),
        ({"n_envs": True}, ValueError, "n_envs: expected an integer >= 1, got True"),
        ({"rng": 0}, TypeError, "rng: expected a numpy.random.Generator.*got int"),
        ({"max_episode_steps": 0}, ValueError, "max_episode_steps: expected an integer >= 1"),
        ({"env_make_kwargs": [("g", 1)]}, TypeError, "env_make_kwargs: expected a mapping"),
        ({"post_wrappers": [3]}, TypeError, r"post_wrappers\[0\]: expected a callable"),
        ({"post_wrappers": [lambda env, i: 3]}, TypeError, r"post_wrappers\[0\].*got int"),
        ({"env_name": 3}, TypeError, "env_name: expected a registered gymnasium id"),
        ({"env_name": "NoSuchEnv-v0"}, gym.error.NameNotFound, "NoSuchEnv"),
    ],
)
def test_bad_arguments_raise(kwargs, error, match):
    args = {"env_name": "Pendulum-v1", "n_envs": 2, "rng": np.random.default_rng(0), **kwargs}
    with pytest.raises(error, match=match):
        make_gym_vec_env(args.pop("env_name"), **args)
