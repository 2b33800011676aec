"""with_learned_reward end to end on Ray: PPO and SAC train on the net's rewards,
statistics merge across learners, checkpoints carry the net."""

from __future__ import annotations

import copy
import glob
import os
import sys

import gymnasium as gym
import numpy as np
import pytest
import ray.cloudpickle
import torch as th
from click.testing import CliRunner
from helpers import make_net
from ray.rllib.algorithms.algorithm import Algorithm
from ray.rllib.algorithms.dqn import DQNConfig
from ray.rllib.algorithms.ppo import PPOConfig
from ray.rllib.algorithms.sac import SACConfig
from ray.rllib.utils.spaces.space_utils import unsquash_action

from ray_rewards import cli, networks, serialize
from ray_rewards.reward_nets import BasicRewardNet, NormalizedRewardNet, RewardNet
from ray_rewards.rllib import REWARD_NET_FILE, state_of, with_learned_reward
from ray_rewards.rllib.relabel_connector import find_relabel_pieces
from ray_rewards.stats import Moments

# Learner and env-runner processes do not have tests/ on their path: ship this
# module's reward-net classes by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

ENV = gym.make("Pendulum-v1")
OBS, ACT = ENV.observation_space, ENV.action_space


@serialize.register_safe_class
class PendulumTrueReward(RewardNet):
    """Pendulum-v1's own reward, -(θ² + 0.1·θ̇² + 0.001·u²), from (cos θ, sin θ, θ̇) and u."""

    def forward(self, state, action, next_state, done):
        theta = th.atan2(state[:, 1], state[:, 0])
        torque = th.clamp(action[:, 0], -2.0, 2.0)
        return -(theta**2 + 0.1 * state[:, 2] ** 2 + 0.001 * torque**2)


@serialize.register_safe_class
class RecordingRewardNet(BasicRewardNet):
    """A BasicRewardNet that saves every batch of rewards it computes under ``record_dir``."""

    record_dir = ""

    def forward(self, state, action, next_state, done):
        rew = super().forward(state, action, next_state, done)
        name = f"{os.getpid()}-{th.randint(0, 2**62, ()).item()}.npy"
        np.save(os.path.join(self.record_dir, name), rew.detach().cpu().numpy())
        return rew


def ppo_config(**env_runners) -> PPOConfig:
    return (
        PPOConfig()
        .environment("Pendulum-v1", env_config={"max_episode_steps": 60})
        .env_runners(rollout_fragment_length=50, **env_runners)
        .training(train_batch_size_per_learner=200, minibatch_size=100, num_epochs=1)
        .rl_module(model_config={"fcnet_hiddens": [16]})
        .debugging(seed=0)
    )


def sample_chunks(algo, steps, times):
    """Episode chunks from the algorithm's env runners, sampled ``times`` in a row."""
    out = []
    for _ in range(times):
        if algo.env_runner_group.num_remote_env_runners():
            results = algo.env_runner_group.foreach_env_runner(
                lambda er: er.sample(num_timesteps=steps), local_env_runner=False
            )
            out.extend(e for eps in results for e in eps)
        else:
            out.extend(algo.env_runner.sample(num_timesteps=steps))
    return out


def env_transitions(episodes, action_space=ACT):
    """Each chunk's transitions step by step, actions as the env got them (a Box
    space's unsquashed)."""
    s, a, ns, d, r = [], [], [], [], []
    for ep in episodes:
        for t in range(len(ep)):
            s.append(ep.get_observations(t))
            action = ep.get_actions(t)
            box = isinstance(action_space, gym.spaces.Box)
            a.append(unsquash_action(action, action_space) if box else action)
            ns.append(ep.get_observations(t + 1))
            d.append(float(ep.is_terminated and t == len(ep) - 1))
            r.append(ep.get_rewards(t))
    return np.array(s), np.array(a), np.array(ns), np.array(d, dtype=np.float32), np.array(r)


def train_batch(algo, episodes):
    """The batch the (local) learner's full pipeline builds from ``episodes``."""

    def run(learner):
        return learner._learner_connector(
            rl_module=learner.module, batch={}, episodes=episodes, shared_data={}
        )

    (result,) = algo.learner_group.foreach_learner(run)
    return {
        k: v.numpy() for k, v in result.get()["default_policy"].items() if isinstance(v, th.Tensor)
    }


