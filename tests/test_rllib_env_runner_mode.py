"""Env-runner mode: env runners relabel their samples through a RewardActor."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from helpers import make_net
from ray.rllib.algorithms.ppo import PPOConfig

from ray_rewards.actors import RewardActor
from ray_rewards.rllib import with_learned_reward
from ray_rewards.rllib.env_runner_relabel import RelabelOnEnvRunner
from ray_rewards.rllib.episodes import episode_transitions

PENDULUM = gym.make("Pendulum-v1")
OBS, ACT = PENDULUM.observation_space, PENDULUM.action_space


def test_env_runner_samples_carry_the_actors_rewards(ray_session):
    net = make_net(OBS, ACT)
    actor = RewardActor(net)
    config = (
        PPOConfig()
        .environment("Pendulum-v1")
        .env_runners(num_env_runners=0, num_envs_per_env_runner=2)
        .training(train_batch_size_per_learner=200, minibatch_size=100, num_epochs=1)
    )
    config = with_learned_reward(config, actor, coef=2.0)
    # The learners are untouched: relabeling happens on the env runners.
    assert config._learner_connector is None
    algo = config.build_algo()
    try:
        episodes = algo.env_runner.sample(num_timesteps=120, random_actions=True)
        chunks = [(e, len(e)) for e in episodes if len(e)]
        assert sum(n for _, n in chunks) >= 120
        state, action, next_state, done = episode_transitions(
            chunks, algo.env_runner.env.single_action_space, True, False
        )
        expected = 2.0 * net.predict(state, action, next_state, done)
        got = np.concatenate([np.asarray(e.get_rewards(slice(0, n))) for e, n in chunks])
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
        result = algo.train()
        learned = result["env_runners"]["learned_reward"]
        assert np.isfinite(learned["mean"]) and learned["min"] <= learned["max"]
    finally:
        algo.stop()


@pytest.mark.parametrize("num_env_runners", [0, 1])
def test_env_runner_mode_keeps_reporting_env_returns(ray_session, num_env_runners):
    """The env runner computes episode returns from the chunks it kept, after sample():
    a +100 reward written into those would make Pendulum's returns positive."""
    net = make_net(OBS, ACT)
    with th.no_grad():
        for p in net.parameters():
            p.zero_()
        net.mlp.dense_final.bias.fill_(100.0)
    config = (
        PPOConfig()
        .environment("Pendulum-v1", env_config={"max_episode_steps": 60})
        .env_runners(num_env_runners=num_env_runners, rollout_fragment_length=50)
        .training(train_batch_size_per_learner=200, minibatch_size=100, num_epochs=1)
        .rl_module(model_config={"fcnet_hiddens": [16]})
    )
    algo = with_learned_reward(config, RewardActor(net)).build_algo()
    try:
        for _ in range(2):
            runners = algo.train()["env_runners"]
            assert runners["learned_reward"]["mean"] == pytest.approx(100.0)
        assert runners["num_episodes_lifetime"] >= 5
        assert -16.3 * 60 <= runners["episode_return_min"] <= runners["episode_return_max"] < 0
    finally:
        algo.stop()


def test_env_runner_mode_refuses_bad_input():
    space = gym.make("Pendulum-v1").action_space
    with pytest.raises(TypeError, match="RewardActor"):
        RelabelOnEnvRunner(object(), space)
    with pytest.raises(ValueError, match="RelabelOnEnvRunner: mode must be one of"):
        RelabelOnEnvRunner(object(), space, mode="multiply")
    with pytest.raises(ValueError, match="RelabelOnEnvRunner: coef must be finite, got nan"):
        RelabelOnEnvRunner(object(), space, coef=float("nan"))
