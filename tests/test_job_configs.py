"""The job config parser (``ray_rewards.jobs``): the one YAML -> dataclass loader,
each job's rules, and the ``job`` command (``python -m ray_rewards.jobs``).

The files in cluster/ are checked in test_cluster_configs.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import gymnasium as gym
import pytest
import yaml
from click.testing import CliRunner

from ray_rewards import jobs
from ray_rewards.cli import main as cli
from ray_rewards.train import TrainConfig

# A valid adversarial section (no file is read when a config is parsed).
ADV = {"demonstrations": "demos", "iterations": 1, "config": {"env": "CartPole-v1"}}
# A valid preferences section.
PREF = {"iterations": 1, "config": {"env": "Pendulum-v1"}}
# PPO settings of a job that runs in seconds.
TINY_PENDULUM_PPO = {
    "env": "Pendulum-v1",
    "num_env_runners": 0,
    "train_batch_size_per_learner": 200,
    "minibatch_size": 100,
    "num_epochs": 1,
    "model_config": {"fcnet_hiddens": [8]},
}


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
            "relabel",
            {"storage_path": "/r", "relabel": {"input": "x", "reward": "y", "actions": "rllib"}},
            ValueError,
            r"relabel\.actions: expected one of \['env', 'module'\], got 'rllib'",
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
        (
            "adversarial",
            {"storage_path": "/r", "adversarial": {**ADV, "net": "MLPRewardNet"}},
            ValueError,
            r"adversarial\.net: expected one of \['BasicRewardNet'",
        ),
        (
            "adversarial",
            {"storage_path": "/r", "adversarial": {**ADV, "algo": "airl"}},
            ValueError,
            r"adversarial\.net: AIRL needs a shaped reward net .*'BasicRewardNet'",
        ),
        (
            "adversarial",
            {"storage_path": "/r", "adversarial": {**ADV, "algo": "bc"}},
            ValueError,
            r"adversarial\.algo: expected one of \['gail', 'airl'\]",
        ),
        (
            "adversarial",
            {"storage_path": "/r", "adversarial": {**ADV, "net_kwargs": {"hid_size": [8]}}},
            ValueError,
            r"adversarial\.net_kwargs: \['hid_size'\] are not arguments of BasicRewardNet",
        ),
        (
            "adversarial",
            {"storage_path": "/r", "adversarial": {**ADV, "config": {"lr": 0.1}}},
            ValueError,
            r"adversarial\.config\.env: required",
        ),
        (
            "adversarial",
            {"storage_path": "/r", "adversarial": {**ADV, "iterations": None}},
            ValueError,
            "adversarial: give iterations, env_steps or both",
        ),
        (
            "adversarial",
            {"storage_path": "/r", "adversarial": {**ADV, "adversarial_options": {"algo": "x"}}},
            ValueError,
            r"adversarial\.adversarial_options\.algo: set it as adversarial\.algo",
        ),
        (
            "adversarial",
            {"storage_path": "/r", "adversarial": {"iterations": 1}},
            ValueError,
            r"missing required keys \['demonstrations'\]",
        ),
        (
            "preferences",
            {"storage_path": "/r", "preferences": {**PREF, "gatherer": "human"}},
            ValueError,
            r"preferences\.gatherer: expected one of \['synthetic', 'async'\]",
        ),
        (
            "preferences",
            {
                "storage_path": "/r",
                "preferences": {**PREF, "gatherer": "async", "gatherer_options": {"seed": 0}},
            },
            ValueError,
            r"preferences\.gatherer_options: the async gatherer takes none",
        ),
        (
            "preferences",
            {"storage_path": "/r", "preferences": {**PREF, "render": True}},
            ValueError,
            r"preferences\.render: only the async gatherer shows fragments to people",
        ),
        (
            "preferences",
            {
                "storage_path": "/r",
                "preferences": {**PREF, "preference_options": {"data_dir": "x"}},
            },
            ValueError,
            r"preferences\.preference_options\.data_dir: set by the job",
        ),
        (
            "preferences",
            {"storage_path": "/r", "preferences": {**PREF, "net": "MLPRewardNet"}},
            ValueError,
            r"preferences\.net: expected one of \['BasicRewardNet'",
        ),
        (
            "preferences",
            {"storage_path": "/r", "preferences": {**PREF, "net_kwargs": {"hid_size": [8]}}},
            ValueError,
            r"preferences\.net_kwargs: \['hid_size'\] are not arguments of BasicRewardNet",
        ),
        (
            "preferences",
            {"storage_path": "/r", "preferences": {**PREF, "config": {"lr": 0.1}}},
            ValueError,
            r"preferences\.config\.env: required",
        ),
        (
            "preferences",
            {"storage_path": "/r", "preferences": {**PREF, "iterations": None}},
            ValueError,
            "preferences: give iterations, env_steps or both",
        ),
        (
            "preferences",
            {"storage_path": "s3://b/p", "preferences": PREF},
            ValueError,
            r"storage_path 's3://b/p' is a URI, but the preferences job",
        ),
        (
            "record",
            {"storage_path": "/r", "record": {"checkpoint": "c", "episodes": 0}},
            ValueError,
            r"record\.episodes: expected >= 1",
        ),
        (
            "record",
            {"storage_path": "/r", "record": {"checkpoint": "c", "explore": "no"}},
            TypeError,
            r"record\.explore: expected bool",
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


def test_adversarial_job_shares_the_rllib_settings_rules():
    settings = jobs.AdversarialJobConfig(
        demonstrations="d", iterations=1, config={"env": "CartPole-v1", "num_env_runnerz": 2}
    )
    with pytest.raises(ValueError, match=r"adversarial\.config\.num_env_runnerz"):
        jobs.algorithm_config(settings)
    settings = jobs.AdversarialJobConfig(
        demonstrations="d", env_steps=1, algorithm="PPX", config={"env": "CartPole-v1"}
    )
    with pytest.raises(ValueError, match=r"adversarial\.algorithm"):
        jobs.algorithm_config(settings)
    with pytest.raises(ValueError, match=r"adversarial\.env_steps: expected >= 1"):
        jobs.AdversarialJobConfig(demonstrations="d", env_steps=0, config={"env": "E"})
    # AIRL with a shaped net; a saved net needs no env id to build from.
    airl = jobs.parse_config(
        {
            "storage_path": "/r",
            "adversarial": {**ADV, "algo": "airl", "net": "BasicShapedRewardNet"},
        },
        "adversarial",
    )
    assert airl.settings.algo == "airl"
    saved = jobs.parse_config(
        {"storage_path": "/r", "adversarial": {**ADV, "config": {}, "init_net": "n.pt"}},
        "adversarial",
        base_dir="/base",
    )
    assert saved.settings.init_net == "/base/n.pt"
    assert saved.settings.demonstrations == "/base/demos"


def _cartpole_demos(path) -> str:
    """A few CartPole transitions as Parquet in RLlib's columns (no Ray needed)."""
    import gymnasium as gym
    import numpy as np
    import pyarrow.parquet as pq

    from ray_rewards.train import schemas

    env = gym.make("CartPole-v1")
    rng = np.random.default_rng(0)
    n = 64
    columns = {
        "obs": rng.normal(size=(n, 4)).astype(np.float32),
        "actions": rng.integers(0, 2, size=n),
        "new_obs": rng.normal(size=(n, 4)).astype(np.float32),
        "terminateds": rng.random(n) < 0.1,
    }
    table = schemas.to_table(
        columns, schemas.transitions_schema(env.observation_space, env.action_space)
    )
    os.makedirs(path)
    pq.write_table(table, os.path.join(path, "part-0.parquet"))
    return str(path)


