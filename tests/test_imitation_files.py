"""Reading reward nets saved by the imitation library, without imitation and safely.

The .pth files under tests/data/imitation/ were written by imitation 1.0.1 itself
(make_fixtures.py there, run in a throwaway virtualenv; .pth since .gitignore skips
*.pt there); each .npz beside one holds a batch of transitions and the rewards
imitation computed for it.
"""

from __future__ import annotations

import importlib.util
import io
import pathlib
import pickle
import struct
import types
import zipfile

import numpy as np
import pytest
import torch as th
from click.testing import CliRunner
from gymnasium import spaces

from ray_rewards import imitation_files, networks, serialize
from ray_rewards import reward_nets as rn
from ray_rewards.cli import main
from ray_rewards.imitation_files import (
    ImitationFileError,
    UnsafeImitationFileError,
    is_imitation_file,
    load_imitation,
    load_imitation_bytes,
)

DATA = pathlib.Path(__file__).resolve().parent / "data" / "imitation"

CHAINS = {
    "basic_box": "BasicRewardNet",
    "basic_discrete": "BasicRewardNet",
    "basic_shaped": "BasicShapedRewardNet(BasicRewardNet)",
    "normalized_running": "NormalizedRewardNet(BasicRewardNet)",
    "normalized_ema": "NormalizedRewardNet(BasicRewardNet)",
    "ensemble_std": (
        "AddSTDRewardWrapper(RewardEnsemble[BasicRewardNet, BasicRewardNet, BasicRewardNet])"
    ),
    "cnn": "CNNRewardNet",
    "cnn_shaped": "ShapedRewardNet(CNNRewardNet)",
    "gail": "RewardNetFromDiscriminatorLogit(BasicRewardNet)",
}


def batch(name: str) -> tuple[tuple[np.ndarray, ...], dict[str, np.ndarray]]:
    z = dict(np.load(DATA / f"{name}.npz"))
    return (z["obs"], z["acts"], z["next_obs"], z["dones"]), z


def processed_kwargs(net: rn.RewardNet) -> dict:
    return {"update_stats": False} if isinstance(net, rn.NormalizedRewardNet) else {}


def close(ours: np.ndarray, theirs: np.ndarray) -> None:
    assert ours.shape == theirs.shape
    # atol: rewards near 0 (normalized ones) differ by float32 rounding, ~1e-7.
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)


def test_imitation_is_not_installed_here():
    # Everything below reads imitation's files without it.
    assert importlib.util.find_spec("imitation") is None


def test_fixtures_are_small_and_complete():
    assert sorted(p.stem for p in DATA.glob("*.pth")) == sorted(CHAINS)
    for path in DATA.glob("*.pth"):
        assert path.stat().st_size < 64_000
        assert (DATA / f"{path.stem}.npz").exists()


@pytest.mark.parametrize("name", sorted(CHAINS))
def test_fixture_loads_into_our_chain_with_imitations_rewards(name):
    data = (DATA / f"{name}.pth").read_bytes()
    assert is_imitation_file(data)
    net = load_imitation(DATA / f"{name}.pth")
    assert serialize.format_chain(net) == CHAINS[name]
    assert not net.training  # saved in eval mode
    args, z = batch(name)
    close(net.predict(*args), z["predict"])
    close(net.predict_processed(*args, **processed_kwargs(net)), z["predict_processed"])


def test_basic_nets_keep_spaces_flags_and_layers():
    box = load_imitation(DATA / "basic_box.pth")
    assert box.observation_space == spaces.Box(
        np.array([-1, -1, -8], np.float32), np.array([1, 1, 8], np.float32)
    )
    assert box.action_space == spaces.Box(-2.0, 2.0, (1,), np.float32)
    assert (box.use_state, box.use_action, box.use_next_state, box.use_done) == (
        True,
        True,
        True,
        True,
    )
    assert [m.out_features for m in box.mlp if isinstance(m, th.nn.Linear)] == [16, 16, 1]

    disc = load_imitation(DATA / "basic_discrete.pth")
    assert disc.action_space == spaces.Discrete(2)
    assert (disc.use_next_state, disc.use_done) == (False, False)
    assert isinstance(disc.mlp.act0, th.nn.Tanh)
    norm = disc.mlp.normalize_input
    assert type(norm) is networks.RunningNorm and int(norm.count) > 0
    # Cast to whatever dtype our layer keeps, not imitation's.
    fresh = networks.RunningNorm(4)
    assert norm.running_mean.dtype == fresh.running_mean.dtype
    assert norm.count.dtype == fresh.count.dtype


