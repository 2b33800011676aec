"""``ray-rewards inspect``: in-process with click's runner, and once as a real process."""

from __future__ import annotations

import os
import shutil
import subprocess

import numpy as np
import pytest
import torch as th
from click.testing import CliRunner
from gymnasium import spaces

from ray_rewards import networks, serialize
from ray_rewards import reward_nets as rn
from ray_rewards.cli import main

OBS = spaces.Box(-1.0, 1.0, (3,))
ACT = spaces.Discrete(2)


@pytest.fixture
def saved_net(tmp_path):
    net = rn.NormalizedRewardNet(
        rn.BasicRewardNet(OBS, ACT, normalize_input_layer=networks.RunningNorm),
        networks.RunningNorm,
    )
    rng = np.random.default_rng(0)
    obs = rng.uniform(-1, 1, (20, 3)).astype(np.float32)
    acts = rng.integers(0, 2, 20)
    with networks.training(net), th.no_grad():
        net(*net.preprocess(obs, acts, None, None))
    net.predict_processed(obs, acts)
    path = tmp_path / "net.pt"
    serialize.save(net, path)
    return net, path


def test_inspect_prints_chain_spaces_params_and_stats(saved_net):
    net, path = saved_net
    result = CliRunner().invoke(main, ["inspect", str(path)])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "wrapper chain:     NormalizedRewardNet(BasicRewardNet)" in out
    assert f"observation space: {OBS}" in out and f"action space:      {ACT}" in out
    assert f"{sum(p.numel() for p in net.parameters()):,} (" in out
    assert "normalize_output_layer (RunningNorm): count=20" in out
    assert "_base.mlp.normalize_input (RunningNorm): count=20" in out
    mean = net.normalize_output_layer.running_mean.numpy()
    assert f"count=20 mean={np.array2string(mean, precision=4)}" in out


def test_inspect_bad_files_exit_1_with_a_message(tmp_path, saved_net):
    runner = CliRunner()
    missing = runner.invoke(main, ["inspect", str(tmp_path / "missing.pt")])
    assert missing.exit_code == 1 and "Error: no saved reward net at" in missing.output

    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(saved_net[1].read_bytes()[:100])
    result = runner.invoke(main, ["inspect", str(truncated)])
    assert result.exit_code == 1 and "truncated or corrupt" in result.output

    state_dict = tmp_path / "sd.pt"
    th.save(saved_net[0].state_dict(), state_dict)
    result = runner.invoke(main, ["inspect", str(state_dict)])
    assert result.exit_code == 1 and "expected a saved RewardNet" in result.output

    evil = tmp_path / "evil.pt"
    th.save({"f": os.system}, evil)
    result = runner.invoke(main, ["inspect", str(evil)])
    assert result.exit_code == 1 and "refused to load" in result.output
    assert "Traceback" not in result.output


def test_help_lists_inspect():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0 and "inspect" in result.output


def test_console_script_runs_inspect(saved_net):
    exe = shutil.which("ray-rewards")
    assert exe, "console script ray-rewards not on PATH: run `pip install -e .`"
    ok = subprocess.run(
        [exe, "inspect", str(saved_net[1])], capture_output=True, text=True, timeout=120
    )
    assert ok.returncode == 0, ok.stderr
    assert "NormalizedRewardNet(BasicRewardNet)" in ok.stdout
