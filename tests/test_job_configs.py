"""The job config parser (``ray_rewards.jobs``): the one YAML -> dataclass loader,
each job's rules, and the ``job`` command (``python -m ray_rewards.jobs``).

The files in cluster/ are checked in test_cluster_configs.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml
from click.testing import CliRunner

from ray_rewards import jobs
from ray_rewards.cli import main as cli
from ray_rewards.train import TrainConfig


def _write(tmp_path, data, name="job.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return str(path)


def test_relative_paths_resolve_against_the_config_file(tmp_path, monkeypatch):
    path = _write(
        tmp_path,
        {"storage_path": "out", "relabel": {"input": "data/x", "reward": "s3://b/net.pt"}},
    )
    cfg = jobs.load_config(path, "relabel")
    assert cfg.storage_path == str(tmp_path / "out")
    assert cfg.settings.input == str(tmp_path / "data" / "x")
    assert cfg.settings.reward == "s3://b/net.pt"
    override = jobs.load_config(path, "relabel", storage_path="gs://b/run2")
    assert override.storage_path == "gs://b/run2"
    # A command-line override is relative to the working directory.
    monkeypatch.chdir(tmp_path / "..")
    local = jobs.load_config(path, "relabel", storage_path="runs/2")
    assert local.storage_path == str(tmp_path.parent / "runs" / "2")


def test_values_are_converted_and_type_checked(tmp_path):
    cfg = jobs.parse_config(
        {"storage_path": "/r", "pipeline": {"hid_sizes": [8, 8], "lr": 1, "num_pairs": 10}},
        "pipeline",
    )
    assert cfg.settings.hid_sizes == (8, 8) and cfg.settings.lr == 1.0
    assert isinstance(cfg.settings.lr, float)


@pytest.mark.parametrize(
    ("job", "data", "error", "match"),
    [
        ("pipeline", ["not", "a", "mapping"], ValueError, "expected a mapping"),
        ("pipeline", {"pipeline": {}}, ValueError, "'storage_path' is required"),
        ("pipeline", {"storage_path": "/r", "train": {}}, ValueError, "section for job 'train'"),
        (
            "pipeline",
            {"storage_path": "/r", "pipline": {}},
            ValueError,
            r"unknown top-level.*pipline",
        ),
        ("pipeline", {"storage_path": "/r", "pipeline": {"epoch": 3}}, ValueError, "epoch"),
        (
            "pipeline",
            {"storage_path": "/r", "pipeline": {"epochs": "3"}},
            TypeError,
            r"pipeline\.epochs: expected int, got '3'",
        ),
        (
            "pipeline",
            {"storage_path": "/r", "pipeline": {"hid_sizes": [8, "x"]}},
            TypeError,
            "hid_sizes",
        ),
        (
            "pipeline",
            {"storage_path": "/r", "pipeline": {"output_dir": "x"}},
            ValueError,
            "set by the job",
        ),
        ("pipeline", {"storage_path": "s3://b/p", "pipeline": {}}, ValueError, "work_dir"),
        (
            "relabel",
            {"storage_path": "/r", "work_dir": "/w", "relabel": {}},
            ValueError,
            "pipeline setting",
        ),
        (
            "relabel",
            {"storage_path": "/r", "relabel": {"input": "x"}},
            ValueError,
            r"missing required keys \['reward'\]",
        ),
        (
            "relabel",
            {"storage_path": "/r", "relabel": {"input": "x", "reward": "y", "update_stats": "yes"}},
            TypeError,
            "update_stats: expected bool",
        ),
        (
            "train",
            {
                "storage_path": "/r",
                "train": {"train_data": "d", "env": "Pendulum-v1", "output": "n.pt"},
            },
            ValueError,
            "train.output is set by the job",
        ),
        (
            "train",
            {"storage_path": "/r", "train": {"train_data": "s3://b/d", "env": "E"}},
            ValueError,
            "train_data is a URI",
        ),
        (
            "train",
            {"storage_path": "/r", "train": {"train_data": "d", "env": "E", "loss": "hinge"}},
            ValueError,
            r"train: loss: expected one of",
        ),
        (
            "rllib",
            {"storage_path": "/r", "rllib": {"reward": "n.pt"}},
            ValueError,
            "iterations, env_steps or both",
        ),
        (
            "rllib",
            {"storage_path": "/r", "rllib": {"reward": "n.pt", "iterations": 0}},
            ValueError,
            r"rllib\.iterations: expected >= 1",
        ),
        ("fly", {"storage_path": "/r"}, ValueError, "unknown job 'fly'"),
    ],
)
def test_bad_config_errors_name_the_problem(job, data, error, match):
    with pytest.raises(error, match=match):
        jobs.parse_config(data, job, source="job.yaml")


def test_bad_rllib_settings_name_the_key():
    with pytest.raises(ValueError, match=r"rllib\.config\.num_env_runnerz"):
        jobs.algorithm_config(
            jobs.RLlibJobConfig(reward="n.pt", iterations=1, config={"num_env_runnerz": 2})
        )
    with pytest.raises(ValueError, match="rllib.algorithm"):
        jobs.algorithm_config(jobs.RLlibJobConfig(reward="n.pt", iterations=1, algorithm="PPX"))


def test_cli_reports_config_errors_without_a_traceback(tmp_path):
    result = CliRunner().invoke(
        cli, ["job", "relabel", "--config", _write(tmp_path, {"storage_path": "/r"})]
    )
    assert result.exit_code == 2
    assert "missing required keys ['input', 'reward']" in result.output
    missing = CliRunner().invoke(cli, ["job", "relabel", "--config", str(tmp_path / "no.yaml")])
    assert missing.exit_code == 2 and "No such file" in missing.output
    bad_yaml = CliRunner().invoke(cli, ["job", "relabel", "--config", _write(tmp_path, "a: [")])
    assert bad_yaml.exit_code == 2 and "not valid YAML" in bad_yaml.output


def test_a_finished_run_is_never_overwritten(tmp_path):
    (tmp_path / jobs.RESULTS_FILE).write_text(json.dumps({"job": "relabel"}))
    cfg = jobs.parse_config(
        {"storage_path": str(tmp_path), "relabel": {"input": "x", "reward": "y"}}, "relabel"
    )
    with pytest.raises(FileExistsError, match="finished job's results"):
        jobs.run_job(cfg)


def test_storage_join_keeps_uris():
    assert jobs.storage_join("s3://b/p/", "x", "y.pt") == "s3://b/p/x/y.pt"
    assert jobs.storage_join("/r", "x") == os.path.join("/r", "x")


def test_train_config_files_go_through_the_same_loader(tmp_path):
    path = _write(
        tmp_path,
        {
            "train_data": "data/train",
            "eval_data": "s3://b/eval",
            "env": "Pendulum-v1",
            "lr": 1,
            "net_kwargs": {"hid_sizes": [8]},
        },
        name="train.yaml",
    )
    cfg = TrainConfig.from_file(path)
    assert cfg.train_data == str(tmp_path / "data" / "train")
    assert cfg.eval_data == "s3://b/eval"
    assert cfg.output == "reward_net.pt"  # a default, not from the file: as given
    assert isinstance(cfg.lr, float)
    bad = _write(tmp_path, {"train_data": "d", "env": "E", "epochs": "3"}, name="bad.yaml")
    with pytest.raises(TypeError, match=r"bad\.yaml: epochs: expected int, got '3'"):
        TrainConfig.from_file(bad)
    listed = _write(tmp_path, ["train_data"], name="list.yaml")
    with pytest.raises(ValueError, match=r"list\.yaml: expected a mapping"):
        TrainConfig.from_file(listed)


def test_every_job_has_a_runner():
    assert set(jobs.RUNNERS) == set(jobs.JOBS)


def test_python_m_jobs_runs_the_cli_job_command(tmp_path):
    help_text = CliRunner().invoke(cli, ["job", "--help"])
    assert help_text.exit_code == 0 and "--storage-path" in help_text.output
    config = _write(tmp_path, {"storage_path": "/r"})
    run = subprocess.run(
        [sys.executable, "-m", "ray_rewards.jobs", "relabel", "--config", config],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 2, run.stderr
    assert "python -m ray_rewards.jobs" in run.stderr
    assert "missing required keys ['input', 'reward']" in run.stderr


def test_algorithm_config_imports_only_the_algorithm_it_needs():
    """get_trainable_cls imports every RLlib algorithm (DreamerV3 needs Pillow)."""
    code = (
        "import sys\n"
        "from ray_rewards import jobs\n"
        "jobs.algorithm_config(jobs.RLlibJobConfig(reward='n.pt', iterations=1))\n"
        "assert 'ray.rllib.algorithms.ppo' in sys.modules\n"
        "assert 'ray.rllib.algorithms.dreamerv3' not in sys.modules\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
