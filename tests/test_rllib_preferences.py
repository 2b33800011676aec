"""with_preference_learning: labels arrive and the net changes while PPO trains; a
gatherer that answers nothing never holds training up."""

from __future__ import annotations

import shutil

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from ray.rllib.algorithms.ppo import PPOConfig

from ray_rewards import networks
from ray_rewards.networks import RunningNorm
from ray_rewards.preferences import AsyncGatherer, PreferenceStore
from ray_rewards.reward_nets import BasicRewardNet, NormalizedRewardNet, RewardEnsemble
from ray_rewards.rllib import preference_rounds, state_of, with_preference_learning
from ray_rewards.train import schemas

ENV = gym.make("Pendulum-v1")


def ppo(num_env_runners: int = 0) -> PPOConfig:
    return (
        PPOConfig()
        .environment("Pendulum-v1")
        .env_runners(num_env_runners=num_env_runners, rollout_fragment_length=100)
        .training(train_batch_size_per_learner=400, minibatch_size=200, num_epochs=1)
        .rl_module(model_config={"fcnet_hiddens": [16]})
        .reporting(min_time_s_per_iteration=0)
        .debugging(seed=0)
    )


def make_net() -> NormalizedRewardNet:
    base = BasicRewardNet(ENV.observation_space, ENV.action_space, hid_sizes=(16,))
    return NormalizedRewardNet(base, RunningNorm)


def test_labels_arrive_and_the_net_learns_from_them(ray_session, tmp_path):
    config = with_preference_learning(
        ppo(num_env_runners=2),
        make_net(),
        total_labels=40,
        num_rounds=2,
        fragment_length=10,
        data_dir=str(tmp_path),
    )
    algo = config.build_algo()
    try:
        before = {k: v.clone() for k, v in state_of(algo).net.state_dict().items()}
        reports = [algo.train()["learned_reward"]["preferences"] for _ in range(3)]
        after = state_of(algo).net.state_dict()
        driver = networks.norm_moments(state_of(algo).net)
        copies = state_of(algo).learner_moments(algo)
    finally:
        algo.stop()
    assert [r["num_labels"] for r in reports] == [4, 28, 40]  # 10%, then hyperbolic: 24, 12
    assert reports[-1]["labels_left"] == 0 and 0 <= reports[-1]["train_accuracy"] <= 1
    assert any(not np.array_equal(before[k], after[k]) for k in before)
    # Every learner relabels with the retrained net's statistics.
    assert copies and all(
        c[name].allclose(driver[name], rtol=0, atol=0) for c in copies for name in driver
    )
    labels = schemas.read_numpy(str(tmp_path / "labels"))
    assert len(labels["preference"]) == len(PreferenceStore(str(tmp_path / "labels"))) == 40


def test_an_unanswering_gatherer_never_blocks_training(ray_session, tmp_path):
    gatherer = AsyncGatherer(str(tmp_path / "queue"))
    config = with_preference_learning(
        ppo(), make_net(), gatherer, total_labels=20, num_rounds=1, fragment_length=10
    )
    algo = config.build_algo()
    try:
        reports = [algo.train()["learned_reward"]["preferences"] for _ in range(2)]
    finally:
        algo.stop()
    assert [r["num_labels"] for r in reports] == [0, 0]
    assert reports[-1]["num_pending"] == 20  # every query waits for its answer


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="selection must be one of"):
        with_preference_learning(ppo(), make_net(), selection="random")
    with pytest.raises(ValueError, match='selection="active" needs a RewardEnsemble'):
        with_preference_learning(ppo(), make_net(), selection="active")
    with pytest.raises(ValueError, match="total_labels must be an integer >= 1, got 0"):
        with_preference_learning(ppo(), make_net(), total_labels=0)


def test_a_restored_run_continues_the_query_schedule(ray_session, tmp_path):
    from ray.rllib.algorithms.algorithm import Algorithm

    spaces = (ENV.observation_space, ENV.action_space)
    members = [BasicRewardNet(*spaces, hid_sizes=(8,)) for _ in range(2)]
    config = with_preference_learning(
        ppo(),
        NormalizedRewardNet(RewardEnsemble(*spaces, members), RunningNorm),
        total_labels=40,
        num_rounds=3,
        fragment_length=10,
        selection="active",
        data_dir=str(tmp_path / "prefs"),
    )
    algo = config.build_algo()
    try:
        first = [algo.train()["learned_reward"]["preferences"] for _ in range(2)]
        path = algo.save_to_path(str(tmp_path / "ckpt"))
        saved = {k: v.clone() for k, v in state_of(algo).net.state_dict().items()}
        algo.train()  # labels gathered after the checkpoint
    finally:
        algo.stop()
    # Restored, the store holds the checkpoint's labels; later ones are set aside.
    restored = Algorithm.from_checkpoint(path)
    try:
        assert len(preference_rounds(restored).store) == first[-1]["num_labels"]
    finally:
        restored.stop()
    assert len(list((tmp_path / "prefs" / "labels.superseded").iterdir())) == 1
    # The labels travel with the checkpoint: a run restored where its data folder is
    # gone takes them back from there.
    shutil.rmtree(tmp_path / "prefs")
    restored = Algorithm.from_checkpoint(path)
    try:
        ensemble = state_of(restored).net.base
        assert isinstance(ensemble, RewardEnsemble) and len(ensemble.members) == 2
        back = state_of(restored).net.state_dict()
        assert all(th.equal(saved[k], back[k]) for k in saved) and saved.keys() == back.keys()
        later = [restored.train()["learned_reward"]["preferences"] for _ in range(2)]
    finally:
        restored.stop()
    assert [r["round"] for r in first + later] == [1, 2, 3, 4]
    labels = [r["num_labels"] for r in first + later]
    assert labels[-1] == 40 and labels == sorted(labels)  # on from where it stopped
    assert len(schemas.read_numpy(str(tmp_path / "prefs" / "labels"))["preference"]) == 40
