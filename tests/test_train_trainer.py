"""Reward training as Ray Train jobs: worker-count invariance, resume after a crash,
merged normalization statistics, the saved net, and the ``train`` command."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest
import ray.train
import torch as th
import yaml
from click.testing import CliRunner
from helpers import random_transitions

from ray_rewards import networks, serialize
from ray_rewards.cli import main as cli
from ray_rewards.stats import Moments
from ray_rewards.train import loop, losses, oracle, schemas, trainer

ENV = "Pendulum-v1"  # only its spaces: obs Box(3,), action Box(1,)
PAIRS, LENGTH, EPOCHS, BATCH = 96, 4, 3, 16


def _transitions(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random transitions with a reward for the preference oracle."""
    cols = random_transitions(rng, n)
    obs, act = cols["obs"], cols["actions"]
    return {**cols, "rewards": obs[:, 0] - obs[:, 2] ** 2 - 0.1 * act[:, 0] ** 2}


@pytest.fixture(scope="module")
def data(ray_session, tmp_path_factory) -> dict[str, str]:
    from ray_rewards.train.trainer import env_spaces

    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("train_data")
    schema = schemas.preference_schema(*env_spaces(ENV), LENGTH)
    paths = {}
    for name, n in (("train", PAIRS), ("eval", 32)):
        cols = _transitions(n * 2 * LENGTH, rng)
        pairs = oracle.preference_pairs(
            cols,
            np.full(2 * n, LENGTH),
            num_pairs=n,
            fragment_length=LENGTH,
            oracle=oracle.PreferenceOracle(),
            rng=rng,
        )
        paths[name] = schemas.write_parquet(pairs, root / name, schema)
    return paths


def _config(data: dict[str, str], tmp_path, **kw) -> trainer.TrainConfig:
    kw.setdefault("net_kwargs", {"hid_sizes": [16]})
    kw.setdefault("eval_data", data["eval"])
    return trainer.TrainConfig(
        train_data=data["train"],
        env=ENV,
        normalize_output=True,
        epochs=EPOCHS,
        batch_size=BATCH,
        lr=1e-2,
        output=str(tmp_path / "reward_net.pt"),
        storage_path=str(tmp_path / "ray_train"),
        **kw,
    )


def crash_once(marker: str, epoch: int, batches_per_epoch: int):
    """The preference loss, except that it kills its worker process (os._exit) on the
    first training batch of epoch ``epoch``, once: a marker file remembers the crash
    across the restart (restarted workers get fresh copies of the closure). A closure,
    so that Ray pickles it by value: workers cannot import this test module."""
    steps = [0]

    def loss(net, batch, **kwargs):
        if th.is_grad_enabled():  # a training step, not evaluation
            if steps[0] == epoch * batches_per_epoch and not os.path.exists(marker):
                # Die once the previous epoch's checkpoint is registered (a report is
                # processed asynchronously; dying sooner may lose it, and then the run
                # correctly resumes from an older one).
                ray.train.get_all_reported_checkpoints()
                open(marker, "w").close()
                os._exit(1)
            steps[0] += 1
        return losses.preference_loss(net, batch, **kwargs)

    return loss


