"""``ray-rewards relabel`` on the Parquet a real RLlib offline-output run writes."""

from __future__ import annotations

import glob
import os
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch as th
from click.testing import CliRunner
from helpers import make_net

from ray_rewards import serialize
from ray_rewards.cli import main
from ray_rewards.reward_nets import BasicRewardNet
from ray_rewards.stats import Moments


@pytest.fixture(scope="module")
def rllib_output(ray_session, tmp_path_factory):
    """Transitions of CartPole recorded by RLlib's OfflineSingleAgentEnvRunner with
    ``output_write_episodes=False`` and RLlib's default compression of obs/new_obs."""
    from ray.rllib.algorithms.ppo import PPOConfig

    out = tmp_path_factory.mktemp("rllib") / "offline"
    config = (
        PPOConfig()
        .environment("CartPole-v1")
        .env_runners(num_env_runners=0)
        .offline_data(
            output=str(out),
            output_write_episodes=False,
            # Fewer, larger files: RLlib writes one file per row otherwise.
            output_write_method_kwargs={"min_rows_per_file": 1000},
        )
        .training(train_batch_size_per_learner=64, minibatch_size=32, num_epochs=1)
    )
    algo = config.build_algo()
    try:
        algo.env_runner.sample(num_timesteps=60, random_actions=True)
        algo.env_runner.sample(num_timesteps=40, random_actions=True)
    finally:
        algo.stop()
    return str(out)


def read_dir(path: str):
    import pyarrow as pa

    files = sorted(glob.glob(os.path.join(path, "**", "*.parquet"), recursive=True))
    assert files, f"no parquet under {path}"
    return pa.concat_tables([pq.read_table(f) for f in files])


@pytest.fixture(scope="module")
def saved_reward(tmp_path_factory):
    obs = gym.spaces.Box(-np.inf, np.inf, (4,), np.float32)
    net = make_net(obs, gym.spaces.Discrete(2), normalized=True, hid_sizes=(32, 32))
    net.normalize_output_layer.set_moments(Moments(10, np.array([0.1]), np.array([0.5])))
    path = tmp_path_factory.mktemp("net") / "net.pt"
    serialize.save(net, path)
    return net, str(path)


@pytest.mark.parametrize("engine", ["local", "ray"])
def test_round_trip_on_rllib_offline_output(rllib_output, saved_reward, tmp_path, engine):
    from ray.rllib.utils.compression import unpack

    net, path = saved_reward
    src = read_dir(rllib_output)
    assert src.num_rows >= 100
    assert str(src.schema.field("obs").type) == "string"  # RLlib packed it
    out = tmp_path / "relabeled"
    result = CliRunner().invoke(
        main,
        ["relabel", rllib_output, str(out), "--reward", path, "--batch-size", "32"]
        + ["--engine", engine],
    )
    assert result.exit_code == 0, result.output
    assert f"relabeled {src.num_rows} rows" in result.output
    got = read_dir(str(out)).to_pandas()
    assert len(got) == src.num_rows
    # Every original column is kept; the rewards are the net's on the same rows
    # (decoded here with RLlib's own unpack).
    assert set(src.column_names) <= set(got.columns)
    obs = np.stack([unpack(v) for v in got["obs"]])
    new_obs = np.stack([unpack(v) for v in got["new_obs"]])
    want = net.predict_processed(
        obs,
        got["actions"].to_numpy().copy(),
        new_obs,
        got["terminateds"].to_numpy().copy(),
        update_stats=False,
    )
    np.testing.assert_allclose(got["learned_rewards"].to_numpy(), want, rtol=1e-5, atol=1e-6)
    assert sorted(got["rewards"]) == sorted(src.column("rewards").to_pylist())
    # No leftovers beside the output.
    assert os.listdir(tmp_path) == ["relabeled"]


def test_failed_job_writes_nothing(rllib_output, tmp_path):
    th.manual_seed(0)
    wrong = BasicRewardNet(gym.spaces.Box(-1, 1, (7,)), gym.spaces.Discrete(2))
    serialize.save(wrong, tmp_path / "wrong.pt")
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main, ["relabel", rllib_output, str(out), "--reward", str(tmp_path / "wrong.pt")]
    )
    assert result.exit_code == 1
    assert "column 'obs': expected rows of shape (7,)" in result.output
    assert sorted(os.listdir(tmp_path)) == ["wrong.pt"]  # no OUTPUT, no temp dir