def test_ppo_trains_on_exactly_the_nets_rewards(ray_session):
    """The rewards in PPO's train batch (after the bootstrap step, before GAE) are the
    net's outputs for those transitions: vector env runner, chunks with lookback."""
    net = make_net(OBS, ACT)
    algo = with_learned_reward(
        ppo_config(num_env_runners=1, num_envs_per_env_runner=2), net
    ).build_algo()
    try:
        result = algo.train()
        learned = result["learned_reward"]
        assert learned["num_transitions"] == 200
        assert learned["min"] <= learned["mean"] <= learned["max"]
        # The env's own return is still what env runners report.
        ret = result["env_runners"]["episode_return_mean"]
        assert -16.3 * 60 <= ret < 0 and abs(ret / 60 - learned["mean"]) > 1.0
        assert learned["env_reward_mean"] < 0

        episodes = sample_chunks(algo, steps=80, times=2)
        assert any(ep.observations.lookback > 0 for ep in episodes)
        assert any(ep.is_terminated or ep.is_truncated for ep in episodes)
        s, a, ns, d, _ = env_transitions(copy.deepcopy(episodes))
        expected = net.predict(s, a, ns, d)
        batch = train_batch(algo, episodes)
        got = batch["rewards"][batch["loss_mask"]]
        np.testing.assert_array_equal(got, expected.astype(got.dtype))
        assert np.all(batch["rewards"][~batch["loss_mask"]] == 0)
        assert "advantages" in batch and "value_targets" in batch
        # On-policy: relabeled on the episodes, before GAE reads them.
        (from_batch,) = algo.learner_group.foreach_learner(
            lambda learner: [p.from_batch for p in find_relabel_pieces(learner._learner_connector)]
        )
        assert from_batch.get() == [False]
    finally:
        algo.stop()


def test_ppo_with_the_true_reward_net_sees_the_env_rewards(ray_session):
    """A net computing Pendulum's reward relabels every transition to the env's reward
    (the env clips the torque and rewards the state before the step)."""
    algo = with_learned_reward(
        ppo_config(num_env_runners=0), PendulumTrueReward(OBS, ACT)
    ).build_algo()
    try:
        episodes = sample_chunks(algo, steps=150, times=2)
        env_r = env_transitions(copy.deepcopy(episodes))[-1]
        assert np.any(np.abs(np.concatenate([e.get_actions() for e in episodes])) > 1)
        batch = train_batch(algo, episodes)
        np.testing.assert_allclose(
            batch["rewards"][batch["loss_mask"]], env_r, rtol=1e-5, atol=1e-4
        )
    finally:
        algo.stop()


def constant_net(value: float) -> BasicRewardNet:
    """A net whose reward is ``value`` for every transition."""
    net = make_net(OBS, ACT)
    with th.no_grad():
        for p in net.parameters():
            p.zero_()
        net.mlp.dense_final.bias.fill_(value)
    return net


def test_local_env_runner_keeps_reporting_env_returns(ray_session):
    """num_env_runners=0 with a local learner: the learner relabels the very chunk
    objects the env runner keeps for its episode metrics. A +100 reward mixed into
    those would make Pendulum's (negative) returns positive."""
    algo = with_learned_reward(ppo_config(num_env_runners=0), constant_net(100.0)).build_algo()
    try:
        for _ in range(3):
            result = algo.train()
            assert result["learned_reward"]["mean"] == pytest.approx(100.0)
            runners = result["env_runners"]
            if "episode_return_max" in runners:
                assert -16.3 * 60 <= runners["episode_return_min"]
                assert runners["episode_return_max"] < 0
        assert runners["num_episodes_lifetime"] >= 5
    finally:
        algo.stop()


def assert_relabels_the_batch(algo):
    """Off-policy: the piece relabels the train batch, right before NumpyToTensor."""
    (result,) = algo.learner_group.foreach_learner(
        lambda learner: [type(c).__name__ for c in learner._learner_connector.connectors]
    )
    names = result.get()
    assert names.index("RelabelRewards") == names.index("NumpyToTensor") - 1