def test_normalized_nets_keep_statistics_that_update_like_imitations():
    for name, cls in (
        ("normalized_running", networks.RunningNorm),
        ("normalized_ema", networks.EMANorm),
    ):
        net = load_imitation(DATA / f"{name}.pth")
        assert type(net.normalize_output_layer) is cls
        assert int(net.normalize_output_layer.count) > 0
        args, z = batch(name)
        net.predict_processed(*args, update_stats=True)
        close(net.predict_processed(*args, update_stats=False), z["after_update"])
    ema = load_imitation(DATA / "normalized_ema.pth").normalize_output_layer
    assert ema.decay == pytest.approx(0.99) and int(ema.num_batches) == 4


def test_ensemble_moments_and_alpha():
    net = load_imitation(DATA / "ensemble_std.pth")
    assert isinstance(net, rn.AddSTDRewardWrapper) and net.default_alpha == 0.5
    args, z = batch("ensemble_std")
    mean, var = net.base.predict_reward_moments(*args)
    close(mean, z["moments"][0])
    close(var, z["moments"][1])
    close(net.predict_processed(*args, alpha=-1.0), z["predict_processed_alpha_minus_1"])


def test_cnn_and_shaping_attributes():
    cnn = load_imitation(DATA / "cnn.pth")
    assert cnn.hwc_format and cnn.use_done and cnn.normalize_images
    assert cnn.observation_space == spaces.Box(0, 255, (16, 16, 3), np.uint8)
    shaped = load_imitation(DATA / "cnn_shaped.pth")
    assert shaped.discount_factor == pytest.approx(0.9)
    assert type(shaped.potential) is rn.BasicPotentialCNN
    basic_shaped = load_imitation(DATA / "basic_shaped.pth")
    assert basic_shaped.discount_factor == pytest.approx(0.95)
    assert type(basic_shaped.potential) is rn.BasicPotentialMLP


def test_device_argument():
    net = load_imitation_bytes((DATA / "gail.pth").read_bytes(), device="cpu")
    assert net.device == th.device("cpu")


# --------------------------------------------------------------------------------------
# The CLI and our own format
# --------------------------------------------------------------------------------------


def test_cli_converts_and_our_loaders_read_the_result(tmp_path):
    out = tmp_path / "sub" / "converted.pt"
    result = CliRunner().invoke(
        main, ["import-imitation", str(DATA / "normalized_running.pth"), str(out)]
    )
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1
    assert "NormalizedRewardNet(BasicRewardNet)" in lines[0] and str(out) in lines[0]
    assert not is_imitation_file(out.read_bytes())

    args, z = batch("normalized_running")
    net = serialize.load(out)
    close(net.predict_processed(*args, update_stats=False), z["predict_processed"])

    venv = types.SimpleNamespace(
        observation_space=net.observation_space, action_space=spaces.Discrete(2)
    )
    reward_fn = serialize.load_reward("RewardNet_normalized", out, venv)
    close(reward_fn(*args), z["predict_processed"])
    close(serialize.load_reward("RewardNet_unnormalized", out, None)(*args), z["predict"])


@pytest.mark.parametrize("name", ["ensemble_std", "cnn_shaped", "gail", "normalized_ema"])
def test_cli_round_trip_keeps_rewards(tmp_path, name):
    out = tmp_path / "net.pt"
    result = CliRunner().invoke(main, ["import-imitation", str(DATA / f"{name}.pth"), str(out)])
    assert result.exit_code == 0, result.output
    net = serialize.load(out)
    assert serialize.format_chain(net) == CHAINS[name]
    args, z = batch(name)
    close(net.predict(*args), z["predict"])
    close(net.predict_processed(*args, **processed_kwargs(net)), z["predict_processed"])