# Slow (about 2 minutes: two Ray Train worker groups, one killed and resumed); run with
# `python -m pytest -m slow`.
@pytest.mark.slow
def test_two_workers_crashed_and_resumed_train_the_same_net_as_one(data, tmp_path):
    # One worker, uninterrupted, through the command line.
    one = _config(data, tmp_path / "one")
    config_file = tmp_path / "train.yaml"
    fields = {
        k: getattr(one, k)
        for k in (
            "train_data",
            "eval_data",
            "env",
            "normalize_output",
            "epochs",
            "batch_size",
            "lr",
            "output",
            "storage_path",
            "net_kwargs",
        )
    }
    config_file.write_text(yaml.safe_dump(fields))
    out = CliRunner().invoke(cli, ["train", str(config_file)])
    assert out.exit_code == 0, out.output
    assert f"saved {one.output} after {EPOCHS} epochs" in out.output

    # Two workers; one of them is killed in epoch 1 and the group resumes from the
    # checkpoint of epoch 0.
    marker = str(tmp_path / "crashed")
    two = _config(
        data,
        tmp_path / "two",
        num_workers=2,
        max_failures=1,
        loss=crash_once(marker, epoch=1, batches_per_epoch=PAIRS // BATCH),
    )
    result = trainer.train(two)
    assert os.path.exists(marker), "the worker never crashed"
    assert [h["epoch"] for h in result.history] == list(range(EPOCHS))
    assert [h["start_epoch"] for h in result.history] == [0, 1, 1]  # resumed, not restarted

    net_one, net_two = serialize.load(one.output), serialize.load(two.output)
    state_one, state_two = net_one.state_dict(), net_two.state_dict()
    assert state_one.keys() == state_two.keys()
    # The last bias gets no gradient from a Bradley-Terry loss (it cancels in R_1 - R_2),
    # only float round-off, which Adam scales up to lr-sized steps; every other
    # parameter takes the same steps.
    # The output statistics' mean moves with it (checked below through the rewards).
    free = {"_base.mlp.dense_final.bias", "normalize_output_layer.running_mean"}
    for key in state_one.keys() - free:
        th.testing.assert_close(state_two[key], state_one[key], rtol=1e-4, atol=1e-5, msg=key)
    # The output statistics: merged from both workers' shares, as one worker's.
    m_one, m_two = (
        net_one.normalize_output_layer.moments(),
        net_two.normalize_output_layer.moments(),
    )
    assert m_one.count == m_two.count == 2 * PAIRS * LENGTH
    np.testing.assert_allclose(m_two.var, m_one.var, rtol=1e-4)
    # So the rewards RL sees (normalized; the free bias drops out) are the same.
    t = random_transitions(np.random.default_rng(1), 64)
    args = (t["obs"], t["actions"], t["new_obs"], t["terminateds"])
    np.testing.assert_allclose(
        net_two.predict_processed(*args, update_stats=False),
        net_one.predict_processed(*args, update_stats=False),
        atol=1e-4,
    )
    # The saved net loads as a normalized reward, standardized on the training data.
    reward_fn = serialize.load_reward("RewardNet_normalized", two.output, venv=None)
    pairs = schemas.collect_numpy(schemas.read_parquet(data["train"]))
    obs = np.concatenate([pairs["obs_1"], pairs["obs_2"]]).reshape(-1, 3)
    acts = np.concatenate([pairs["actions_1"], pairs["actions_2"]]).reshape(-1, 1)
    rew = reward_fn(obs, acts, None, None)
    assert abs(rew.mean()) < 1e-3 and rew.std() == pytest.approx(1.0, rel=1e-2)


@pytest.mark.slow
def test_input_statistics_are_merged_across_workers(data, tmp_path):
    cfg = _config(
        data,
        tmp_path,
        num_workers=2,
        net_kwargs={"hid_sizes": [16], "normalize_input_layer": "RunningNorm"},
        eval_data=None,
    )
    result = trainer.train(cfg)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert "eval_loss" not in result.history[-1]

    # Every epoch, each worker saw half of the rows; merged, the input layer has seen
    # every row once per epoch: exactly the moments of all training inputs.
    net = serialize.load(result.net_path)
    pairs = schemas.collect_numpy(schemas.read_parquet(data["train"]))
    features = np.concatenate(
        [
            np.concatenate([pairs[f"obs_{i}"], pairs[f"actions_{i}"]], -1).reshape(-1, 4)
            for i in (1, 2)
        ]
    )
    norm = next(m for m in net.modules() if isinstance(m, networks.RunningNorm))
    assert norm.count == EPOCHS * len(features)
    per_epoch = Moments(len(features), norm.running_mean.numpy(), norm.running_var.numpy())
    assert per_epoch.allclose(Moments.of(features), rtol=1e-6, atol=1e-6)


def test_bad_configs_fail_before_any_job(data, tmp_path):
    with pytest.raises(ValueError, match="loss: expected one of"):
        _config(data, tmp_path, loss="triplet")
    with pytest.raises(ValueError, match="give env"):
        trainer.TrainConfig(train_data=data["train"])
    with pytest.raises(ValueError, match=r"missing \['actions', 'is_expert'"):
        trainer.build_trainer(_config(data, tmp_path, loss="gail"))
    spaces = trainer.env_spaces(ENV)
    silu = trainer.build_net(_config(data, tmp_path, net_kwargs={"activation": "SiLU"}), *spaces)
    assert isinstance(silu.base.mlp.act0, th.nn.SiLU)  # named in YAML, a class in the net
    with pytest.raises(ValueError, match="torch.nn module name"):
        trainer.build_net(_config(data, tmp_path, net_kwargs={"activation": "silu"}), *spaces)
    ema = {"normalize_input_layer": "EMANorm"}
    with pytest.raises(ValueError, match="EMANorm, whose statistics cannot be merged"):
        trainer.build_trainer(_config(data, tmp_path, num_workers=2, net_kwargs=ema))
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"train_data": data["train"], "env": ENV, "epoch": 3}))
    out = CliRunner().invoke(cli, ["train", str(bad)])
    assert out.exit_code == 2 and "unknown config fields ['epoch']" in out.output


