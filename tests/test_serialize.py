"""Safe save/load of reward nets, space codec, describe, and load_reward."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap

import gymnasium as gym
import numpy as np
import pyarrow.fs as pafs
import pytest
import torch as th
from gymnasium import spaces
from torch import nn

import ray_rewards
from ray_rewards import networks, serialize, util
from ray_rewards import reward_nets as rn

BATCH = 16
BOX_OBS = spaces.Box(-1.0, 1.0, (3,))
BOX_ACT = spaces.Box(np.array([-2.0, 0.0]), np.array([2.0, np.inf]), dtype=np.float64)
IMAGE = spaces.Box(0, 255, (8, 8, 3), dtype=np.uint8)
PENDULUM_OBS = spaces.Box(
    np.array([-1.0, -1.0, -8.0], np.float32), np.array([1.0, 1.0, 8.0], np.float32)
)
PENDULUM_ACT = spaces.Box(-2.0, 2.0, (1,), dtype=np.float32)


def sample(space: spaces.Space, n: int = BATCH, seed: int = 0) -> np.ndarray:
    space.seed(seed)
    return np.stack([space.sample() for _ in range(n)])


def batch(net: rn.RewardNet, seed: int = 0) -> tuple[np.ndarray, ...]:
    obs = sample(net.observation_space, seed=seed)
    next_obs = sample(net.observation_space, seed=seed + 1)
    acts = sample(net.action_space, seed=seed + 2)
    dones = np.random.default_rng(seed).random(BATCH) < 0.3
    return obs, acts, next_obs, dones


def fit_stats(net: rn.RewardNet) -> rn.RewardNet:
    """Give every normalization layer non-trivial statistics."""
    for seed in range(3):
        args = batch(net, seed=10 + seed)
        with networks.training(net), th.no_grad():
            net(*net.preprocess(*args))
        net.predict_processed(*args)  # NormalizedRewardNet updates by default
    return net


def ensemble(obs: spaces.Space, act: spaces.Space, **kw) -> rn.RewardEnsemble:
    return rn.RewardEnsemble(obs, act, [rn.BasicRewardNet(obs, act, **kw) for _ in range(3)])


NET_BUILDERS = {
    "basic_box": lambda: rn.BasicRewardNet(BOX_OBS, BOX_ACT),
    "basic_running_norm_input": lambda: rn.BasicRewardNet(
        BOX_OBS, spaces.Discrete(3), normalize_input_layer=networks.RunningNorm
    ),
    "basic_discrete_multidiscrete": lambda: rn.BasicRewardNet(
        spaces.Discrete(5, start=2),
        spaces.MultiDiscrete([2, 3]),
        use_next_state=True,
        use_done=True,
    ),
    "basic_multibinary_tanh_dropout": lambda: rn.BasicRewardNet(
        spaces.MultiBinary(4),
        spaces.MultiBinary([2, 2]),
        activation=nn.Tanh,
        dropout_prob=0.1,
    ),
    "cnn": lambda: rn.CNNRewardNet(
        IMAGE, spaces.Discrete(3), hid_channels=(4,), use_next_state=True, use_done=True
    ),
    "basic_shaped": lambda: rn.BasicShapedRewardNet(BOX_OBS, BOX_ACT, use_next_state=True),
    "shaped_cnn_potential": lambda: rn.ShapedRewardNet(
        rn.CNNRewardNet(IMAGE, spaces.Discrete(3), hid_channels=(4,)),
        rn.BasicPotentialCNN(IMAGE, [4], activation=nn.LeakyReLU),
        discount_factor=0.9,
    ),
    "normalized_running": lambda: rn.NormalizedRewardNet(
        rn.BasicRewardNet(BOX_OBS, BOX_ACT, normalize_input_layer=networks.RunningNorm),
        networks.RunningNorm,
    ),
    "normalized_ema_shaped": lambda: rn.NormalizedRewardNet(
        rn.BasicShapedRewardNet(BOX_OBS, BOX_ACT), networks.EMANorm
    ),
    "ensemble": lambda: ensemble(BOX_OBS, BOX_ACT),
    "std_added": lambda: rn.AddSTDRewardWrapper(ensemble(BOX_OBS, BOX_ACT), default_alpha=0.5),
    "normalized_std_added": lambda: rn.NormalizedRewardNet(
        rn.AddSTDRewardWrapper(ensemble(IMAGE, spaces.Discrete(2), hid_sizes=(4,))),
        networks.RunningNorm,
    ),
}


def build(name: str) -> rn.RewardNet:
    th.manual_seed(0)
    return fit_stats(NET_BUILDERS[name]())


def outputs(net: rn.RewardNet) -> dict[str, np.ndarray]:
    args = batch(net, seed=99)
    return {
        "predict": net.predict(*args),
        "processed": net.predict_processed(*args, update_stats=False),
    }


def assert_same_net(a: rn.RewardNet, b: rn.RewardNet) -> None:
    assert serialize.format_chain(a) == serialize.format_chain(b)
    for x, y in zip(rn_spaces(a), rn_spaces(b)):
        assert type(x) is type(y) and x == y and x.dtype == y.dtype
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and th.equal(sa[k], sb[k]), k
    ma, mb = networks.norm_moments(a), networks.norm_moments(b)
    assert ma.keys() == mb.keys()
    assert all(ma[k].count > 0 and ma[k].allclose(mb[k], rtol=0, atol=0) for k in ma)
    oa, ob = outputs(a), outputs(b)
    for k in oa:
        np.testing.assert_array_equal(oa[k], ob[k])


def rn_spaces(net: rn.RewardNet) -> tuple[spaces.Space, spaces.Space]:
    return net.observation_space, net.action_space


@pytest.mark.parametrize("name", sorted(NET_BUILDERS))
def test_plain_th_save_load_round_trip(name, tmp_path):
    net = build(name)
    path = tmp_path / "net.pt"
    th.save(net, path)
    assert th.serialization.get_unsafe_globals_in_checkpoint(str(path)) == []
    loaded = th.load(path)  # torch's default: weights_only=True
    assert type(loaded) is type(net)
    assert_same_net(net, loaded)


@pytest.mark.parametrize("name", ["normalized_running", "normalized_std_added", "cnn"])
def test_serialize_save_load_round_trip(name, tmp_path):
    net = build(name)
    path = tmp_path / "sub" / "dir" / "net.pt"  # parents are created
    serialize.save(net, path)
    assert_same_net(net, serialize.load(path, device="cpu"))
    assert_same_net(net, serialize.load(f"file://{path}"))
    assert os.listdir(path.parent) == ["net.pt"]


def test_fresh_process_loads_every_net_with_plain_th_load(tmp_path):
    """A new interpreter that only imports ray_rewards loads every net with th.load."""
    expected = {}
    for name in NET_BUILDERS:
        net = build(name)
        th.save(net, tmp_path / f"{name}.pt")
        args = batch(net, seed=99)
        np.savez(tmp_path / f"{name}.inputs.npz", *args)
        expected[name] = outputs(net)["processed"]
    script = textwrap.dedent(
        """
        import sys, numpy as np, torch as th
        import ray_rewards
        d = sys.argv[1]
        out = {}
        for name in sys.argv[2:]:
            net = th.load(f"{d}/{name}.pt")
            args = np.load(f"{d}/{name}.inputs.npz")
            args = [args[f"arr_{i}"] for i in range(4)]
            out[name] = net.predict_processed(*args, update_stats=False)
        np.savez(f"{d}/outputs.npz", **out)
        """
    )
    subprocess.run(
        [sys.executable, "-c", script, str(tmp_path), *NET_BUILDERS], check=True, timeout=120
    )
    got = np.load(tmp_path / "outputs.npz")
    for name, want in expected.items():
        np.testing.assert_array_equal(got[name], want, err_msg=name)


SPACES = [
    spaces.Box(-1.0, 1.0, (3,)),
    spaces.Box(np.array([-np.inf, 0]), np.array([1.0, np.inf]), dtype=np.float64),
    spaces.Box(0, 255, (4, 4, 3), dtype=np.uint8),
    spaces.Box(-5, 5, (2,), dtype=np.int16),
    spaces.Discrete(4),
    spaces.Discrete(3, start=-1, dtype=np.int32),
    spaces.MultiDiscrete([[2, 3], [4, 5]], start=[[0, 1], [2, 3]]),
    spaces.MultiBinary(5),
    spaces.MultiBinary([2, 3]),
    spaces.Tuple([spaces.Discrete(2), spaces.Box(0.0, 1.0, (2,))]),
    spaces.Dict({"a": spaces.Discrete(2), "b": spaces.MultiBinary(3)}),
]


@pytest.mark.parametrize("space", SPACES, ids=str)
def test_space_codec_round_trip(space):
    data = serialize.space_to_data(space)
    rebuilt = serialize.space_from_data(data)
    assert type(rebuilt) is type(space) and rebuilt == space
    assert rebuilt.dtype == space.dtype
    assert rebuilt.shape == space.shape


def test_space_codec_rejects_bad_data():
    with pytest.raises(TypeError, match="cannot save Text spaces"):
        serialize.space_to_data(spaces.Text(5))
    with pytest.raises(ValueError, match="unknown or malformed space type 'Evil'"):
        serialize.space_from_data({"type": "Evil"})
    with pytest.raises(ValueError, match="expected a numeric dtype"):
        serialize.space_from_data({"type": "Discrete", "n": 2, "start": 0, "dtype": "object"})
    with pytest.raises(TypeError, match="expected a tensor"):
        serialize.space_from_data({"type": "Box", "low": [0], "high": [1], "dtype": "float32"})


# ---- malicious files -----------------------------------------------------------------


class _Payload:
    """Pickles as a call of ``func(arg)``: what an attacker puts in a file."""

    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return (self.func, (self.arg,))


@pytest.mark.parametrize(
    ("func", "arg_of", "named"),
    [
        (os.system, lambda f: f"echo pwned > {f}", "posix.system"),
        (eval, lambda f: f"open({str(f)!r}, 'w').write('pwned')", "builtins.eval"),
    ],
)
def test_crafted_pickle_is_refused_and_never_runs(tmp_path, func, arg_of, named):
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pt"
    # A real net next to the payload: the file looks legitimate.
    net = build("basic_box")
    th.save({"net": net, "x": _Payload(func, arg_of(marker))}, path)
    assert not marker.exists()  # pickling itself runs nothing

    with pytest.raises(serialize.UnsafeRewardFileError) as err:
        serialize.load(path)
    msg = str(err.value)
    assert named.split(".")[-1] in msg and "allowlist" in msg and "never" in msg
    assert isinstance(err.value, pickle.UnpicklingError)
    with pytest.raises(pickle.UnpicklingError):
        th.load(path)
    with pytest.raises(pickle.UnpicklingError):
        serialize.load_reward("RewardNet_unshaped", path, None)
    assert not marker.exists()


def test_numpy_globals_are_not_allowlisted(tmp_path):
    th.save(np.zeros(3), tmp_path / "arr.pt")
    with pytest.raises(serialize.UnsafeRewardFileError, match="numpy"):
        serialize.load(tmp_path / "arr.pt")


# ---- user classes --------------------------------------------------------------------


@serialize.register_safe_class
class RegisteredNet(rn.RewardNet):
    """A user's own reward net, as in imitation's docs, registered for saving."""

    def __init__(self, observation_space, action_space):
        super().__init__(observation_space, action_space)
        self.linear = nn.Linear(int(np.prod(observation_space.shape)), 1)

    def forward(self, state, action, next_state, done):
        return self.linear(state.flatten(1)).squeeze(1)


class UnregisteredNet(RegisteredNet):
    """Same net, never registered."""


@serialize.register_safe_class
class NumpyHoldingNet(RegisteredNet):
    """Registered, but holds a numpy array (not plain data)."""

    def __init__(self, observation_space, action_space):
        super().__init__(observation_space, action_space)
        self.table = np.arange(3)


def test_registered_user_net_round_trips(tmp_path):
    net = RegisteredNet(BOX_OBS, BOX_ACT)
    wrapped = rn.NormalizedRewardNet(net, networks.RunningNorm)
    fit_stats(wrapped)
    serialize.save(wrapped, tmp_path / "mine.pt")
    loaded = th.load(tmp_path / "mine.pt")
    assert type(loaded.base) is RegisteredNet
    np.testing.assert_array_equal(outputs(wrapped)["processed"], outputs(loaded)["processed"])
    assert RegisteredNet in serialize.safe_classes()


def test_unregistered_user_net_fails_early_with_a_clear_message(tmp_path):
    path = tmp_path / "net.pt"
    net = rn.NormalizedRewardNet(UnregisteredNet(BOX_OBS, BOX_ACT), networks.RunningNorm)
    with pytest.raises(TypeError, match=r"UnregisteredNet.*register_safe_class"):
        serialize.save(net, path)
    assert list(tmp_path.iterdir()) == []  # nothing written
    # Written behind our back with th.save, it is refused on load, naming the class.
    th.save(net, path)
    with pytest.raises(serialize.UnsafeRewardFileError, match="UnregisteredNet"):
        serialize.load(path)


def test_non_plain_attribute_fails_early(tmp_path):
    with pytest.raises(TypeError, match=r"numpy.*tensors, buffers or plain Python values"):
        serialize.save(NumpyHoldingNet(BOX_OBS, BOX_ACT), tmp_path / "net.pt")


def test_register_safe_class_accepts_only_module_classes():
    with pytest.raises(TypeError, match="nn.Module subclass"):
        serialize.register_safe_class(os.system)
    with pytest.raises(TypeError, match="nn.Module subclass"):
        serialize.register_safe_class(dict)

    class Local(nn.Module):
        pass

    with pytest.raises(TypeError, match="inside a function"):
        serialize.register_safe_class(Local)
    assert os.system not in serialize.safe_classes()


# ---- atomic writes and bad files -------------------------------------------------------


def test_failed_save_keeps_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "net.pt"
    old = build("normalized_running")
    serialize.save(old, path)
    before = path.read_bytes()

    def crash(fd):
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(OSError, match="disk on fire"):
        serialize.save(build("basic_shaped"), path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["net.pt"]
    assert_same_net(old, serialize.load(path))


def test_process_killed_mid_save_never_leaves_a_partial_file(tmp_path):
    path = tmp_path / "net.pt"
    old = build("basic_box")
    serialize.save(old, path)
    script = textwrap.dedent(
        f"""
        import os, sys
        from ray_rewards import reward_nets as rn, serialize
        from gymnasium import spaces
        net = rn.BasicRewardNet(spaces.Box(-1, 1, (3,)), spaces.Discrete(2), hid_sizes=(512,))
        os.fsync = lambda fd: os._exit(3)  # die after writing, before the rename
        serialize.save(net, {str(path)!r})
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], timeout=120)
    assert proc.returncode == 3
    assert_same_net(old, serialize.load(path))