def _no_training(*args, **kwargs):
    raise AssertionError("the job built an algorithm despite bad settings")


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"demonstrations": "missing"}, r"adversarial\.demonstrations: .*missing does not exist"),
        ({"init_net": "no_net.pt"}, r"adversarial\.init_net: .*no_net\.pt does not exist"),
        (
            {"adversarial_options": {"disc_batch": 64}},
            r"adversarial\.adversarial_options: \['disc_batch'\] are not options",
        ),
        ({"net": "CNNRewardNet"}, r"adversarial\.net: CNNRewardNet for CartPole-v1"),
        ({"config": {"env": "NoSuchEnv-v0"}}, r"adversarial\.config\.env: 'NoSuchEnv-v0'"),
        (
            {"config": {"env": "CartPole-v1", "num_env_runnerz": 1}},
            r"adversarial\.config\.num_env_runnerz",
        ),
        (
            {"adversarial_options": {"disc_lr": -1.0}},
            r"adversarial: with_adversarial_reward: disc_lr must be a number > 0",
        ),
        ({"config": {"env": "Pendulum-v1"}}, r"adversarial: .*'actions'.* shape"),
    ],
)
def test_adversarial_job_refuses_what_cannot_run_before_training(
    tmp_path, monkeypatch, change, match
):
    """Inputs are checked when the job starts (an earlier job writes them), each error
    naming its key, before any algorithm is built.
    """
    monkeypatch.setattr(jobs.rllib_runners, "train_algorithm", _no_training)
    _cartpole_demos(tmp_path / "demos")
    cfg = jobs.parse_config(
        {"storage_path": "out", "adversarial": {**ADV, **change}},
        "adversarial",
        base_dir=str(tmp_path),
    )
    with pytest.raises(ValueError, match=match):
        jobs.run_adversarial(cfg)


