"""Frames of queried fragments: rendered from observations, equal to what the env itself
draws; only queried pairs are rendered, and a pair that cannot be rendered is still asked."""

from __future__ import annotations

import pickle

import gymnasium as gym
import numpy as np
import pytest

from ray_rewards import preferences as prefs
from ray_rewards.preferences.render import FragmentRenderer, register_state_setter

pytest.importorskip("pygame", reason="classic control renders with pygame (the render extra)")


def _rollout(env_id: str, steps: int, seed: int = 0):
    """Observations and actions of a real episode, and the env's own frame at each
    observation (drawn after the step that led there, with the action taken there)."""
    env = gym.make(env_id, render_mode="rgb_array")
    obs, _ = env.reset(seed=seed)
    env.action_space.seed(seed)
    observations, actions, frames = [], [], []
    for _ in range(steps):
        action = env.action_space.sample()
        obs, *_ = env.step(action)
        observations.append(obs)
        actions.append(action)
        frames.append(env.render())
    env.close()
    return np.array(observations), np.array(actions), np.array(frames)


@pytest.mark.parametrize("env_id", ["Pendulum-v1", "CartPole-v1", "Acrobot-v1"])
def test_frames_from_observations_are_the_envs_own(env_id):
    obs, actions, frames = _rollout(env_id, 6)
    if env_id == "Pendulum-v1":
        # The env draws the torque it was last given: the action that led to obs[t].
        shown_actions = actions
    else:
        shown_actions = None
    got = FragmentRenderer(env_id, max_size=10_000)(obs, shown_actions)
    assert got.shape == frames.shape and got.dtype == np.uint8
    # float32 observations give the state back to ~1e-7: at most an edge pixel differs.
    assert np.mean(got != frames) < 1e-3
    assert len({f.tobytes() for f in got}) > 1  # the frames follow the fragment


def test_frames_are_shrunk_by_averaging_to_max_size():
    obs, actions, frames = _rollout("Pendulum-v1", 2)
    small = FragmentRenderer("Pendulum-v1", max_size=125)(obs, actions)
    assert small.shape == (2, 125, 125, 3)  # 500 / 4
    blocks = frames[0].reshape(125, 4, 125, 4, 3).mean(axis=(1, 3))
    np.testing.assert_array_equal(small[0], np.round(blocks).astype(np.uint8))


def test_a_renderer_travels_pickled_and_refuses_envs_it_cannot_place():
    renderer = pickle.loads(pickle.dumps(FragmentRenderer("CartPole-v1")))
    assert renderer(np.zeros((2, 4), np.float32)).shape == (2, 100, 150, 3)
    with pytest.raises(ValueError, match="no way to put 'LunarLander-v3'.*register_state_setter"):
        FragmentRenderer("LunarLander-v3")
    with pytest.raises(ValueError, match="max_size must be >= 1, got 0"):
        FragmentRenderer("CartPole-v1", max_size=0)


def _pendulum_pairs(num: int) -> prefs.Pairs:
    obs, actions, _ = _rollout("Pendulum-v1", 8 * num)
    lengths = np.full(2 * num, 4)
    columns = {
        "obs": obs,
        "actions": actions,
        "new_obs": obs,
        "terminateds": np.zeros(len(obs), bool),
        "rewards": np.zeros(len(obs), np.float32),
    }
    rng = np.random.default_rng(0)
    return prefs.fragment_pairs(columns, lengths, fragment_length=4, num_pairs=num, rng=rng)


def test_async_gatherer_renders_each_queried_pair_once(tmp_path):
    renderer = FragmentRenderer("Pendulum-v1")
    gatherer = prefs.AsyncGatherer(tmp_path / "queue", renderer)
    pairs = _pendulum_pairs(3)
    gatherer.submit(pairs)
    page = prefs.AsyncGatherer(tmp_path / "queue")  # the labeling page: no renderer
    assert sorted(p.name for p in (tmp_path / "queue" / "frames").iterdir()) == sorted(
        f"{q}.npz" for q in pairs["query_id"]
    )
    for i, qid in enumerate(pairs["query_id"]):
        first, second = page.frames(qid)
        np.testing.assert_array_equal(first, renderer(pairs["obs_1"][i], pairs["actions_1"][i]))
        np.testing.assert_array_equal(second, renderer(pairs["obs_2"][i], pairs["actions_2"][i]))
    with pytest.raises(ValueError, match="unknown query id '../queries'"):
        page.frames("../queries")


def test_a_pair_that_fails_to_render_is_still_queried(tmp_path, caplog):
    def broken(env, obs, action):
        raise RuntimeError("no state here")

    register_state_setter("Pendulum-broken-test", broken)
    gym.register("Pendulum-broken-test", "gymnasium.envs.classic_control:PendulumEnv")
    gatherer = prefs.AsyncGatherer(tmp_path / "queue", FragmentRenderer("Pendulum-broken-test"))
    pairs = _pendulum_pairs(2)
    gatherer.submit(pairs)
    assert gatherer.pending() == list(pairs["query_id"])
    assert gatherer.frames(pairs["query_id"][0]) is None
    assert "rendering query" in caplog.text and "no state here" in caplog.text
