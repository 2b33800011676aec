"""Env-runner mode: env runners relabel their samples through a RewardActor."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from ray.rllib.algorithms.ppo import PPOConfig

from ray_rewards.actors import RewardActor
from ray_rewards.reward_nets import BasicRewardNet
from ray_rewards.rllib import with_learned_reward
from ray_rewards.rllib.env_runner_relabel import RelabelOnEnvRunner
from ray_rewards.rllib.relabel_connector import episode_transitions


def make_net() -> BasicRewardNet:
    th.manual_seed(0)
    env = gym.make("Pendulum-v1")
    return BasicRewardNet(env.observation_space, env.action_space, use_next_state=True)


def test_env_runner_samples_carry_the_actors_rewards(ray_session):
    net = make_net()
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


def test_env_runner_mode_refuses_bad_input():
    with pytest.raises(TypeError, match="RewardActor"):
        RelabelOnEnvRunner(object(), gym.make("Pendulum-v1").action_space)
