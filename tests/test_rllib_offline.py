"""with_learned_reward on RLlib's offline algorithms: the recorded rewards of every batch
are the net's (MARWIL, CQL), BC and statistics updates are refused."""

from __future__ import annotations

import gc
import glob

import gymnasium as gym
import numpy as np
import pyarrow.parquet as pq
import pytest
from ray.rllib.algorithms.bc import BCConfig
from ray.rllib.algorithms.cql import CQLConfig
from ray.rllib.algorithms.iql import IQLConfig
from ray.rllib.algorithms.marwil import MARWILConfig
from ray.rllib.algorithms.ppo import PPOConfig
from ray.rllib.offline.offline_prelearner import OfflinePreLearner

from ray_rewards import networks
from ray_rewards.reward_nets import BasicRewardNet, NormalizedRewardNet
from ray_rewards.rllib import record_demonstrations, with_learned_reward

ENV = gym.make("Pendulum-v1")
OBS, ACT = ENV.observation_space, ENV.action_space


@pytest.fixture(scope="module")
def recorded(ray_session, tmp_path_factory) -> str:
    """1000 transitions of an untrained PPO policy, as `ray-rewards record` writes them."""
    path = str(tmp_path_factory.mktemp("offline") / "transitions")
    config = PPOConfig().environment("Pendulum-v1").env_runners(num_env_runners=0)
    algo = config.rl_module(model_config={"fcnet_hiddens": [8]}).build_algo()
    try:
        record_demonstrations(algo, path, num_episodes=5, explore=True, seed=0)
    finally:
        algo.stop()
    return path


def offline(config_class: type, data: str):
    config = (
        config_class()
        .environment("Pendulum-v1", observation_space=OBS, action_space=ACT)
        # Two updates per iteration: RLlib 2.60 hands a local learner a batch where it
        # expects an iterator when there is exactly one.
        .offline_data(input_=[data], dataset_num_iters_per_learner=2)
        .training(train_batch_size_per_learner=64)
        .rl_module(model_config={"fcnet_hiddens": [8]})
        .reporting(min_time_s_per_iteration=0)
    )
    return config.training(lr=None) if config_class is CQLConfig else config


def make_net() -> BasicRewardNet:
    return BasicRewardNet(OBS, ACT, use_next_state=True, use_done=True, hid_sizes=(8,))


def rows(data: str, n: int) -> dict[str, np.ndarray]:
    table = pq.read_table(sorted(glob.glob(f"{data}/*.parquet"))[0]).slice(0, n)
    out = {}
    for name in table.column_names:
        column = table.column(name).combine_chunks()
        to_numpy = getattr(column, "to_numpy_ndarray", None)
        out[name] = to_numpy() if to_numpy else column.to_numpy(zero_copy_only=False)
    return out


@pytest.mark.parametrize("config_class", [MARWILConfig, CQLConfig, IQLConfig])
def test_the_offline_pre_learner_gives_learners_the_nets_rewards(recorded, config_class):
    net = make_net()
    config = with_learned_reward(offline(config_class, recorded), net)
    spec = config.get_multi_rl_module_spec(spaces={"default_policy": (OBS, ACT)})
    # What RLlib maps over the data set: one batch of recorded rows in, a train batch out.
    pre_learner = OfflinePreLearner(config=config.rl_module(rl_module_spec=spec), spaces=(OBS, ACT))
    data = rows(recorded, 32)
    batch = pre_learner(dict(data))
    rewards = np.asarray(batch["default_policy/rewards"])
    if "default_policy/loss_mask" in batch:  # MARWIL: one bootstrap step per transition
        rewards = rewards[np.asarray(batch["default_policy/loss_mask"], bool)]
    want = net.predict_processed(
        data["obs"], data["actions"], data["new_obs"], data["terminateds"].astype(np.float32)
    )
    np.testing.assert_allclose(rewards, want, rtol=1e-5, atol=1e-6)
    assert not np.allclose(rewards, data["rewards"])  # not the recorded ones


@pytest.mark.parametrize("config_class", [MARWILConfig, CQLConfig])
def test_offline_algorithms_train_on_the_learned_reward(recorded, config_class, tmp_path):
    algo = with_learned_reward(offline(config_class, recorded), make_net()).build_algo()
    try:
        result = algo.train()
        path = algo.save_to_path(str(tmp_path / "ckpt"))
    finally:
        algo.stop()
        # The learner's Ray Data iterator must finish while Ray is up (else it logs
        # errors when the interpreter exits).
        del algo
        gc.collect()
    assert result["training_iteration"] == 1
    assert (tmp_path / "ckpt" / "reward_net.pt").exists() and path


def test_what_cannot_work_offline_is_refused(tmp_path):
    data = str(tmp_path)
    with pytest.raises(ValueError, match="BCConfig is behaviour cloning.*ignores rewards"):
        with_learned_reward(offline(BCConfig, data), make_net())
    with pytest.raises(ValueError, match="behaviour cloning"):
        with_learned_reward(offline(MARWILConfig, data).training(beta=0.0), make_net())
    normalized = NormalizedRewardNet(make_net(), networks.RunningNorm)
    with pytest.raises(ValueError, match="update_stats=True cannot merge statistics offline"):
        with_learned_reward(offline(CQLConfig, data), normalized, update_stats=True)


def test_relabel_as_rewards_output_is_what_rllib_offline_trains_on(recorded, tmp_path):
    from click.testing import CliRunner

    from ray_rewards import serialize
    from ray_rewards.cli import main

    net = make_net()
    serialize.save(net, str(tmp_path / "net.pt"))
    out = tmp_path / "relabeled"
    args = ["relabel", recorded, str(out), "--reward", str(tmp_path / "net.pt"), "--as-rewards"]
    result = CliRunner().invoke(main, [*args, "--engine", "local"])
    assert result.exit_code == 0, result.output
    before, after = rows(recorded, 40), rows(str(out), 40)
    want = net.predict_processed(
        before["obs"],
        before["actions"],
        before["new_obs"],
        before["terminateds"].astype(np.float32),
    )
    np.testing.assert_allclose(after["rewards"], want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(after["env_rewards"], before["rewards"])
    again = CliRunner().invoke(main, ["relabel", str(out), str(tmp_path / "twice"), *args[3:]])
    assert again.exit_code == 1 and "'env_rewards', which the data already has" in again.output

    # RLlib reads it with nothing but config.offline_data: CQL trains on it.
    config = offline(CQLConfig, str(out))
    spec = config.get_multi_rl_module_spec(spaces={"default_policy": (OBS, ACT)})
    pre_learner = OfflinePreLearner(config=config.rl_module(rl_module_spec=spec), spaces=(OBS, ACT))
    data = rows(str(out), 16)
    batch = pre_learner({k: v for k, v in data.items() if k != "env_rewards"})
    np.testing.assert_allclose(np.asarray(batch["default_policy/rewards"]), want[:16], rtol=1e-6)
    algo = config.build_algo()
    try:
        assert algo.train()["training_iteration"] == 1
    finally:
        algo.stop()
        del algo
        gc.collect()