def test_cli_bad_inputs_exit_1_with_one_line(tmp_path):
    runner = CliRunner()
    out = tmp_path / "out.pt"
    ours = tmp_path / "ours.pt"
    serialize.save(load_imitation(DATA / "basic_box.pth"), ours)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a zip at all")
    for bad, words in (
        (tmp_path / "missing.pt", "no imitation reward net at"),
        (garbage, "not a torch.save zip archive"),
        (ours, "ray_rewards.reward_nets.BasicRewardNet"),
    ):
        result = runner.invoke(main, ["import-imitation", str(bad), str(out)])
        assert result.exit_code == 1, result.output
        assert result.output.startswith("Error: ") and words in result.output
        assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
        assert not out.exists()


# --------------------------------------------------------------------------------------
# Hostile files: refused by name, and nothing in them runs
# --------------------------------------------------------------------------------------

PROTO, STOP, MARK, TUPLE, REDUCE = b"\x80\x02", b".", b"(", b"t", b"R"
EMPTY_TUPLE, EMPTY_DICT, NEWOBJ, BUILD, SETITEM = b")", b"}", b"\x81", b"b", b"s"


def op_global(module: str, name: str) -> bytes:
    return b"c" + f"{module}\n{name}\n".encode()


def op_str(text: str) -> bytes:
    raw = text.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def op_call(module: str, name: str, *args: bytes) -> bytes:
    return op_global(module, name) + MARK + b"".join(args) + TUPLE + REDUCE


def torch_zip(pkl: bytes, storages: dict[str, bytes] | None = None) -> bytes:
    """An archive laid out as th.save's: <root>/data.pkl, byteorder, data/<key>."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("archive/data.pkl", pkl)
        z.writestr("archive/byteorder", "little")
        for key, raw in (storages or {}).items():
            z.writestr(f"archive/data/{key}", raw)
        z.writestr("archive/version", "3\n")
    return buf.getvalue()


def python_code(marker: pathlib.Path) -> str:
    return f"open({str(marker)!r}, 'w').close()"


def payloads(marker: pathlib.Path) -> dict[str, tuple[bytes, str]]:
    """Pickles that would create ``marker`` if unpickled, with the global each names."""
    exec_call = op_call("builtins", "exec", op_str(python_code(marker)))
    popen_args = b"]" + MARK + op_str("touch") + op_str(str(marker)) + b"e"
    return {
        "os.system": (
            PROTO + op_call("os", "system", op_str(f"touch {marker}")) + STOP,
            "os.system",
        ),
        "builtins.exec": (PROTO + exec_call + STOP, "builtins.exec"),
        "py2 eval": (
            PROTO + op_call("__builtin__", "eval", op_str(f"exec({python_code(marker)!r})")) + STOP,
            "builtins.eval",
        ),
        "subprocess.Popen": (
            PROTO + op_call("subprocess", "Popen", popen_args) + STOP,
            "subprocess.Popen",
        ),
        # An imitation net whose state carries the payload: refused mid-file.
        "inside a net": (
            PROTO
            + op_global("imitation.rewards.reward_nets", "BasicRewardNet")
            + EMPTY_TUPLE
            + NEWOBJ
            + EMPTY_DICT
            + op_str("use_state")
            + exec_call
            + SETITEM
            + BUILD
            + STOP,
            "builtins.exec",
        ),
    }


class Payload:
    """pickle's own way: a __reduce__ that returns (os.system, (command,))."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        import os

        return os.system, (self.command,)


def test_payloads_would_run_under_plain_pickle(tmp_path):
    # The control: these bytes are live, so the refusals below are real.
    for key in ("builtins.exec", "py2 eval"):
        marker = tmp_path / f"control_{key.replace(' ', '_')}"
        pickle.loads(payloads(marker)[key][0])
        assert marker.exists()