def test_remote_filesystem_round_trip():
    fs = pafs._MockFileSystem()
    net = build("normalized_ema_shaped")
    serialize.save(net, "bucket/runs/net.pt", filesystem=fs)
    files = fs.get_file_info(pafs.FileSelector("bucket", recursive=True))
    assert sorted(f.path for f in files if f.type == pafs.FileType.File) == ["bucket/runs/net.pt"]
    assert_same_net(net, serialize.load("bucket/runs/net.pt", filesystem=fs))
    with pytest.raises(FileNotFoundError, match="no saved reward net"):
        serialize.load("bucket/none.pt", filesystem=fs)


def test_bad_files_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no saved reward net at .*missing.pt"):
        serialize.load(tmp_path / "missing.pt")
    with pytest.raises(IsADirectoryError, match="directory"):
        serialize.load(tmp_path)

    good = tmp_path / "good.pt"
    serialize.save(build("basic_box"), good)
    data = good.read_bytes()
    for cut in (10, len(data) // 2, len(data) - 20):
        bad = tmp_path / f"trunc{cut}.pt"
        bad.write_bytes(data[:cut])
        with pytest.raises(ValueError, match="truncated or corrupt"):
            serialize.load(bad)
    garbage = tmp_path / "garbage.pt"
    for seed in range(20):
        garbage.write_bytes(np.random.default_rng(seed).bytes(1000))
        with pytest.raises(ValueError, match="truncated or corrupt"):
            serialize.load(garbage)
    flipped = bytearray(data)
    flipped[len(data) // 3 : len(data) // 3 + 64] = bytes(64)
    garbage.write_bytes(bytes(flipped))
    with pytest.raises(ValueError, match="truncated or corrupt"):
        serialize.load(garbage)

    state_dict = tmp_path / "sd.pt"
    th.save(build("basic_box").state_dict(), state_dict)
    with pytest.raises(TypeError, match="expected a saved RewardNet, found OrderedDict"):
        serialize.load(state_dict)
    with pytest.raises(TypeError, match="expected a RewardNet, got Linear"):
        serialize.save(nn.Linear(2, 2), tmp_path / "lin.pt")


# ---- describe ------------------------------------------------------------------------------


def test_describe_reports_chain_spaces_params_and_stats():
    net = build("normalized_running")
    d = serialize.describe(net)
    assert d.chain == "NormalizedRewardNet(BasicRewardNet)"
    assert d.observation_space == str(BOX_OBS) and d.action_space == str(BOX_ACT)
    assert d.num_parameters == sum(p.numel() for p in net.parameters()) > 0
    layers = {s.layer: s for s in d.norm_stats}
    assert layers.keys() == networks.norm_moments(net).keys()
    out = layers["normalize_output_layer"]
    assert out.kind == "RunningNorm" and out.moments.count == 3 * BATCH
    text = d.format()
    assert "NormalizedRewardNet(BasicRewardNet)" in text and f"count={3 * BATCH}" in text
    assert serialize.describe(build("std_added")).chain == (
        "AddSTDRewardWrapper(RewardEnsemble[BasicRewardNet, BasicRewardNet, BasicRewardNet])"
    )


# ---- load_reward ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def venv():
    env = util.make_gym_vec_env("Pendulum-v1", n_envs=2, rng=np.random.default_rng(0))
    yield env
    env.close()


def pendulum_net(kind: str) -> rn.RewardNet:
    th.manual_seed(1)
    basic = rn.BasicRewardNet(PENDULUM_OBS, PENDULUM_ACT)
    shaped = rn.BasicShapedRewardNet(PENDULUM_OBS, PENDULUM_ACT)
    ens = ensemble(PENDULUM_OBS, PENDULUM_ACT)
    net = {
        "basic": basic,
        "normalized": rn.NormalizedRewardNet(basic, networks.RunningNorm),
        "shaped": shaped,
        "normalized_shaped": rn.NormalizedRewardNet(shaped, networks.RunningNorm),
        "std_added": rn.AddSTDRewardWrapper(ens, default_alpha=0.25),
        "normalized_std_added": rn.NormalizedRewardNet(
            rn.AddSTDRewardWrapper(ens, default_alpha=0.25), networks.RunningNorm
        ),
        "normalized_members": rn.AddSTDRewardWrapper(
            rn.RewardEnsemble(
                PENDULUM_OBS,
                PENDULUM_ACT,
                [rn.NormalizedRewardNet(b, networks.RunningNorm) for b in ens.members],
            )
        ),
    }[kind]
    return fit_stats(net)


@pytest.fixture
def saved(tmp_path):
    def save(kind: str):
        net = pendulum_net(kind)
        path = tmp_path / f"{kind}.pt"
        serialize.save(net, path)
        return net, path, batch(net, seed=5)

    return save


def count(net: rn.RewardNet) -> int:
    return net.normalize_output_layer.count.item()


def test_normalized_frozen_by_default_and_updatable(saved, venv):
    net, path, args = saved("normalized")
    fn = serialize.load_reward("RewardNet_normalized", path, venv)
    want = net.predict_processed(*args, update_stats=False)
    np.testing.assert_array_equal(fn(*args), want)
    fn(*args)
    assert count(fn.net) == count(net)  # frozen

    fn_upd = serialize.load_reward("RewardNet_normalized", path, venv, update_stats=True)
    np.testing.assert_array_equal(fn_upd(*args), want)  # normalizes with the old stats
    assert count(fn_upd.net) == count(net) + BATCH
    assert not np.array_equal(fn_upd(*args), want)  # then uses the updated ones


def test_unnormalized_strips_normalization(saved, venv):
    net, path, args = saved("normalized")
    fn = serialize.load_reward("RewardNet_unnormalized", path, venv)
    np.testing.assert_array_equal(fn(*args), net.base.predict(*args))
    assert type(fn.net) is rn.BasicRewardNet
    net, path, args = saved("basic")
    fn = serialize.load_reward("RewardNet_unnormalized", path, venv)
    np.testing.assert_array_equal(fn(*args), net.predict(*args))


def test_shaped_and_unshaped(saved, venv):
    net, path, args = saved("shaped")
    shaped = serialize.load_reward("RewardNet_shaped", path, venv)
    np.testing.assert_array_equal(shaped(*args), net.predict(*args))
    unshaped = serialize.load_reward("RewardNet_unshaped", path, venv)
    np.testing.assert_array_equal(unshaped(*args), net.base.predict(*args))
    assert not np.allclose(shaped(*args), unshaped(*args))

    net, path, args = saved("normalized_shaped")
    shaped = serialize.load_reward("RewardNet_shaped", path, venv)
    np.testing.assert_array_equal(shaped(*args), net.base.predict(*args))
    unshaped = serialize.load_reward("RewardNet_unshaped", path, venv)
    assert type(unshaped.net) is rn.BasicRewardNet
    np.testing.assert_array_equal(unshaped(*args), net.base.base.predict(*args))
    with pytest.raises(TypeError, match=r"RewardNet_shaped takes no keyword.*update_stats"):
        serialize.load_reward("RewardNet_shaped", path, venv, update_stats=True)


def test_std_added_alpha(saved, venv):
    for kind in ("std_added", "normalized_std_added"):
        net, path, args = saved(kind)
        ens = net.base if kind == "std_added" else net.base.base
        members = np.stack([m.predict(*args) for m in ens.members], -1)
        mean, std = members.mean(-1), members.std(-1, ddof=1)
        default = serialize.load_reward("RewardNet_std_added", path, venv)
        np.testing.assert_allclose(default(*args), mean + 0.25 * std, rtol=1e-6)
        for alpha in (-1.0, 2.0):
            fn = serialize.load_reward("RewardNet_std_added", path, venv, alpha=alpha)
            np.testing.assert_allclose(fn(*args), mean + alpha * std, rtol=1e-6)


def test_members_normalization_stays_frozen(saved, venv):
    net, path, args = saved("normalized_members")
    fn = serialize.load_reward("RewardNet_std_added", path, venv, alpha=1.0)
    before = networks.norm_moments(fn.net)
    fn(*args)
    after = networks.norm_moments(fn.net)
    assert all(before[k].allclose(after[k], rtol=0, atol=0) for k in before)
    fn = serialize.load_reward("RewardNet_std_added", path, venv, update_stats=True)
    fn(*args)
    assert all(m.count == BATCH * 3 + BATCH for m in networks.norm_moments(fn.net).values())


def test_zero(venv):
    fn = serialize.load_reward("zero", "ignored", venv)
    obs = np.ones((7, 3), dtype=np.float32)
    out = fn(obs, np.ones((7, 1)), obs, np.zeros(7, bool))
    assert out.shape == (7,) and out.dtype == np.float32 and not out.any()


@pytest.mark.parametrize(
    ("reward_type", "kind", "expected", "found"),
    [
        ("RewardNet_normalized", "basic", "NormalizedRewardNet(...)", "BasicRewardNet"),
        (
            "RewardNet_normalized",
            "shaped",
            "NormalizedRewardNet(...)",
            "BasicShapedRewardNet(BasicRewardNet)",
        ),
        ("RewardNet_shaped", "normalized", "ShapedRewardNet(...)", "NormalizedRewardNet("),
        ("RewardNet_std_added", "normalized", "AddSTDRewardWrapper(...)", "NormalizedRewardNet("),
    ],
)
def test_wrong_wrapper_structure(saved, venv, reward_type, kind, expected, found):
    _, path, _ = saved(kind)
    with pytest.raises(TypeError) as err:
        serialize.load_reward(reward_type, path, venv)
    msg = str(err.value)
    assert reward_type in msg and f"expected a net of the form {expected}" in msg
    assert f"found {found}" in msg


def test_unknown_type_and_space_mismatch(saved, venv):
    with pytest.raises(KeyError, match=r"'nope'.*RewardNet_normalized.*zero"):
        serialize.load_reward("nope", "x.pt", venv)
    path = saved("basic")[1]
    cartpole = gym.vector.SyncVectorEnv([lambda: gym.make("CartPole-v1")])
    with pytest.raises(ValueError, match=r"observation space Box.*does not match.*Box"):
        serialize.load_reward("RewardNet_unnormalized", path, cartpole)
    cartpole.close()
    single_env = gym.make("Pendulum-v1")  # a plain env works too: its own spaces
    assert serialize.load_reward("RewardNet_unnormalized", path, single_env).net is not None
    single_env.close()
    with pytest.raises(FileNotFoundError):
        serialize.load_reward("RewardNet_unnormalized", path.with_name("none.pt"), venv)


def test_registry_takes_new_types(saved, venv):
    registry = serialize.RewardRegistry()

    @registry.register("negated")
    def load_negated(path, venv, **kwargs):
        fn = serialize.load_reward("RewardNet_unnormalized", path, venv, **kwargs)
        return lambda *args: -fn(*args)

    net, path, args = saved("basic")
    np.testing.assert_array_equal(registry.get("negated")(path, venv)(*args), -net.predict(*args))
    with pytest.raises(KeyError, match="already registered"):
        registry.register("negated", load_negated)
    registry.register(key="negated", value=load_negated, overwrite=True)  # imitation's style
    assert "negated" in registry and "negated" not in serialize.reward_registry
    assert serialize.reward_registry.keys() == [
        "RewardNet_normalized",
        "RewardNet_unnormalized",
        "RewardNet_shaped",
        "RewardNet_unshaped",
        "RewardNet_std_added",
        "zero",
    ]


def test_reward_fn_pickles_and_checks_shape(saved, venv):
    net, path, args = saved("normalized")
    fn = serialize.load_reward("RewardNet_normalized", path, venv)
    clone = pickle.loads(pickle.dumps(fn))
    np.testing.assert_array_equal(clone(*args), fn(*args))
    assert "NormalizedRewardNet(BasicRewardNet).predict_processed" in repr(fn)


def test_import_registers_allowlist_in_torch():
    # Each class's dotted name is on torch's list, as a stand-in that never calls the
    # constructor (see test_hostile_inputs); the class itself only under a name no
    # pickle can spell.
    names = {
        entry[1]: entry[0]
        for entry in th.serialization.get_safe_globals()
        if isinstance(entry, tuple)
    }
    for cls in (rn.BasicRewardNet, networks.RunningNorm, nn.Linear, nn.Tanh):
        name = f"{cls.__module__}.{cls.__qualname__}"
        assert names[name] is not cls and names[name].cls is cls
        assert cls not in th.serialization.get_safe_globals()
    assert ray_rewards.serialize is serialize


@pytest.mark.skipif(not th.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_net_loads_on_any_device(tmp_path):
    net = build("normalized_running").to("cuda")
    serialize.save(net, tmp_path / "gpu.pt")
    on_cpu = serialize.load(tmp_path / "gpu.pt", device="cpu")
    assert on_cpu.device.type == "cpu" and on_cpu.observation_space == BOX_OBS
    on_gpu = serialize.load(tmp_path / "gpu.pt")
    assert on_gpu.device.type == "cuda"
    np.testing.assert_allclose(
        outputs(on_cpu)["processed"], outputs(on_gpu)["processed"], rtol=1e-5, atol=1e-6
    )


def test_deepcopy_and_pickle_keep_spaces():
    import copy

    net = build("basic_discrete_multidiscrete")
    for clone in (copy.deepcopy(net), pickle.loads(pickle.dumps(net, protocol=5))):
        assert_same_net(net, clone)
