"""``ray-rewards pipeline --online``: PPO learns its reward from preferences while it
trains, beside PPO on the true reward."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from ray_rewards import serialize
from ray_rewards.cli import main as cli
from ray_rewards.preferences import PreferenceStore


@pytest.mark.parametrize(
    "args, message",
    [
        (["--online", "--epochs", "3"], "--epochs: the offline pipeline's; not --online"),
        (["--num-labels", "30"], "--num-labels: only with --online"),
        (["--selection", "active"], "--selection: only with --online"),
    ],
)
def test_options_of_the_other_form_are_refused(args, message):
    out = CliRunner().invoke(cli, ["pipeline", *args])
    assert out.exit_code == 2 and message in out.output


def test_online_pipeline_spends_the_label_budget_and_saves_what_it_learned(ray_session, tmp_path):
    args = ["--online", "--ppo-timesteps", "2048", "--num-labels", "20"]
    out = CliRunner().invoke(cli, ["pipeline", *args, "--output-dir", str(tmp_path)])
    assert out.exit_code == 0, out.output
    assert "learned from 20 synthetic labels (uniform pairs)" in out.output
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["num_labels"] == 20 and 0 <= summary["last_train_accuracy"] <= 1
    assert summary["config"]["online"] and summary["random_return"] < 0
    files = summary["files"]
    assert len(PreferenceStore(files["labels"])) == 20  # retrainable offline
    net = serialize.load(files["reward_net"], device="cpu")
    assert type(net).__name__ == "NormalizedRewardNet"


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_online_pipeline_learns_a_reward_ppo_can_use(ray_session, tmp_path):
    out = CliRunner().invoke(cli, ["pipeline", "--online", "--output-dir", str(tmp_path)])
    assert out.exit_code == 0, out.output
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["num_labels"] == 500
    assert summary["true_final_return"] > summary["random_return"] + 300
    assert summary["normalized_ratio"] >= 0.8
