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
from ray_rewards.rllib import record_demonstrations, with_env_unit_actions, with_learned_reward

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


def train_once(config) -> dict:
    """One training iteration of ``config``'s algorithm; its result."""
    algo = config.build_algo()
    try:
        return algo.train()
    finally:
        algo.stop()
        # The learner's Ray Data iterator must finish while Ray is up (else it logs
        # errors when the interpreter exits).
        del algo
        gc.collect()


def make_net() -> BasicRewardNet:
    return BasicRewardNet(OBS, ACT, use_next_state=True, use_done=True, hid_sizes=(8,))


def rows(data: str, n: int) -> dict[str, np.ndarray]:
    table = pq.read_table(sorted(glob.glob(f"{data}/**/*.parquet", recursive=True))[0])
    table = table.slice(0, n)
    out = {}
    for name in table.column_names:
        column = table.column(name).combine_chunks()
        to_numpy = getattr(column, "to_numpy_ndarray", None)
        out[name] = to_numpy() if to_numpy else column.to_numpy(zero_copy_only=False)
    return out


def pre_learn(config, data: dict[str, np.ndarray]) -> dict:
    """What RLlib maps over the data set: one batch of recorded rows in, a train batch out."""
    spec = config.get_multi_rl_module_spec(spaces={"default_policy": (OBS, ACT)})
    pre_learner = OfflinePreLearner(config=config.rl_module(rl_module_spec=spec), spaces=(OBS, ACT))
    batch = pre_learner(dict(data))
    if "default_policy/loss_mask" in batch:  # MARWIL: one bootstrap step per transition
        mask = np.asarray(batch["default_policy/loss_mask"], bool)
        return {k: np.asarray(v)[mask] for k, v in batch.items() if k.startswith("default_policy/")}
    return {k: np.asarray(v) for k, v in batch.items() if k.startswith("default_policy/")}


def net_rewards(net, data: dict[str, np.ndarray], actions: np.ndarray) -> np.ndarray:
    return net.predict_processed(
        data["obs"], actions, data["new_obs"], data["terminateds"].astype(np.float32)
    )


@pytest.mark.parametrize("config_class", [MARWILConfig, CQLConfig, IQLConfig])
@pytest.mark.parametrize("units_first", [True, False])
def test_the_offline_pre_learner_gives_learners_the_nets_rewards(
    recorded, config_class, units_first
):
    # ray-rewards record writes env-unit actions (Pendulum: [-2, 2]): declared, in
    # either order, they reach the learner in the RLModule's [-1, 1] and the net in
    # env units.
    net = make_net()
    config = offline(config_class, recorded)
    if units_first:
        config = with_learned_reward(with_env_unit_actions(config), net)
    else:
        config = with_env_unit_actions(with_learned_reward(config, net))
    data = rows(recorded, 32)
    assert np.abs(data["actions"]).max() > 1.0  # env units for real
    batch = pre_learn(config, data)
    np.testing.assert_allclose(batch["default_policy/actions"], data["actions"] / 2.0, rtol=1e-6)
    want = net_rewards(net, data, data["actions"])
    np.testing.assert_allclose(batch["default_policy/rewards"], want, rtol=1e-5, atol=1e-6)
    assert not np.allclose(batch["default_policy/rewards"], data["rewards"])  # not recorded


def test_data_in_the_rlmodules_units_reaches_the_net_in_env_units(recorded):
    # RLlib's own offline output holds the RLModule's normalized actions: read as
    # they are, the net gets them unsquashed, as online.
    net = make_net()
    data = rows(recorded, 32)
    data["actions"] = data["actions"] / 2.0
    batch = pre_learn(with_learned_reward(offline(CQLConfig, recorded), net), data)
    np.testing.assert_allclose(batch["default_policy/actions"], data["actions"])
    want = net_rewards(net, data, data["actions"] * 2.0)
    np.testing.assert_allclose(batch["default_policy/rewards"], want, rtol=1e-5, atol=1e-6)


