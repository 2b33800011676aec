"""Hostile and broken inputs: refused with a named error, and nothing changes."""

from __future__ import annotations

import os
import pickle
import zipfile

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from helpers import make_net, random_transitions
from torch import nn

from ray_rewards import data, networks, serialize
from ray_rewards.networks import EMANorm, RunningNorm
from ray_rewards.reward_nets import BasicRewardNet


def clean_batch(n: int = 4) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(0)
    return (
        rng.uniform(-1, 1, (n, 3)).astype(np.float32),
        rng.uniform(-1, 1, (n, 1)).astype(np.float32),
        rng.uniform(-1, 1, (n, 3)).astype(np.float32),
        np.zeros(n, bool),
    )


@pytest.fixture
def net():
    net = make_net(normalized=True)
    net.predict_processed(*clean_batch(16), update_stats=True)
    return net


def assert_unchanged(net, before) -> None:
    after = networks.norm_moments(net)
    assert all(after[k].allclose(before[k], rtol=0, atol=0) for k in before)


@pytest.mark.parametrize(
    ("bad_value", "message"),
    [
        (1e300, r"state: expected finite values, got values that overflow torch.float32"),
        (np.nan, r"state: expected finite values, got NaN or inf at rows 2 of 4"),
        (-np.inf, r"state: expected finite values, got NaN or inf at rows 2 of 4"),
    ],
)
def test_a_bad_row_never_reaches_the_statistics(net, bad_value, message):
    before = networks.norm_moments(net)
    state, action, next_state, done = clean_batch()
    state = state.astype(np.float64)
    state[2, 0] = bad_value
    with pytest.raises(ValueError, match=message):
        net.predict_processed(state, action, next_state, done, update_stats=True)
    assert_unchanged(net, before)
    assert np.isfinite(net.predict_processed(*clean_batch(), update_stats=True)).all()


def test_complex_input_with_a_nan_imaginary_part_is_refused(net):
    before = networks.norm_moments(net)
    state, action, next_state, done = clean_batch()
    state = state.astype(np.complex128)
    state[1, 1] = complex(0.5, np.nan)
    with pytest.raises(ValueError, match="state: expected a real-valued numeric array"):
        net.predict_processed(state, action, next_state, done, update_stats=True)
    assert_unchanged(net, before)


@pytest.mark.parametrize("arg", ["state", "action", "next_state"])
def test_string_arrays_name_the_argument(net, arg):
    batch = dict(zip(["state", "action", "next_state", "done"], clean_batch()))
    batch[arg] = batch[arg].astype(str)
    with pytest.raises(ValueError, match=f"^{arg}: expected a real-valued numeric array"):
        net.predict_processed(**batch)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_non_finite_rewards_from_finite_inputs_leave_the_statistics_alone(net):
    with th.no_grad():
        for p in net.base.parameters():
            p.fill_(1e30)  # finite inputs, overflowing activations
    before = networks.norm_moments(net)
    with pytest.raises(ValueError, match=r"expected finite values, got NaN or inf at rows [0-9]"):
        net.predict_processed(*clean_batch(), update_stats=True)
    assert_unchanged(net, before)


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_update_stats_must_be_a_bool(net, value):
    with pytest.raises(TypeError, match="update_stats must be True or False"):
        net.predict_processed(*clean_batch(), update_stats=value)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.parametrize("cls", [RunningNorm, EMANorm])
