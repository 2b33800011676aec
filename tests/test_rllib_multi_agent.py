"""with_learned_reward on multi-agent configs: one net shared by every module it fits, or
a {module_id: net} mapping; per-agent transitions, per-net statistics and checkpoints."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch as th
from ray.rllib.algorithms.algorithm import Algorithm
from ray.rllib.algorithms.ppo import PPOConfig
from ray.rllib.connectors.connector_v2 import ConnectorV2
from ray.rllib.examples.envs.classes.multi_agent import MultiAgentCartPole
from ray.rllib.utils.metrics import ALL_MODULES

from ray_rewards import networks, serialize
from ray_rewards.actors import RewardActor
from ray_rewards.reward_nets import BasicRewardNet, NormalizedRewardNet
from ray_rewards.rllib import (
    state_of,
    with_adversarial_reward,
    with_learned_reward,
    with_preference_learning,
)
from ray_rewards.rllib._compat import BOOTSTRAP_STEP_ADDED

ENV = MultiAgentCartPole({"num_agents": 2})
OBS, ACT = ENV.get_observation_space(0), ENV.get_action_space(0)

# What the recording piece saw on the (local) learner: one row per agent transition.
SEEN: list[tuple] = []


class RecordTransitions(ConnectorV2):
    """Runs right after the relabeling: each agent's transitions, step by step through
    RLlib's episode API (not ray_rewards' gathering), with the reward it now holds."""

    def __call__(self, *, batch, episodes, shared_data=None, **kwargs):
        bootstrap = bool(shared_data and shared_data.get(BOOTSTRAP_STEP_ADDED))
        for episode in episodes:
            for agent in episode.agent_episodes.values():
                n = len(agent) - bootstrap
                for t in range(n):
                    SEEN.append(
                        (
                            agent.module_id,
                            agent.get_observations(t),
                            agent.get_actions(t),
                            agent.get_observations(t + 1),
                            float(agent.is_terminated and t == n - 1),
                            agent.get_rewards(t),
                        )
                    )
        return batch


def ppo(num_learners: int = 0, record: bool = False) -> PPOConfig:
    config = (
        PPOConfig()
        .environment(MultiAgentCartPole, env_config={"num_agents": 2})
        .multi_agent(
            policies={"p0", "p1"}, policy_mapping_fn=lambda agent_id, *a, **k: f"p{agent_id}"
        )
        .env_runners(num_env_runners=0, rollout_fragment_length=100)
        .learners(num_learners=num_learners)
        .training(train_batch_size_per_learner=200, minibatch_size=100, num_epochs=1)
        .rl_module(model_config={"fcnet_hiddens": [8]})
        .reporting(min_time_s_per_iteration=0)
        .debugging(seed=0)
    )
    if record:
        config = config.learners(learner_connector=lambda *spaces: RecordTransitions())
    return config


def make_net(seed: int = 0, normalized: bool = False):
    th.manual_seed(seed)
    net = BasicRewardNet(OBS, ACT, use_next_state=True, use_done=True, hid_sizes=(8,))
    return NormalizedRewardNet(net, networks.RunningNorm) if normalized else net


def seen_by_module() -> dict[str, tuple[np.ndarray, ...]]:
    out: dict[str, list] = {}
    for module_id, *row in SEEN:
        out.setdefault(module_id, []).append(row)
    return {m: tuple(np.array(c) for c in zip(*rows)) for m, rows in out.items()}


def first_iteration(config) -> dict:
    algo = config.build_algo()
    try:
        return algo.train()
    finally:
        algo.stop()


def test_a_shared_net_relabels_every_agent_with_its_own_transitions(ray_session):
    SEEN.clear()
    net = make_net()
    result = first_iteration(with_learned_reward(ppo(record=True), net))
    seen = seen_by_module()
    assert sorted(seen) == ["p0", "p1"]
    for module_id, (obs, act, next_obs, done, rewards) in seen.items():
        want = net.predict_processed(obs, act, next_obs, done)
        np.testing.assert_allclose(rewards, want, rtol=1e-5, atol=1e-6)
        assert done.sum() >= 1  # agents terminate on their own (CartPole falls)
        report = result["learned_reward"][module_id]
        assert report["net"] == "shared" and report["num_transitions"] == len(rewards)
    total = result["learned_reward"][ALL_MODULES]["num_transitions"]
    assert total == sum(len(r[-1]) for r in seen.values())
    # The env runners' returns stay the env's: the same as without a learned reward.
    plain = first_iteration(ppo())
    assert (
        result["env_runners"]["episode_return_mean"] == plain["env_runners"]["episode_return_mean"]
    )


def test_a_mapping_relabels_its_modules_and_the_rest_keep_the_env_reward(ray_session):
    SEEN.clear()
    net = make_net(3)
    result = first_iteration(with_learned_reward(ppo(record=True), {"p0": net}))
    seen = seen_by_module()
    obs, act, next_obs, done, rewards = seen["p0"]
    np.testing.assert_allclose(
        rewards, net.predict_processed(obs, act, next_obs, done), rtol=1e-5, atol=1e-6
    )
    assert np.all(seen["p1"][-1] == 1.0)  # CartPole's own reward
    assert result["learned_reward"]["p1"] == {"net": None}
    assert result["learned_reward"]["p0"]["net"] == "p0"


def test_refusals_name_what_is_wrong():
    with pytest.raises(ValueError, match=r"modules \['p7'\].*RLModule IDs are \['p0', 'p1'\]"):
        with_learned_reward(ppo(), {"p7": make_net()})
    with pytest.raises(ValueError, match="mapping needs a multi-agent config"):
        with_learned_reward(PPOConfig().environment("CartPole-v1"), {"default_policy": make_net()})
    with pytest.raises(ValueError, match="unmatched_modules must be one of"):
        with_learned_reward(ppo(), make_net(), unmatched_modules="drop")
    with pytest.raises(ValueError, match="with_adversarial_reward: single-agent configs"):
        with_adversarial_reward(ppo(), make_net(), "unused")
    with pytest.raises(ValueError, match="with_preference_learning: single-agent configs"):
        with_preference_learning(ppo(), make_net())


def test_env_runner_mode_refuses_multi_agent(ray_session):
    actor = RewardActor(make_net())
    with pytest.raises(ValueError, match="env-runner mode .* single-agent episodes only"):
        with_learned_reward(ppo(), actor)


def test_spaces_are_checked_per_module_at_build(ray_session):
    wrong = BasicRewardNet(OBS, ACT.__class__(3), hid_sizes=(4,))  # 3 actions, not 2
    with pytest.raises(ValueError, match=r"action space Discrete\(3\) does not match module 'p1'"):
        first_iteration(with_learned_reward(ppo(), {"p0": make_net(), "p1": wrong}))
    with pytest.raises(ValueError, match="fits none of the modules"):
        first_iteration(with_learned_reward(ppo(), wrong))
    with pytest.raises(ValueError, match=r"no reward net for modules \['p1'\]"):
        first_iteration(with_learned_reward(ppo(), {"p0": make_net()}, unmatched_modules="raise"))


def test_two_learners_end_with_equal_statistics_per_net(ray_session):
    config = with_learned_reward(ppo(num_learners=2), make_net(normalized=True), update_stats=True)
    algo = config.build_algo()
    try:
        result = algo.train()
        reward_state = state_of(algo)
        driver = networks.norm_moments(reward_state.net)
        copies = reward_state.learner_moments(algo)
    finally:
        algo.stop()
    assert len(copies) == 2
    for copy in copies:
        for layer, moments in driver.items():
            assert copy[layer].allclose(moments, rtol=0, atol=0)
    counted = result["learned_reward"][ALL_MODULES]["num_transitions"]
    assert driver["normalize_output_layer"].count == counted


def test_a_checkpoint_holds_every_net_and_restores_each(ray_session, tmp_path):
    nets = {"p0": make_net(1, normalized=True), "p1": make_net(2, normalized=True)}
    algo = with_learned_reward(ppo(), nets, update_stats=True).build_algo()
    try:
        algo.train()
        path = algo.save_to_path(str(tmp_path / "ckpt"))
        saved = {
            k: {n: v.clone() for n, v in net.state_dict().items()}
            for k, net in state_of(algo).nets.items()
        }
    finally:
        algo.stop()
    index = json.loads((tmp_path / "ckpt" / "reward_nets" / "index.json").read_text())
    assert index == {"files": {"p0": "p0.pt", "p1": "p1.pt"}, "modules": {"p0": "p0", "p1": "p1"}}
    for file in index["files"].values():
        reward_fn = serialize.load_reward(
            "RewardNet_normalized", os.path.join(path, "reward_nets", file), None
        )
        s = OBS.sample()[None]
        assert reward_fn(s, np.array([1]), s, np.zeros(1)).shape == (1,)
    restored = Algorithm.from_checkpoint(path)
    try:
        back = state_of(restored).nets
        learner_copies = {key: state_of(restored).learner_moments(restored, key) for key in back}
    finally:
        restored.stop()
    for key, state in saved.items():
        assert all(th.equal(state[n], v) for n, v in back[key].state_dict().items())
        (copy,) = learner_copies[key]
        want = networks.norm_moments(back[key])
        assert all(copy[layer].allclose(m, rtol=0, atol=0) for layer, m in want.items())