def test_existing_output_and_missing_files_are_refused(rllib_output, saved_reward, tmp_path):
    _, path = saved_reward
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("keep me")
    result = CliRunner().invoke(
        main, ["relabel", rllib_output, str(tmp_path / "taken"), "--reward", path]
    )
    assert result.exit_code == 1 and "already exists" in result.output
    assert (tmp_path / "taken" / "x").read_text() == "keep me"
    result = CliRunner().invoke(
        main, ["relabel", rllib_output, str(tmp_path / "o"), "--reward", str(tmp_path / "no")]
    )
    assert result.exit_code == 1 and "no saved reward net" in result.output
    result = CliRunner().invoke(
        main, ["relabel", str(tmp_path / "nothing"), str(tmp_path / "o"), "--reward", path]
    )
    assert result.exit_code == 1 and "no such file or directory" in result.output
    assert not (tmp_path / "o").exists()


def test_the_local_engine_never_imports_ray(rllib_output, saved_reward, tmp_path):
    """``--engine auto`` on a small local input, in a fresh process with no cluster given:
    relabeled in that process, without importing Ray (let alone starting it)."""
    _, path = saved_reward
    out = tmp_path / "out"
    code = (
        "import sys\n"
        "from ray_rewards.cli import main\n"
        "try:\n"
        f"    main(['relabel', {rllib_output!r}, {str(out)!r}, '--reward', {path!r}])\n"
        "except SystemExit as e:\n"
        "    assert e.code in (0, None), e.code\n"
        "print('ray imported:', 'ray' in sys.modules)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "ray imported: False" in done.stdout
    assert f"relabeled {read_dir(rllib_output).num_rows} rows" in done.stdout
    assert sorted(os.listdir(out)) == sorted(
        f"part-{i:05d}.parquet" for i in range(len(os.listdir(out)))
    )


def test_unknown_engine_is_a_usage_error(rllib_output, saved_reward, tmp_path):
    _, path = saved_reward
    result = CliRunner().invoke(
        main, ["relabel", rllib_output, str(tmp_path / "o"), "--reward", path, "--engine", "x"]
    )
    assert result.exit_code == 2 and "'x' is not one of 'auto', 'local', 'ray'" in result.output
    assert not (tmp_path / "o").exists()


def test_module_unit_actions_are_mapped_to_the_nets_action_space(tmp_path):
    """``--actions module``: Pendulum actions as RLlib's offline output holds them with
    normalize_actions reach the net as RLlib's unsquash_action maps them."""
    import pyarrow as pa
    from ray.rllib.utils.spaces.space_utils import unsquash_action

    obs_space = gym.spaces.Box(-8.0, 8.0, (3,), np.float32)
    act_space = gym.spaces.Box(-2.0, 2.0, (1,), np.float32)
    net = make_net(obs_space, act_space, normalized=True)
    serialize.save(net, tmp_path / "net.pt")
    rng = np.random.default_rng(7)
    n = 50
    obs = rng.uniform(-1, 1, (n + 1, 3)).astype(np.float32)
    actions = rng.uniform(-1.2, 1.2, (n, 1)).astype(np.float32)  # a few beyond [-1, 1]
    terminateds = np.zeros(n, bool)
    (tmp_path / "in").mkdir()
    pq.write_table(
        pa.table(
            {
                "obs": obs[:-1].tolist(),
                "actions": actions.tolist(),
                "new_obs": obs[1:].tolist(),
                "terminateds": terminateds,
            }
        ),
        tmp_path / "in" / "part-0.parquet",
    )

    def relabel(out: str, *options: str):
        reward = ["--reward", str(tmp_path / "net.pt"), "--engine", "local"]
        args = ["relabel", str(tmp_path / "in"), str(tmp_path / out), *reward, *options]
        return CliRunner().invoke(main, args)

    result = relabel("module", "--actions", "module")
    assert result.exit_code == 0, result.output
    got = read_dir(str(tmp_path / "module"))
    want = net.predict_processed(
        obs[:-1], unsquash_action(actions, act_space), obs[1:], terminateds, update_stats=False
    )
    np.testing.assert_allclose(got["learned_rewards"].to_numpy(), want, rtol=1e-6)
    assert np.array_equal(np.stack(got["actions"].to_numpy(zero_copy_only=False)), actions)
    # The default reads the actions as env units: other rewards.
    result = relabel("env")
    assert result.exit_code == 0, result.output
    as_is = read_dir(str(tmp_path / "env"))["learned_rewards"].to_numpy()
    assert not np.allclose(as_is, want, rtol=1e-3)
    result = relabel("x", "--actions", "rl")
    assert result.exit_code == 2 and "'rl' is not one of 'env', 'module'" in result.output
    assert not (tmp_path / "x").exists()