@pytest.mark.slow
def test_resume_refuses_a_config_that_changed_what_it_trains(data, tmp_path):
    def config(net_kwargs=None, **changes) -> trainer.TrainConfig:
        kw = {"net_kwargs": net_kwargs} if net_kwargs else {}
        return dataclasses.replace(_config(data, tmp_path, name="run", **kw), **changes)

    first = config(epochs=1)
    trainer.train(first)
    saved = serialize.load(first.output).state_dict()
    # Only steering keys changed: resumes (one more epoch from the checkpoint).
    more = config(epochs=2, output=str(tmp_path / "more.pt"))
    assert [h["epoch"] for h in trainer.train(more).history] == [0, 1]
    # Another net under the same name: refused before anything runs, naming the key.
    other = config(epochs=3, net_kwargs={"hid_sizes": [4]})
    with pytest.raises(ValueError, match=r"net_kwargs: \{'hid_sizes': \[16\]\} -> "):
        trainer.train(other)
    assert all(th.equal(v, serialize.load(first.output).state_dict()[k]) for k, v in saved.items())
    # ... unless it starts fresh.
    result = trainer.train(other, fresh=True)
    assert [h["epoch"] for h in result.history] == [0, 1, 2]
    assert serialize.load(other.output).base.mlp.dense0.out_features == 4


def test_rows_holding_nan_are_left_out_and_counted(data, tmp_path):
    pairs = schemas.collect_numpy(schemas.read_parquet(data["train"]))
    bad = [3, 40, 41]
    pairs["obs_1"][bad[0], 1, 0] = np.nan
    pairs["new_obs_2"][bad[1], 0, 2] = np.inf
    pairs["actions_2"][bad[2], 3, 0] = -np.inf
    schema = schemas.preference_schema(*trainer.env_spaces(ENV), LENGTH)
    poisoned = schemas.write_parquet(pairs, tmp_path / "poisoned", schema)
    cfg = dataclasses.replace(_config({**data, "train": poisoned}, tmp_path), epochs=1)
    result = trainer.train(cfg)
    assert result.history[-1]["num_non_finite_rows"] == len(bad)
    net = serialize.load(cfg.output)
    moments = net.normalize_output_layer.moments()
    assert moments.count == 2 * (PAIRS - len(bad)) * LENGTH
    assert all(np.isfinite(v).all() for v in net.state_dict().values())

    strict = dataclasses.replace(cfg, on_non_finite="raise")
    with pytest.raises(ValueError, match=r"column 'obs_1' holds NaN or inf at rows 3 of 96"):
        loop._finite_rows(pairs, "train_data", strict)
    with pytest.raises(ValueError, match="on_non_finite: expected 'skip' or 'raise', got 'drop'"):
        dataclasses.replace(cfg, on_non_finite="drop")


def test_a_small_job_trains_in_process_and_resumes_from_its_checkpoints(data, tmp_path):
    cfg = dataclasses.replace(_config(data, tmp_path, name="small"), epochs=2)
    assert trainer.in_process(cfg)
    assert not trainer.in_process(dataclasses.replace(cfg, engine="ray"))
    assert not trainer.in_process(dataclasses.replace(cfg, num_workers=2))
    first = trainer.train(cfg)
    assert [h["epoch"] for h in first.history] == [0, 1]
    run = tmp_path / "ray_train" / "small"
    assert sorted(p.name for p in run.iterdir() if p.name.startswith("epoch_")) == [
        "epoch_00000",
        "epoch_00001",
    ]
    more = trainer.train(dataclasses.replace(cfg, epochs=4))
    assert [h["start_epoch"] for h in more.history] == [0, 0, 2, 2]  # resumed at epoch 2
    assert sorted(p.name for p in run.iterdir() if p.name.startswith("epoch_")) == [
        "epoch_00002",
        "epoch_00003",
    ]
    with pytest.raises(ValueError, match="engine: 'local' trains in this process"):
        dataclasses.replace(cfg, engine="local", num_workers=2)


def test_in_process_training_starts_no_ray(data, tmp_path):
    script = f"""
import ray
from ray_rewards.train import trainer
cfg = trainer.TrainConfig(train_data={data["train"]!r}, env={ENV!r}, epochs=1,
                          output={str(tmp_path / "net.pt")!r}, storage_path={str(tmp_path)!r})
result = trainer.train(cfg)
assert not ray.is_initialized()
print("trained", len(result.history))
"""
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert "trained 1" in out.stdout and "[reward training] epoch 1/1" in out.stdout