def test_sac_trains_on_the_nets_rewards_from_the_replay_buffer(ray_session):
    net = make_net(OBS, ACT, seed=3)
    config = (
        SACConfig()
        .environment("Pendulum-v1")
        .env_runners(num_env_runners=0, rollout_fragment_length=50)
        .training(
            train_batch_size_per_learner=32,
            num_steps_sampled_before_learning_starts=100,
            replay_buffer_config={"type": "EpisodeReplayBuffer", "capacity": 5000},
        )
        .rl_module(model_config={"fcnet_hiddens": [16]})
    )
    algo = with_learned_reward(config, net).build_algo()
    try:
        assert_relabels_the_batch(algo)
        for _ in range(3):
            result = algo.train()
        assert result["learned_reward"]["num_transitions"] > 0
        buffer = algo.local_replay_buffer
        stored_before = [np.array(ep.rewards.data) for ep in buffer.episodes]
        episodes = buffer.sample(
            num_items=64,
            n_step=1,
            gamma=0.99,
            sample_episodes=True,
            include_extra_model_outputs=True,
        )
        s, a, ns, d, _ = env_transitions(copy.deepcopy(episodes))
        expected = net.predict(s, a, ns, d)
        batch = train_batch(algo, episodes)
        np.testing.assert_array_equal(batch["rewards"], expected.astype(batch["rewards"].dtype))
        # The buffer keeps the env rewards: every sample is relabeled afresh.
        for ep, before in zip(buffer.episodes, stored_before):
            np.testing.assert_array_equal(ep.rewards.data, before)
    finally:
        algo.stop()


def test_dqn_relabels_its_train_batch(ray_session):
    cartpole = gym.make("CartPole-v1")
    th.manual_seed(4)
    net = BasicRewardNet(cartpole.observation_space, cartpole.action_space, hid_sizes=(8,))
    config = (
        DQNConfig()
        .environment("CartPole-v1")
        .env_runners(num_env_runners=0, rollout_fragment_length=50)
        .training(train_batch_size_per_learner=32, num_steps_sampled_before_learning_starts=64)
        .rl_module(model_config={"fcnet_hiddens": [16]})
    )
    algo = with_learned_reward(config, net).build_algo()
    try:
        assert_relabels_the_batch(algo)
        for _ in range(2):
            result = algo.train()
        assert result["learned_reward"]["num_transitions"] > 0
        episodes = algo.local_replay_buffer.sample(
            num_items=48, n_step=1, gamma=0.99, sample_episodes=True,
            include_extra_model_outputs=True,
        )  # fmt: skip
        s, a, ns, d, _ = env_transitions(copy.deepcopy(episodes), cartpole.action_space)
        expected = net.predict(s, a, ns, d)
        batch = train_batch(algo, episodes)
        np.testing.assert_allclose(batch["rewards"], expected, rtol=1e-6)
    finally:
        algo.stop()


def recorded_rewards(record_dir):
    return np.concatenate([np.load(f) for f in sorted(glob.glob(f"{record_dir}/*.npy"))])


def test_two_learners_merge_statistics_and_checkpoint_them(ray_session, tmp_path):
    """2 learners x 2 env runners, update_stats: after every iteration all copies hold
    what one RunningNorm would after every relabeled transition; the checkpoint's
    reward_net.pt carries it (load, load_reward, ray-rewards inspect)."""
    record_dir = tmp_path / "record"
    record_dir.mkdir()
    base = RecordingRewardNet(OBS, ACT, hid_sizes=(8,))
    base.record_dir = str(record_dir)
    net = NormalizedRewardNet(base, networks.RunningNorm)
    start = Moments(50, np.array([0.3]), np.array([2.0]))
    net.normalize_output_layer.set_moments(start)
    config = ppo_config(num_env_runners=2).learners(num_learners=2)
    algo = with_learned_reward(config, net, update_stats=True).build_algo()
    try:
        relabeled = 0
        for _ in range(2):
            result = algo.train()
            relabeled += result["learned_reward"]["num_transitions"]
        raw = recorded_rewards(record_dir)
        assert len(raw) == relabeled == 800
        single = networks.RunningNorm(1)
        single.set_moments(start)
        single.update_stats(raw.astype(np.float64))
        want = single.moments()

        def close(m: Moments) -> bool:
            return m.allclose(want, rtol=1e-6, atol=0)

        norm = result["learned_reward"]["norm"]["normalize_output_layer"]
        assert norm["count"] == want.count
        np.testing.assert_allclose(norm["mean"], want.mean, rtol=1e-6)
        reward_state = state_of(algo)
        assert close(reward_state.net.normalize_output_layer.moments())
        copies = reward_state.learner_moments(algo)
        assert len(copies) == 2 and all(close(c["normalize_output_layer"]) for c in copies)

        path = algo.save_to_path(str(tmp_path / "ckpt"))
        saved = serialize.load(os.path.join(path, REWARD_NET_FILE))
        assert close(saved.normalize_output_layer.moments())
        saved_path = os.path.join(path, REWARD_NET_FILE)
        reward_fn = serialize.load_reward("RewardNet_normalized", saved_path, None)
        s = OBS.sample()[None]
        assert reward_fn(s, ACT.sample()[None], s, np.zeros(1)).shape == (1,)
        inspected = CliRunner().invoke(cli.main, ["inspect", saved_path])
        assert inspected.exit_code == 0, inspected.output
        assert f"count={want.count}" in inspected.output
    finally:
        algo.stop()