def test_env_unit_actions_refusals(recorded):
    with pytest.raises(ValueError, match="samples from its env"):
        with_env_unit_actions(PPOConfig().environment("Pendulum-v1"))
    config = with_env_unit_actions(offline(CQLConfig, recorded))
    with pytest.raises(ValueError, match="reads env-unit actions already"):
        with_env_unit_actions(with_learned_reward(config, make_net()))
    with pytest.raises(TypeError, match="expected an AlgorithmConfig"):
        with_env_unit_actions("CQL")
    # An RLModule acting in env units needs no mapping: actions pass as recorded.
    raw = with_env_unit_actions(offline(CQLConfig, recorded).environment(normalize_actions=False))
    data = rows(recorded, 8)
    batch = pre_learn(raw, data)
    np.testing.assert_allclose(batch["default_policy/actions"], data["actions"])


@pytest.mark.parametrize("config_class", [MARWILConfig, CQLConfig])
def test_offline_algorithms_train_on_the_learned_reward(recorded, config_class, tmp_path):
    config = with_env_unit_actions(offline(config_class, recorded))
    algo = with_learned_reward(config, make_net()).build_algo()
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
    assert train_once(config)["training_iteration"] == 1


# Packed is RLlib's default; unpacked takes the same paths but for the unpacking (slow:
# the default suite keeps to ten minutes).
@pytest.fixture(scope="module", params=[pytest.param("flat", marks=pytest.mark.slow), "packed"])
def rllib_recorded(ray_session, tmp_path_factory, request) -> tuple[str, list[str]]:
    """RLlib's own offline output (flat transitions, `output_write_episodes=False`), with
    observations LZ4-packed (RLlib's default) or not; the folder and the packed columns.
    """
    packed = ["obs", "new_obs"] if request.param == "packed" else []
    path = str(tmp_path_factory.mktemp("rllib_output") / "out")
    config = (
        PPOConfig()
        .environment("Pendulum-v1")
        .env_runners(num_env_runners=0)
        .training(train_batch_size_per_learner=200, minibatch_size=100, num_epochs=1)
        .rl_module(model_config={"fcnet_hiddens": [8]})
        .offline_data(output=path, output_write_episodes=False, output_compress_columns=packed)
        .debugging(seed=0)
    )
    algo = config.build_algo()
    try:
        algo.train()
    finally:
        algo.stop()
    return path, packed


def unpacked_rows(path: str, n: int) -> dict[str, np.ndarray]:
    """The first ``n`` rows of the Parquet files under ``path``, packed columns unpacked."""
    from ray_rewards.data.packed import unpack_array

    files = sorted(glob.glob(f"{path}/**/*.parquet", recursive=True))
    assert files, f"no Parquet under {path}"
    table = pq.read_table(files[0]).slice(0, n)
    out = {}
    for name in ("obs", "actions", "new_obs", "terminateds", "rewards"):
        column = table.column(name).to_pylist()
        if isinstance(column[0], (str, bytes)):
            column = [unpack_array(v) for v in column]
        out[name] = np.asarray(column)
    return out


def test_both_ways_read_rllibs_own_output(rllib_recorded, tmp_path):
    from click.testing import CliRunner

    from ray_rewards import serialize
    from ray_rewards.cli import main

    path, packed = rllib_recorded
    net = make_net()
    data = unpacked_rows(path, 64)
    assert np.abs(data["actions"]).max() > 0  # the RLModule's actions, unsquashed for the net
    want = net_rewards(net, data, np.clip(data["actions"], -1, 1) * 2.0)

    # In the learner: RLlib's data as it is (module units), the net given env units.
    config = with_learned_reward(
        offline(CQLConfig, path).offline_data(input_compress_columns=packed), net
    )
    batch = pre_learn(config, rows(path, 64))
    np.testing.assert_allclose(batch["default_policy/rewards"], want, rtol=1e-5, atol=1e-6)
    assert train_once(config)["training_iteration"] == 1

    # Relabeled once, module-unit actions declared: the same rewards, then CQL reads it.
    serialize.save(net, str(tmp_path / "net.pt"))
    out = tmp_path / "relabeled"
    args = [path, str(out), "--reward", str(tmp_path / "net.pt"), "--as-rewards"]
    result = CliRunner().invoke(main, ["relabel", *args, "--actions", "module"])
    assert result.exit_code == 0, result.output
    relabeled = unpacked_rows(str(out), 64)
    np.testing.assert_allclose(relabeled["rewards"], want, rtol=1e-5, atol=1e-6)
    config = offline(CQLConfig, str(out)).offline_data(input_compress_columns=packed)
    assert train_once(config)["training_iteration"] == 1
