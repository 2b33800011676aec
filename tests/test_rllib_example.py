"""Smoke test: examples/rllib_pendulum_learned_reward.py runs end to end (in this process's
Ray runtime, with small settings)."""

from __future__ import annotations

import importlib.util
import os
import pathlib

from ray_rewards import serialize

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"
EXAMPLE = EXAMPLES / "rllib_pendulum_learned_reward.py"


def test_pendulum_example_runs(ray_session, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("rllib_pendulum_learned_reward", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    ckpt = tmp_path / "ckpt"
    example.main(
        [
            "--iterations", "1",
            "--num-env-runners", "1",
            "--envs-per-runner", "1",
            "--train-batch-size", "200",
            "--fit-steps", "20",
            "--checkpoint-dir", str(ckpt),
        ]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert "fitted a reward net on 4800 random transitions" in out
    assert "iteration 1: env return" in out and "on 200 transitions" in out
    net = serialize.load(os.path.join(ckpt, "reward_net.pt"))
    assert net.normalize_output_layer.moments().count == 4800