@pytest.mark.parametrize("as_tensor", [False, True])
@pytest.mark.parametrize("features", [1, 2])
def test_norm_layers_refuse_non_finite_batches(cls, as_tensor, features):
    norm = cls(features)
    norm.update_stats(np.ones((3, features)))
    before = norm.moments()
    batch = np.zeros((5, features)) if features > 1 else np.zeros(5)
    batch[3] = np.nan
    with pytest.raises(ValueError, match=r"expected finite values, got NaN or inf at rows 3 of 5"):
        norm.update_stats(th.as_tensor(batch) if as_tensor else batch)
    assert norm.moments().allclose(before, rtol=0, atol=0)
    huge = np.full(4, 1e308) if features == 1 else np.full((4, features), 1e308)
    with pytest.raises(ValueError, match="values whose moments overflow"):
        norm.update_stats(huge)
    assert norm.moments().allclose(before, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------
# Crafted files
# ---------------------------------------------------------------------------------------


@serialize.register_safe_class
class MarkerNet(BasicRewardNet):
    """A registered user class whose constructor has a side effect (writes a file)."""

    def __init__(self, marker: str):
        open(marker, "w").close()
        super().__init__(gym.spaces.Box(-1, 1, (3,)), gym.spaces.Box(-1, 1, (1,)))


class Calls:
    """Pickles as a call ``fn(*args)``: what a crafted file asks the loader to run."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def crafted(tmp_path, payload, legacy: bool = False) -> str:
    path = str(tmp_path / "crafted.pt")
    with open(path, "wb") as f:
        th.save(payload, f, _use_new_zipfile_serialization=not legacy)
    return path


def load_everywhere(path: str) -> list[Exception]:
    """The error from each entry point that loads a reward file (``ray-rewards inspect``
    checked here: refused, exit code 1, no traceback).
    """
    from click.testing import CliRunner
    from ray.rllib.algorithms.ppo import PPOConfig

    from ray_rewards.cli import main
    from ray_rewards.rllib import with_learned_reward

    errors = []
    for load in (
        serialize.load,
        lambda p: serialize.load_reward("RewardNet_unnormalized", p, None),
        lambda p: with_learned_reward(PPOConfig().environment("Pendulum-v1"), p),
        lambda p: th.load(p),
    ):
        with pytest.raises(pickle.UnpicklingError) as info:
            load(path)
        errors.append(info.value)
    shown = CliRunner().invoke(main, ["inspect", path])
    assert shown.exit_code == 1 and "refused to load" in shown.output, shown.output
    assert "Traceback" not in shown.output and "weights_only=False" not in shown.output
    return errors


def test_a_file_cannot_run_a_registered_constructor(tmp_path):
    marker = tmp_path / "marker"
    path = crafted(tmp_path, Calls(MarkerNet, str(marker)))
    errors = load_everywhere(path)
    assert not marker.exists()
    for err in errors[:3]:
        assert isinstance(err, serialize.UnsafeRewardFileError)
        assert "test_hostile_inputs.MarkerNet(...)" in str(err)
        assert "weights_only=False" not in str(err)
    # Built the ordinary way, the class saves and loads (without its constructor).
    net = MarkerNet(str(tmp_path / "made"))
    serialize.save(net, tmp_path / "ok.pt")
    os.remove(tmp_path / "made")
    loaded = serialize.load(tmp_path / "ok.pt")
    assert type(loaded) is MarkerNet and not (tmp_path / "made").exists()


def test_a_tiny_file_cannot_build_a_huge_layer(tmp_path):
    path = crafted(tmp_path, Calls(nn.Linear, 20000, 20000))
    assert os.path.getsize(path) < 4096
    errors = load_everywhere(path)
    assert "torch.nn.modules.linear.Linear(...)" in str(errors[0])


def test_constructor_arguments_through_newobj_are_refused(tmp_path):
    # NEWOBJ with arguments: Linear.__new__(Linear, 20000, 20000), written by hand
    # into the archive of a harmless th.save (picklers will not write it).
    path = tmp_path / "newobj.pt"
    th.save({}, path)
    linear = b"ctorch.nn.modules.linear\nLinear\n"
    payload = b"\x80\x02" + linear + b"M\x20\x4eM\x20\x4e\x86\x81."
    with zipfile.ZipFile(path) as src:
        members = {info.filename: src.read(info) for info in src.infolist()}
    with zipfile.ZipFile(path, "w") as out:
        for name, data in members.items():
            out.writestr(name, payload if name.endswith("data.pkl") else data)
    errors = load_everywhere(str(path))
    assert "torch.nn.modules.linear.Linear with 2 constructor argument(s)" in str(errors[0])


@pytest.mark.parametrize("legacy", [False, True])
def test_os_system_is_reported_as_unsafe_never_as_corrupt(tmp_path, legacy):
    marker = tmp_path / "pwned"
    path = crafted(tmp_path, Calls(os.system, f"touch {marker}"), legacy=legacy)
    errors = load_everywhere(path)
    assert not marker.exists()
    for err in errors[:3]:
        assert isinstance(err, serialize.UnsafeRewardFileError)
        assert "posix.system" in str(err) and "corrupt" not in str(err)
        assert "weights_only=False" not in str(err)


@pytest.mark.parametrize("content", [os.urandom(2048), b"\x80\x02}q\x00.", b""])
def test_garbage_is_corrupt_without_advice_to_load_unsafely(tmp_path, content):
    path = tmp_path / "garbage.pt"
    path.write_bytes(content)
    with pytest.raises((ValueError, TypeError)) as info:
        serialize.load(path)
    assert "weights_only" not in str(info.value)


def test_tensors_unlike_the_recorded_architecture_are_refused(tmp_path):
    net = make_net(normalized=True)
    first = next(m for m in net.modules() if isinstance(m, nn.Linear))
    first.weight = nn.Parameter(th.zeros(first.out_features, first.in_features + 5))
    path = tmp_path / "mismatch.pt"
    th.save(net, path)
    with pytest.raises(ValueError, match=r"records weight of shape \(8, 8\) but holds \(8, 13\)"):
        serialize.load(path)


def _hide_layer(net):
    net.base._modules["hidden"] = nn.Linear(64, 64)


def _nest_in_a_leaf(net):
    net.normalize_output_layer._modules["extra"] = nn.Linear(4, 4)


def _drop_the_norm(net):
    del net._modules["normalize_output_layer"]


def _widen_the_first_layer(net):
    net.base.mlp.dense0 = nn.Linear(net.base.input_size + 2, net.base.mlp.dense0.out_features)


def _break_the_chain(net):
    net.base.mlp.dense_final = nn.Linear(5, 1)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_hide_layer, r"'_base' \(BasicRewardNet\) holds the modules \['hidden', 'mlp'\]"),
        (_nest_in_a_leaf, r"\(RunningNorm\) holds the modules \['extra'\] where its class"),
        (_drop_the_norm, r"holds the modules \['_base'\] where its class makes"),
        (_widen_the_first_layer, r"layer 'dense0' takes 10 features but is given 8"),
        (_break_the_chain, r"layer 'dense_final' takes 5 features but is given 8"),
    ],
)
def test_modules_unlike_what_the_class_makes_are_refused(tmp_path, edit, message):
    net = make_net(normalized=True)
    edit(net)
    path = tmp_path / "edited.pt"
    th.save(net, path)
    with pytest.raises(ValueError, match=message):
        serialize.load(path)


# ---------------------------------------------------------------------------------------
# Relabeling data
# ---------------------------------------------------------------------------------------


def transition_table(n: int = 64, bad_row: int | None = None) -> dict[str, np.ndarray]:
    cols = random_transitions(np.random.default_rng(1), n)
    cols["obs"] = cols["obs"].astype(np.float64)
    if bad_row is not None:
        cols["obs"][bad_row, 1] = np.nan
    return {"id": np.arange(n), **cols}


def as_dataset(cols: dict[str, np.ndarray]):
    import ray

    n = len(cols["id"])
    return ray.data.from_items([{k: v[i] for k, v in cols.items()} for i in range(n)])


def test_one_bad_row_fails_the_relabel_and_merges_nothing(ray_session):
    net = make_net(normalized=True)
    before = networks.norm_moments(net)
    ds = as_dataset(transition_table(bad_row=17))
    with pytest.raises(
        Exception, match=r"state: expected finite values, got NaN or inf at rows 17"
    ) as kept:
        data.relabel_dataset(ds, net, update_stats=True, batch_size=64)
    assert_unchanged(net, before)
    # The failed run's exception (and its traceback's frames) is still alive here; the
    # next relabel in the same driver must not wait on what the failed one held.
    assert kept.value is not None
    out = data.relabel_dataset(as_dataset(transition_table()), net, batch_size=64)
    assert np.isfinite(out.to_pandas()["learned_rewards"].to_numpy()).all()


@pytest.mark.parametrize(
    ("column", "message"),
    [
        ("", "expected a non-empty column name"),
        ("  ", "expected a non-empty column name"),
        ("id", "already has a column 'id'"),
        ("obs", "one of RLlib's columns"),
    ],
)
def test_output_column_names_are_checked(ray_session, column, message):
    with pytest.raises(ValueError, match=message):
        data.relabel_dataset(as_dataset(transition_table(8)), make_net(), column=column)


def write_parquet(path, cols: dict[str, np.ndarray]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    os.makedirs(path, exist_ok=True)
    table = pa.table({k: list(v) if v.ndim > 1 else v for k, v in cols.items()})
    pq.write_table(table, os.path.join(path, "part-0.parquet"))


def test_output_inside_the_input_is_refused(ray_session, tmp_path):
    source = tmp_path / "in"
    write_parquet(source, transition_table(8))
    for inside in (source / "out", source):
        with pytest.raises(ValueError, match="is inside the input"):
            data.relabel_parquet(str(source), str(inside), make_net())
    assert os.listdir(source) == ["part-0.parquet"]


def test_string_columns_say_what_was_expected(ray_session, tmp_path):
    cols = transition_table(8)
    cols["obs"] = np.array(["not packed"] * 8)
    write_parquet(tmp_path / "in", cols)
    with pytest.raises(Exception, match="expected RLlib's packed arrays") as info:
        data.relabel_parquet(str(tmp_path / "in"), str(tmp_path / "out"), make_net())
    assert "Incorrect padding" not in str(info.value)
    assert not (tmp_path / "out").exists()


def test_unknown_predict_processed_keywords_are_named(net):
    with pytest.raises(TypeError, match=r"BasicRewardNet.predict_processed got .* \['bogus'\]"):
        net.predict_processed(*clean_batch(), bogus=1)
    plain = make_net()  # update_stats is accepted by every net, as in imitation
    np.testing.assert_array_equal(
        plain.predict_processed(*clean_batch(), update_stats=False),
        plain.predict(*clean_batch()),
    )
    with pytest.raises(TypeError, match="update_stats must be True or False"):
        plain.predict_processed(*clean_batch(), update_stats="no")


def test_reward_actor_refuses_a_missing_or_unsafe_file_up_front(ray_session, tmp_path):
    from ray_rewards.actors import RewardActor

    with pytest.raises(FileNotFoundError, match="no saved reward net at .*missing.pt"):
        RewardActor(str(tmp_path / "missing.pt"))
    path = crafted(tmp_path, Calls(os.system, "true"))
    with pytest.raises(serialize.UnsafeRewardFileError, match="posix.system"):
        RewardActor(path)


# ---------------------------------------------------------------------------------------
# Reward-training configs
# ---------------------------------------------------------------------------------------


def test_every_bad_training_setting_is_named_at_once(tmp_path):
    from ray_rewards.train import TrainConfig

    bad = {
        "lr": "abc",
        "weight_decay": -5,
        "cpus_per_worker": -1,
        "loss_kwargs": {"bogus": 1},
        "max_failures": -7,
        "train_data": 42,
        "net_kwargs": {"hid_sizes": [-5], "activation": "Linear", "widht": 3},
    }
    with pytest.raises(ValueError) as info:
        TrainConfig(env="Pendulum-v1", **bad)
    lines = str(info.value).splitlines()
    for key in ("lr", "weight_decay", "cpus_per_worker", "loss_kwargs", "max_failures"):
        assert any(line.startswith(f"{key}: ") for line in lines), (key, lines)
    assert any(line.startswith("train_data: expected a path or URI, got 42") for line in lines)
    assert any("net_kwargs.hid_sizes: expected a list of integers >= 1" in x for x in lines)
    assert any("net_kwargs.activation:" in x and "'Linear'" in x for x in lines)
    assert any("['widht'] are not arguments of BasicRewardNet" in x for x in lines)
    with pytest.raises(ValueError, match=r"^net_kwargs: expected a mapping"):
        TrainConfig(train_data="d", env="Pendulum-v1", net_kwargs=[1, 2])
    # What the net classes and their builders really take is accepted.
    fine = {"use_next_state": True, "hid_sizes": [8], "dropout_prob": 0.1}
    TrainConfig(train_data="d", env="Pendulum-v1", net_kwargs=fine)
    shaped = {"reward_hid_sizes": [8], "discount_factor": 0.9, "activation": "Tanh"}
    TrainConfig(train_data="d", env="Pendulum-v1", net="BasicShapedRewardNet", net_kwargs=shaped)
    cnn = {"hid_channels": [4], "kernel_size": 5, "hwc_format": False}
    TrainConfig(train_data="d", env="Pendulum-v1", net="CNNRewardNet", net_kwargs=cnn)
    with pytest.raises(ValueError, match=r"\['hid_sizes'\] are not arguments of BasicShaped"):
        TrainConfig(
            train_data="d",
            env="Pendulum-v1",
            net="BasicShapedRewardNet",
            net_kwargs={"hid_sizes": [8]},
        )


def run_train_cli(tmp_path, **settings):
    import time

    import yaml
    from click.testing import CliRunner

    from ray_rewards.cli import main

    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump(settings) if settings else "env: [unclosed")
    start = time.monotonic()
    result = CliRunner().invoke(main, ["train", str(config)])
    return result, time.monotonic() - start


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({}, "not valid YAML"),
        ({"train_data": "data", "env": "NoSuchEnv-v0"}, "'NoSuchEnv-v0' is not a registered"),
        ({"train_data": "data", "env": "Pendulum-v1", "lr": -1}, "lr: expected a number > 0"),
        ({"train_data": "missing", "env": "Pendulum-v1"}, "train_data: .*missing does not exist"),
        (
            {"train_data": "data", "env": "Pendulum-v1", "output": "crafted.pt/reward_net.pt"},
            "output: cannot write .*crafted.pt/reward_net.pt",
        ),
        (
            {"train_data": "data", "init_net": "crafted.pt"},
            "init_net: refused to load .*posix.system",
        ),
    ],
)
def test_train_cli_names_user_errors_without_a_traceback(tmp_path, settings, message):
    import re

    (tmp_path / "data").mkdir()
    crafted(tmp_path, Calls(os.system, "true"))
    result, seconds = run_train_cli(tmp_path, **settings)
    assert result.exit_code == 2, result.output
    assert re.search(message, result.output), result.output
    assert "Traceback" not in result.output and seconds < 10


def test_use_gpu_without_gpus_fails_at_once(ray_session, tmp_path):
    import time

    from ray_rewards.train import TrainConfig, validation

    cfg = TrainConfig(train_data=str(tmp_path), env="Pendulum-v1", use_gpu=True)
    start = time.monotonic()
    with pytest.raises(ValueError, match="the Ray cluster has 0 GPUs and 1 are needed"):
        validation.wait_for_gpus(cfg)
    assert time.monotonic() - start < 5
    lines = []
    waiting = TrainConfig(train_data=str(tmp_path), env="Pendulum-v1", use_gpu=True, gpu_wait_s=2)
    with pytest.raises(ValueError, match="0 GPUs"):
        validation.wait_for_gpus(waiting, lines.append)
    assert lines and lines[0].startswith("waiting for GPUs: 0 of 1 in the cluster")


def test_loading_holds_no_second_copy_of_the_file(tmp_path):
    import subprocess
    import sys
    import textwrap

    big = make_net(hid_sizes=(6000, 6000))  # 36M parameters: a 144 MB file
    path = tmp_path / "big.pt"
    serialize.save(big, path)
    size_mb = os.path.getsize(path) / 2**20
    code = textwrap.dedent(
        f"""
        import resource, sys
        from ray_rewards import serialize

        def rss_mb():
            with open("/proc/self/status") as f:
                line = next(x for x in f if x.startswith("VmRSS"))
            return int(line.split()[1]) / 1024

        before = max(rss_mb(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        net = serialize.load({str(path)!r})
        assert sum(p.numel() for p in net.parameters()) > 36_000_000
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(peak - before)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    grew_mb = float(out.stdout.strip())
    assert grew_mb < size_mb + 64, (grew_mb, size_mb)


def test_resume_compares_the_stored_config(tmp_path):
    from ray_rewards.train import TrainConfig
    from ray_rewards.train.resume import CONFIG_FILE, check_resume

    def cfg(**kw):
        base = {"train_data": "d", "env": "Pendulum-v1", "name": "run"}
        return TrainConfig(storage_path=str(tmp_path), **{**base, **kw})

    check_resume(cfg(net_kwargs={"hid_sizes": [16]}))
    stored = tmp_path / "run" / CONFIG_FILE
    assert stored.exists()
    check_resume(cfg(net_kwargs={"hid_sizes": [16]}, epochs=30, max_failures=2, verbose=False))
    with pytest.raises(ValueError) as info:
        check_resume(cfg(net_kwargs={"hid_sizes": [4]}, lr=0.1))
    message = str(info.value)
    assert "net_kwargs: {'hid_sizes': [16]} -> {'hid_sizes': [4]}" in message
    assert "lr: 0.001 -> 0.1" in message and "--fresh" in message
    (tmp_path / "run" / "checkpoint_000").mkdir()
    check_resume(cfg(net_kwargs={"hid_sizes": [4]}, lr=0.1), fresh=True)
    assert os.listdir(tmp_path / "run") == [CONFIG_FILE]
    check_resume(cfg(name=None))  # an unnamed run never resumes: nothing to compare


def test_reward_actor_fails_only_the_caller_with_an_overflowing_row(ray_session):
    import ray

    from ray_rewards.actors import RewardActor

    net = make_net(normalized=True)
    actor = RewardActor(net, max_batch_size=64, max_wait_s=0.05)
    try:
        good = [clean_batch(4) for _ in range(3)]
        bad = list(clean_batch(4))
        bad[0] = bad[0].astype(np.float64)
        bad[0][1, 0] = 1e300  # finite in float64, inf in the net's float32
        pending = [actor.submit(*good[0], update_stats=True)]
        bad_pending = actor.submit(*bad, update_stats=True)
        pending += [actor.submit(*b, update_stats=True) for b in good[1:]]
        reference = make_net(normalized=True)
        for p, b in zip(pending, good):
            reference.predict_processed(*b, update_stats=True)
            rewards = p.result()  # normalized by whatever came first: only check it came
            assert rewards.shape == (4,) and np.isfinite(rewards).all()
        with pytest.raises(ValueError, match="overflow torch.float32"):
            bad_pending.result()
        moments = actor.norm_moments()
        want = networks.norm_moments(reference)
        assert all(moments[k].allclose(want[k], rtol=1e-6, atol=1e-9) for k in want)
        clean = actor.predict_processed(*clean_batch(4))
        assert np.isfinite(clean).all()
    finally:
        ray.kill(actor.handle)


def test_relabel_refuses_a_crafted_reward_file_before_writing(ray_session, tmp_path):
    marker = tmp_path / "pwned"
    reward = crafted(tmp_path, Calls(os.system, f"touch {marker}"))
    write_parquet(tmp_path / "in", transition_table(8))
    with pytest.raises(serialize.UnsafeRewardFileError, match="posix.system"):
        data.relabel_parquet(str(tmp_path / "in"), str(tmp_path / "out"), reward)
    assert not marker.exists() and not (tmp_path / "out").exists()
    assert sorted(os.listdir(tmp_path)) == ["crafted.pt", "in"]