@pytest.mark.parametrize(
    "key", ["os.system", "builtins.exec", "py2 eval", "subprocess.Popen", "inside a net"]
)
def test_hostile_globals_are_refused_by_name_and_nothing_runs(tmp_path, key):
    marker = tmp_path / "pwned"
    pkl, name = payloads(marker)[key]
    with pytest.raises(UnsafeImitationFileError, match=rf"global {name}\b") as info:
        load_imitation_bytes(torch_zip(pkl), source="evil.pt")
    message = str(info.value)
    assert "refused to load evil.pt" in message and "Nothing from this file was run" in message
    assert isinstance(info.value, pickle.UnpicklingError) and isinstance(info.value, ValueError)
    assert not marker.exists()


def test_reduce_payload_written_by_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    pkl = pickle.dumps(Payload(f"touch {marker}"), protocol=2)
    path = tmp_path / "evil.pt"
    path.write_bytes(torch_zip(pkl))
    with pytest.raises(UnsafeImitationFileError, match=r"global (posix|os|nt)\.system"):
        load_imitation(path)
    assert not marker.exists()


def test_cli_refuses_a_hostile_file(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    evil.write_bytes(torch_zip(payloads(marker)["inside a net"][0]))
    out = tmp_path / "out.pt"
    result = CliRunner().invoke(main, ["import-imitation", str(evil), str(out)])
    assert result.exit_code == 1
    assert "global builtins.exec" in result.output and "Traceback" not in result.output
    assert not marker.exists() and not out.exists()


def tampered(name: str, old: bytes, new: bytes) -> bytes:
    """A fixture with ``old`` replaced by ``new`` in its pickle."""
    src = zipfile.ZipFile(DATA / f"{name}.pth")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as dst:
        for info in src.infolist():
            raw = src.read(info)
            if info.filename.endswith("/data.pkl"):
                assert old in raw
                raw = raw.replace(old, new)
            dst.writestr(info.filename, raw)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("old", "new", "name"),
    [
        (
            b"imitation.util.networks\nSqueezeLayer\n",
            b"imitation.util.networks\nSqueezeLayerX\n",
            "imitation.util.networks.SqueezeLayerX",
        ),
        (
            b"imitation.rewards.reward_nets\nBasicRewardNet\n",
            b"imitation.rewards.reward_nets\nSomethingElse\n",
            "imitation.rewards.reward_nets.SomethingElse",
        ),
        (b"torch.nn.modules.activation\nReLU\n", b"os\nsystem\n", "os.system"),
        (b"collections\nOrderedDict\n", b"builtins\ngetattr\n", "builtins.getattr"),
    ],
)
def test_unknown_globals_inside_a_real_file_are_refused(old, new, name):
    data = tampered("gail", old, new)
    with pytest.raises(UnsafeImitationFileError, match=rf"global {name}\b"):
        load_imitation_bytes(data)


def test_calling_or_building_what_the_table_holds_is_refused():
    call_a_class = op_call("imitation.rewards.reward_nets", "BasicRewardNet")
    with pytest.raises(UnsafeImitationFileError, match="call imitation.rewards"):
        load_imitation_bytes(torch_zip(PROTO + call_a_class + STOP))
    # BUILD on a helper (as if to rewrite its attributes).
    build_helper = op_global("collections", "OrderedDict") + EMPTY_DICT + BUILD
    with pytest.raises(UnsafeImitationFileError, match="set the state"):
        load_imitation_bytes(torch_zip(PROTO + build_helper + STOP))
    bad_pid = PROTO + MARK + op_str("module") + op_str("os") + TUPLE + b"Q" + STOP
    with pytest.raises(UnsafeImitationFileError, match="persistent object"):
        load_imitation_bytes(torch_zip(bad_pid))


def storage_pickle(size: int, stride: int = 1) -> bytes:
    pid = (
        MARK
        + op_str("storage")
        + op_global("torch", "FloatStorage")
        + op_str("0")
        + op_str("cpu")
        + b"K\x02"  # numel 2
        + TUPLE
        + b"Q"
    )
    layout = b"K\x00K" + bytes([size]) + b"\x85K" + bytes([stride]) + b"\x85\x89"
    return (
        PROTO
        + op_global("torch._utils", "_rebuild_tensor_v2")
        + MARK
        + pid
        + layout
        + op_call("collections", "OrderedDict")
        + TUPLE
        + REDUCE
        + STOP
    )