def test_airl_refuses_a_saved_net_without_shaping(tmp_path, monkeypatch):
    import gymnasium as gym

    from ray_rewards import reward_nets, serialize

    monkeypatch.setattr(jobs.rllib_runners, "train_algorithm", _no_training)
    env = gym.make("CartPole-v1")
    plain = reward_nets.BasicRewardNet(env.observation_space, env.action_space, hid_sizes=(4,))
    serialize.save(plain, str(tmp_path / "plain.pt"))
    _cartpole_demos(tmp_path / "demos")
    cfg = jobs.parse_config(
        {"storage_path": "out", "adversarial": {**ADV, "algo": "airl", "init_net": "plain.pt"}},
        "adversarial",
        base_dir=str(tmp_path),
    )
    with pytest.raises(ValueError, match=r"adversarial: .*AIRL needs a shaped reward net"):
        jobs.run_adversarial(cfg)


def test_record_job_refuses_a_missing_checkpoint(tmp_path):
    cfg = jobs.parse_config(
        {"storage_path": "out", "record": {"checkpoint": "no_ckpt"}},
        "record",
        base_dir=str(tmp_path),
    )
    with pytest.raises(ValueError, match=r"record\.checkpoint: .*no_ckpt does not exist"):
        jobs.run_record(cfg)


