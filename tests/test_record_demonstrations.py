"""record_demonstrations and ``ray-rewards record``: real PPO algorithms, no training."""

from __future__ import annotations

import glob
import os

import gymnasium as gym
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
import torch as th
from click.testing import CliRunner
from helpers import make_net

from ray_rewards import cli, data
from ray_rewards.rllib import RecordResult, record_demonstrations

CARTPOLE_OBS = gym.spaces.Box(-np.inf, np.inf, (4,), np.float32)
CARTPOLE_ACT = gym.spaces.Discrete(2)
COLUMNS = {"obs", "actions", "new_obs", "rewards", "terminateds", "truncateds", "eps_id"}


def ppo(env: str, **env_kwargs):
    from ray.rllib.algorithms.ppo import PPOConfig

    return (
        PPOConfig()
        .environment(env, **env_kwargs)
        .env_runners(num_env_runners=0)
        .learners(num_learners=0)
        .rl_module(model_config={"fcnet_hiddens": [16]})
        # A config seed: RLlib re-seeds the envs with it on every sample() call.
        .debugging(seed=0)
    )


def read(path: str) -> dict[str, np.ndarray]:
    files = sorted(glob.glob(os.path.join(path, "**", "*.parquet"), recursive=True))
    assert files, f"no parquet under {path}"
    table = pa.concat_tables([pq.read_table(f) for f in files]).combine_chunks()
    out = {}
    for name in table.column_names:
        column = table.column(name).chunk(0)
        if isinstance(column.type, pa.FixedShapeTensorType):
            out[name] = column.to_numpy_ndarray()
        else:
            out[name] = column.to_numpy(zero_copy_only=False)
    return out


@pytest.fixture(scope="module")
def cartpole(ray_session):
    algo = ppo("CartPole-v1").build_algo()
    yield algo
    algo.stop()


@pytest.fixture(scope="module")
def cartpole_recording(cartpole, tmp_path_factory):
    path = tmp_path_factory.mktemp("rec") / "cartpole"
    return record_demonstrations(cartpole, path, num_episodes=3), read(str(path))


def test_cartpole_transitions_are_complete_episodes(cartpole_recording):
    result, cols = cartpole_recording
    assert isinstance(result, RecordResult) and os.path.isabs(result.path)
    assert set(cols) == COLUMNS
    n = len(cols["obs"])
    assert result.num_episodes == 3 and result.num_transitions == n
    assert cols["obs"].shape == cols["new_obs"].shape == (n, 4)
    assert cols["actions"].dtype == np.int64 and set(np.unique(cols["actions"])) <= {0, 1}
    # Episodes in order, back to back.
    eps = cols["eps_id"]
    assert eps.dtype == np.int64 and np.all(np.diff(eps) >= 0)
    assert sorted(set(eps)) == [0, 1, 2]
    lengths = np.bincount(eps)
    assert lengths.sum() == n
    ends = np.cumsum(lengths) - 1
    flags = cols["terminateds"] | cols["truncateds"]
    assert np.flatnonzero(flags).tolist() == ends.tolist()
    assert not np.any(cols["terminateds"] & cols["truncateds"])
    for e in range(3):
        rows = eps == e
        np.testing.assert_array_equal(cols["new_obs"][rows][:-1], cols["obs"][rows][1:])
    returns = np.array([cols["rewards"][eps == e].sum() for e in range(3)])
    np.testing.assert_allclose(returns, lengths)  # CartPole: +1 per step
    assert result.mean_return == pytest.approx(returns.mean())


def test_seed_repeats_a_recording_and_calls_record_new_episodes(cartpole, tmp_path, capsys):
    a = record_demonstrations(cartpole, tmp_path / "a", num_episodes=20, seed=7)
    logged = capsys.readouterr().out
    assert logged.count("[record ") == 10 and "20/20 episodes" in logged
    b = record_demonstrations(cartpole, tmp_path / "b", num_episodes=20, seed=7)
    cols_a, cols_b = read(a.path), read(b.path)
    for name in COLUMNS:
        np.testing.assert_array_equal(cols_a[name], cols_b[name])
    # Ten sample() calls of 2 episodes: without per-call seeds, RLlib's config seed
    # would start every call from the same state.
    starts = np.flatnonzero(np.diff(cols_a["eps_id"], prepend=-1))
    assert len({tuple(o) for o in cols_a["obs"][starts]}) == 20
    c = record_demonstrations(cartpole, tmp_path / "c", num_episodes=2, seed=8)
    assert not np.array_equal(read(c.path)["obs"][0], cols_a["obs"][0])