def test_checkpoint_round_trip_with_from_checkpoint(ray_session, tmp_path):
    net = NormalizedRewardNet(make_net(OBS, ACT, seed=5), networks.RunningNorm)
    algo = with_learned_reward(ppo_config(num_env_runners=0), net, update_stats=True).build_algo()
    try:
        algo.train()
        path = algo.save_to_path(str(tmp_path / "ckpt"))
        want = state_of(algo).net.normalize_output_layer.moments()
        assert want.count == 200
    finally:
        algo.stop()
    assert os.path.isfile(os.path.join(path, REWARD_NET_FILE))
    restored = Algorithm.from_checkpoint(path)
    try:
        assert type(restored).__name__ == "PPOWithLearnedReward"
        (copy_moments,) = state_of(restored).learner_moments(restored)
        assert copy_moments["normalize_output_layer"].allclose(want, rtol=1e-12)
        restored.train()  # keeps training on the learned reward, statistics merged
        assert state_of(restored).net.normalize_output_layer.moments().count == 400
    finally:
        restored.stop()


def test_net_that_does_not_fit_the_env_is_refused_at_build(ray_session):
    wrong = BasicRewardNet(gym.spaces.Box(-1, 1, (4,)), ACT)
    with pytest.raises(ValueError, match="observation space"):
        with_learned_reward(ppo_config(num_env_runners=0), wrong).build_algo()


def learning_config(seed: int) -> PPOConfig:
    """PPO that solves Pendulum in ~40k steps on a CPU (RLlib's tuned Pendulum settings)."""
    return (
        PPOConfig()
        .environment("Pendulum-v1")
        .env_runners(num_env_runners=0, num_envs_per_env_runner=8)
        .training(
            train_batch_size_per_learner=1024,
            minibatch_size=256,
            num_epochs=20,
            lr=1e-3,
            gamma=0.95,
            lambda_=0.1,
            vf_loss_coeff=0.01,
            vf_clip_param=10.0,
        )
        .reporting(metrics_num_episodes_for_smoothing=16)
        .debugging(seed=seed)
    )


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_ppo_learns_as_well_on_the_true_reward_net_as_on_the_env_reward(ray_session):
    """Same seed, same steps: PPO on a net equal to Pendulum's reward reaches the env
    return PPO on the env reward reaches (random policy: about -1200)."""

    def final_return(config: PPOConfig, iterations: int = 40) -> float:
        algo = config.build_algo()
        try:
            runners = [algo.train()["env_runners"] for _ in range(iterations)]
            returns = [r.get("episode_return_mean", np.nan) for r in runners]
        finally:
            algo.stop()
        return float(np.nanmean(returns[-5:]))  # iterations without a finished episode: nan

    on_env = final_return(learning_config(seed=1))
    on_net = final_return(
        with_learned_reward(learning_config(seed=1), PendulumTrueReward(OBS, ACT))
    )
    print(f"final env return: PPO on env reward {on_env:.1f}, on the true-reward net {on_net:.1f}")
    assert on_env > -500, on_env  # the baseline learned
    assert on_net > -500 and on_net >= on_env - max(100.0, 0.25 * abs(on_env)), (on_net, on_env)