def test_record_then_adversarial_jobs(tmp_path, ray_session):
    """The record job writes a checkpoint's episodes (to a URI storage: recorded locally,
    then uploaded), the adversarial job trains GAIL on them and saves the checkpoint
    with the policy's reward net.
    """
    import pyarrow.parquet as pq
    from ray.rllib.algorithms.ppo import PPOConfig

    from ray_rewards import serialize
    from ray_rewards.reward_nets import RewardNetFromDiscriminatorLogit

    model = {"fcnet_hiddens": [8]}
    algo = (
        PPOConfig()
        .environment("CartPole-v1")
        .env_runners(num_env_runners=0)
        .rl_module(model_config=model)
        .debugging(seed=0)
        .build_algo()
    )
    algo.save_to_path(str(tmp_path / "ckpt"))
    algo.stop()
    record = _write(
        tmp_path,
        {
            "storage_path": f"file://{tmp_path}/rec",
            "record": {"checkpoint": "ckpt", "episodes": 3},
        },
        name="record.yaml",
    )
    recorded = jobs.run_job(jobs.load_config(record, "record"))
    demos = f"file://{tmp_path}/rec/demonstrations"
    assert recorded["files"] == {"demonstrations": demos}
    assert recorded["episodes"] == 3
    rows = pq.read_table(str(tmp_path / "rec" / "demonstrations")).num_rows
    assert recorded["transitions"] == rows > 0

    adversarial = _write(
        tmp_path,
        {
            "storage_path": "adv",
            "adversarial": {
                "demonstrations": "rec/demonstrations",
                "net_kwargs": {"hid_sizes": [8]},
                "iterations": 2,
                "config": {
                    "env": "CartPole-v1",
                    "num_env_runners": 0,
                    "train_batch_size_per_learner": 200,
                    "minibatch_size": 100,
                    "num_epochs": 1,
                    "seed": 0,
                    "model_config": model,
                },
                "adversarial_options": {"n_disc_updates": 1, "disc_batch_size": 32},
            },
        },
        name="adversarial.yaml",
    )
    results = jobs.run_job(jobs.load_config(adversarial, "adversarial"))
    assert json.loads((tmp_path / "adv" / jobs.RESULTS_FILE).read_text())["job"] == "adversarial"
    history = results["history"]
    assert [h["iteration"] for h in history] == [1, 2]
    assert [h["env_steps"] for h in history] == [200, 400]
    for entry in history:
        assert 0.0 <= entry["disc_accuracy"] <= 1.0
        assert entry["disc_loss"] > 0 and entry["learned_reward_mean"] is not None
    files = results["files"]
    assert files["checkpoint"] == str(tmp_path / "adv" / "checkpoint")
    net = serialize.load(files["reward_net"], device="cpu")
    assert isinstance(net, RewardNetFromDiscriminatorLogit)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"init_net": "no_net.pt"}, r"preferences\.init_net: .*no_net\.pt does not exist"),
        (
            {"preference_options": {"total_label": 5}},
            r"preferences\.preference_options: \['total_label'\] are not options",
        ),
        (
            {"gatherer_options": {"temp": 1.0}},
            r"preferences\.gatherer_options: .*'temp'",
        ),
        ({"net": "CNNRewardNet"}, r"preferences\.net: CNNRewardNet for Pendulum-v1"),
        (
            {"preference_options": {"selection": "best"}},
            r"preferences: with_preference_learning: selection must be one of",
        ),
        (
            {"preference_options": {"mode": "sum"}},
            r"preferences: ",
        ),
    ],
)
def test_preferences_job_refuses_what_cannot_run_before_training(
    tmp_path, monkeypatch, change, match
):
    monkeypatch.setattr(jobs.rllib_runners, "train_algorithm", _no_training)
    cfg = jobs.parse_config(
        {"storage_path": "out", "preferences": {**PREF, **change}},
        "preferences",
        base_dir=str(tmp_path),
    )
    with pytest.raises(ValueError, match=match):
        jobs.run_preferences(cfg)


def test_preferences_job_shares_the_net_settings_of_the_adversarial_job():
    cfg = jobs.parse_config(
        {"storage_path": "/r", "preferences": {**PREF, "preference_options": {"seed": 3}}},
        "preferences",
    )
    net = cfg.settings.net_config()
    assert net.normalize_output and net.loss == "preference" and net.seed == 3
    raw = jobs.parse_config(
        {"storage_path": "/r", "preferences": {**PREF, "normalize_output": False}},
        "preferences",
    )
    assert not raw.settings.net_config().normalize_output
    saved = jobs.parse_config(
        {"storage_path": "/r", "preferences": {**PREF, "config": {}, "init_net": "n.pt"}},
        "preferences",
        base_dir="/base",
    )
    assert saved.settings.init_net == "/base/n.pt"