def test_malformed_files_are_errors_not_crashes():
    storage = {"0": struct.pack("<2f", 1.0, 2.0)}
    with pytest.raises(ImitationFileError, match="past its storage"):
        load_imitation_bytes(torch_zip(storage_pickle(10), storage))
    with pytest.raises(ImitationFileError, match="200 elements over a storage of 2"):
        load_imitation_bytes(torch_zip(storage_pickle(200, stride=0), storage))
    with pytest.raises(ImitationFileError, match="expected a saved reward net, found a tensor"):
        load_imitation_bytes(torch_zip(storage_pickle(2), storage))
    with pytest.raises(ImitationFileError, match="holds 4 bytes, not 8"):
        load_imitation_bytes(torch_zip(storage_pickle(2), {"0": b"\0" * 4}))
    state_dict = PROTO + op_call("collections", "OrderedDict") + STOP
    with pytest.raises(ImitationFileError, match="a state_dict"):
        load_imitation_bytes(torch_zip(state_dict))
    with pytest.raises(ImitationFileError, match="not a torch.save zip archive"):
        load_imitation_bytes(b"garbage")
    with pytest.raises(ImitationFileError, match="unreadable pickle"):
        load_imitation_bytes(torch_zip(PROTO + b"(("))
    # A layer renamed: the layout is no longer build_mlp's, so nothing is guessed.
    with pytest.raises(ImitationFileError, match="layer names"):
        load_imitation_bytes(tampered("basic_box", b"dense_final", b"dense_fXnal"))
    # A layer of an allowed class where build_mlp puts an activation.
    with pytest.raises(ImitationFileError, match="expected an activation, found Identity"):
        load_imitation_bytes(
            tampered(
                "gail",
                b"torch.nn.modules.activation\nReLU\n",
                b"torch.nn.modules.linear\nIdentity\n",
            )
        )
    with pytest.raises(FileNotFoundError):
        load_imitation("/nonexistent/imitation.pt")


def test_is_imitation_file_sniffs_without_unpickling(tmp_path):
    ours = tmp_path / "ours.pt"
    serialize.save(load_imitation(DATA / "basic_box.pth"), ours)
    assert not is_imitation_file(ours.read_bytes())
    assert not is_imitation_file(b"")
    assert not is_imitation_file(b"PK\x03\x04 not really a zip")
    assert not is_imitation_file(torch_zip(PROTO + op_call("os", "system", op_str("x")) + STOP))
    assert is_imitation_file(torch_zip(payloads(tmp_path / "x")["inside a net"][0]))
    assert imitation_files.__all__ == [
        "ImitationFileError",
        "UnsafeImitationFileError",
        "is_imitation_file",
        "load_imitation",
        "load_imitation_bytes",
    ]


# --------------------------------------------------------------------------------------
# Our loaders take imitation's files directly
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["normalized_running", "gail", "cnn_shaped"])
def test_serialize_load_and_load_reward_read_imitation_files(name):
    path = DATA / f"{name}.pth"
    args, z = batch(name)
    net = serialize.load(path)
    assert serialize.format_chain(net) == CHAINS[name]
    close(net.predict(*args), z["predict"])
    reward_fn = serialize.load_reward("RewardNet_unnormalized", path, None)
    close(reward_fn(*args), z["predict"])


def test_with_learned_reward_takes_an_imitation_file():
    from ray.rllib.algorithms.ppo import PPOConfig

    from ray_rewards.rllib import with_learned_reward

    config = with_learned_reward(
        PPOConfig().environment("Pendulum-v1"), str(DATA / "normalized_running.pth")
    )
    assert config._learner_connector is not None  # the relabel piece, holding the net


def test_serialize_load_refuses_a_hostile_imitation_file_by_name(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    evil.write_bytes(torch_zip(payloads(marker)["inside a net"][0]))
    with pytest.raises(serialize.UnsafeRewardFileError, match=r"global builtins\.exec"):
        serialize.load(evil)
    assert not marker.exists()