def test_pendulum_actions_are_in_env_units(ray_session, tmp_path):
    algo = ppo("Pendulum-v1").build_algo()
    try:
        assert algo.config.normalize_actions
        result = record_demonstrations(algo, tmp_path / "p", num_episodes=1, explore=True)
    finally:
        algo.stop()
    cols = read(result.path)
    assert result.num_transitions == 200 and cols["actions"].shape == (200, 1)
    actions = cols["actions"]
    assert actions.min() >= -2.0 and actions.max() <= 2.0
    # Exploring, the module's actions often leave [-0.5, 0.5]: in env units, [-1, 1].
    assert np.abs(actions).max() > 1.0
    assert cols["truncateds"].tolist() == [False] * 199 + [True]
    assert not cols["terminateds"].any()


def test_env_runner_relabeling_does_not_reach_the_recording(ray_session, tmp_path):
    from ray_rewards.actors import RewardActor
    from ray_rewards.rllib import with_learned_reward

    env = gym.make("Pendulum-v1")
    net = make_net(env.observation_space, env.action_space)
    with th.no_grad():
        for p in net.parameters():
            p.zero_()
        net.mlp.dense_final.bias.fill_(100.0)
    algo = with_learned_reward(ppo("Pendulum-v1"), RewardActor(net)).build_algo()
    try:
        result = record_demonstrations(algo, tmp_path / "p", num_episodes=1)
        # The callback is back in place after recording.
        assert algo.env_runner.sample(num_timesteps=10)[0].get_rewards()[0] == pytest.approx(100)
    finally:
        algo.stop()
    assert -16.3 * 200 <= result.mean_return < 0
    assert read(result.path)["rewards"].max() <= 0


def test_relabel_reads_a_recording(cartpole_recording):
    result, cols = cartpole_recording
    net = make_net(CARTPOLE_OBS, CARTPOLE_ACT)
    out = data.relabel_dataset(ray.data.read_parquet(result.path), net).to_pandas()
    assert len(out) == result.num_transitions and COLUMNS <= set(out)
    want = net.predict_processed(cols["obs"], cols["actions"], cols["new_obs"], cols["terminateds"])
    np.testing.assert_allclose(
        np.sort(out["learned_rewards"].to_numpy()), np.sort(want), rtol=1e-5, atol=1e-6
    )


def test_refuses_bad_arguments(cartpole, tmp_path):
    with pytest.raises(ValueError, match="num_episodes"):
        record_demonstrations(cartpole, tmp_path / "x", num_episodes=0)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("")
    with pytest.raises(FileExistsError, match="full"):
        record_demonstrations(cartpole, tmp_path / "full", num_episodes=1)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        record_demonstrations(tmp_path / "missing", tmp_path / "y", num_episodes=1)


def test_cli_records_a_checkpoint(cartpole, tmp_path):
    ckpt = str(tmp_path / "ckpt")
    cartpole.save(ckpt)
    out = str(tmp_path / "demos")
    runner = CliRunner()
    result = runner.invoke(cli.main, ["record", ckpt, out, "--episodes", "2", "--seed", "1"])
    assert result.exit_code == 0, result.output
    # RLlib prints a note of its own on loading the checkpoint: the summary is last.
    summary = result.output.strip().splitlines()[-1]
    assert summary.startswith("recorded 2 episodes (") and summary.endswith(out)
    assert len(np.unique(read(out)["eps_id"])) == 2

    again = runner.invoke(cli.main, ["record", ckpt, out, "--episodes", "2"])
    assert again.exit_code == 1 and "already exists" in again.output
    assert "Traceback" not in again.output

    zero = runner.invoke(cli.main, ["record", ckpt, str(tmp_path / "z"), "--episodes", "0"])
    assert zero.exit_code == 2 and "--episodes" in zero.output
    missing = runner.invoke(
        cli.main, ["record", str(tmp_path / "no"), str(tmp_path / "z"), "--episodes", "1"]
    )
    assert missing.exit_code == 1 and "no checkpoint" in missing.output