def test_preferences_job(tmp_path, ray_session):
    """PPO on Pendulum for two iterations, a round of synthetic labels and retraining
    after each; labels under <storage>/preferences, the checkpoint with the learned net.
    """
    from ray_rewards import reward_nets, serialize

    path = _write(
        tmp_path,
        {
            "storage_path": "prefs",
            "preferences": {
                "net_kwargs": {"hid_sizes": [8]},
                "gatherer_options": {"seed": 0},
                "iterations": 2,
                "config": {**TINY_PENDULUM_PPO, "seed": 0},
                "preference_options": {
                    "total_labels": 20,
                    "num_rounds": 1,
                    "fragment_length": 10,
                    "epochs": 1,
                    "batch_size": 8,
                },
            },
        },
        name="preferences.yaml",
    )
    results = jobs.run_job(jobs.load_config(path, "preferences"))
    assert json.loads((tmp_path / "prefs" / jobs.RESULTS_FILE).read_text())["job"] == "preferences"
    history = results["history"]
    assert [h["iteration"] for h in history] == [1, 2]
    assert [h["env_steps"] for h in history] == [200, 400]
    assert 0 < history[0]["num_labels"] <= history[1]["num_labels"] <= 20
    for entry in history:
        assert 0.0 <= entry["train_accuracy"] <= 1.0
    files = results["files"]
    assert files["checkpoint"] == str(tmp_path / "prefs" / "checkpoint")
    assert files["labels"] == str(tmp_path / "prefs" / "preferences" / "labels")
    assert os.listdir(files["labels"])
    net = serialize.load(files["reward_net"], device="cpu")
    assert isinstance(net, reward_nets.NormalizedRewardNet)


def test_preferences_job_with_async_gatherer_renders_what_it_queries(tmp_path, ray_session):
    pytest.importorskip("pygame")
    from ray_rewards.preferences import AsyncGatherer

    settings = {
        **PREF,
        "gatherer": "async",
        "render": True,
        "iterations": 1,
        "net_kwargs": {"hid_sizes": [8]},
        "config": TINY_PENDULUM_PPO,
        "preference_options": {"total_labels": 30, "num_rounds": 1, "fragment_length": 10},
    }
    path = _write(tmp_path, {"storage_path": "prefs", "preferences": settings})
    results = jobs.run_job(jobs.load_config(path, "preferences"))
    queue = AsyncGatherer(results["files"]["queue"])
    pending = queue.pending()
    assert len(pending) == 3 and results["history"][0]["num_labels"] == 0  # 10% of 30
    for qid in pending:
        first, second = queue.frames(qid)
        assert first.shape == second.shape == (10, 125, 125, 3)


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


OFFLINE = {
    "input": "data",
    "iterations": 1,
    "config": {"env": "Pendulum-v1"},
}


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ({"env_steps": 100}, ValueError, r"offline\.env_steps: offline algorithms sample no env"),
        ({"actions": "raw"}, ValueError, r"offline\.actions: expected one of \['env', 'module'\]"),
        ({"config": {"lr": 0.1}}, ValueError, r"offline\.config\.env: required"),
        (
            {"config": {"env": "Pendulum-v1", "input_": "x"}},
            ValueError,
            r"offline\.config\.input_: the data is offline\.input",
        ),
        ({"eval_episodes": 0}, ValueError, r"offline\.eval_episodes: expected >= 1"),
        ({"iterations": None}, ValueError, r"offline\.iterations: required"),
        (
            {"iterations": 5, "config": {"env": "Pendulum-v1", "evaluation_interval": 2}},
            ValueError,
            r"offline\.config\.evaluation_interval: 2 does not divide offline\.iterations \(5\)",
        ),
        ({"reward_options": {"coef": 2}}, ValueError, r"given without offline\.reward"),
        ({"input": None}, TypeError, r"offline\.input"),
    ],
)
def test_bad_offline_settings_name_the_key(change, error, match):
    with pytest.raises(error, match=match):
        jobs.parse_config({"storage_path": "/r", "offline": {**OFFLINE, **change}}, "offline")


def test_offline_job_refuses_what_cannot_run_before_training(tmp_path):
    from ray_rewards import serialize
    from ray_rewards.reward_nets import BasicRewardNet

    (tmp_path / "data").mkdir()
    env = gym.make("Pendulum-v1")
    net = BasicRewardNet(env.observation_space, env.action_space)
    serialize.save(net, str(tmp_path / "net.pt"))
    for change, match in [
        ({"algorithm": "PPO"}, r"offline\.algorithm: expected one of RLlib's offline"),
        ({"input": "nothing"}, r"offline\.input: .*nothing does not exist"),
        ({"reward": "no_net.pt"}, r"offline\.reward: .*no_net\.pt does not exist"),
        ({"algorithm": "BC", "reward": "net.pt"}, r"offline: with_learned_reward: BCConfig is"),
        (
            {"reward": "net.pt", "reward_options": {"mod": "add"}},
            r"offline\.reward_options: \['mod'\] are not options of with_learned_reward",
        ),
    ]:
        cfg = jobs.parse_config(
            {"storage_path": "out", "offline": {**OFFLINE, **change}},
            "offline",
            base_dir=str(tmp_path),
        )
        with pytest.raises(ValueError, match=match):
            jobs.run_offline(cfg)


def test_record_relabel_offline_jobs(tmp_path, ray_session):
    """record -> relabel (the learned rewards as RLlib's `rewards`) -> offline MARWIL
    on them; and offline MARWIL relabeling the recording itself with the net. Both train,
    evaluate greedily and save a checkpoint."""
    import pyarrow.parquet as pq
    from ray.rllib.algorithms.ppo import PPOConfig

    from ray_rewards import serialize
    from ray_rewards.reward_nets import BasicRewardNet

    algo = PPOConfig().environment("Pendulum-v1").env_runners(num_env_runners=0)
    algo = algo.rl_module(model_config={"fcnet_hiddens": [8]}).debugging(seed=0).build_algo()
    algo.save_to_path(str(tmp_path / "ckpt"))
    algo.stop()
    env = gym.make("Pendulum-v1")
    net = BasicRewardNet(env.observation_space, env.action_space, hid_sizes=(8,))
    serialize.save(net, str(tmp_path / "net.pt"))
    for name, section in [
        ("record", {"checkpoint": "ckpt", "episodes": 2, "explore": True}),
        (
            "relabel",
            {"input": "rec/demonstrations", "reward": "net.pt", "column": "rewards"},
        ),
    ]:
        path = _write(tmp_path, {"storage_path": name[:3], name: section}, name=f"{name}.yaml")
        jobs.run_job(jobs.load_config(path, name))
    relabeled = pq.read_table(str(tmp_path / "rel" / "relabeled"))
    assert {"rewards", "env_rewards"} <= set(relabeled.column_names)

    small = {
        "iterations": 2,
        "eval_episodes": 2,
        "config": {
            "env": "Pendulum-v1",
            "train_batch_size_per_learner": 64,
            "dataset_num_iters_per_learner": 2,
            "model_config": {"fcnet_hiddens": [8]},
            "seed": 0,
        },
    }
    for name, section in [
        ("off_relabeled", {"input": "rel/relabeled", **small}),
        ("off_net", {"input": "rec/demonstrations", "reward": "net.pt", **small}),
    ]:
        path = _write(tmp_path, {"storage_path": name, "offline": section}, name=f"{name}.yaml")
        results = jobs.run_job(jobs.load_config(path, "offline"))
        history = results["history"]
        assert [h["iteration"] for h in history] == [1, 2]
        assert "eval_return_mean" not in history[0]  # evaluated after the last one only
        assert -2000 < history[1]["eval_return_mean"] == results["final_return"] < 0
        assert (tmp_path / name / "checkpoint" / "rllib_checkpoint.json").exists()
    assert (tmp_path / "off_net" / "checkpoint" / "reward_net.pt").exists()
