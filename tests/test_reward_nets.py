"""Reward nets: the RewardNet API, architectures, wrappers, and their bad-input errors."""

from __future__ import annotations

import itertools
import re

import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from torch import nn

from ray_rewards import networks
from ray_rewards import reward_nets as rn
from ray_rewards.networks import EMANorm, RunningNorm

B = 6
OBS = spaces.Box(
    np.array([-1.0, -1.0, -8.0], np.float32), np.array([1.0, 1.0, 8.0], np.float32)
)  # Pendulum's
ACT = spaces.Box(-2.0, 2.0, (1,), dtype=np.float32)
IMG_HWC = spaces.Box(0, 255, (6, 5, 2), dtype=np.uint8)
IMG_CHW = spaces.Box(0, 255, (2, 6, 5), dtype=np.uint8)
DISC_ACT = spaces.Discrete(3, start=1)


def sample(space: spaces.Space, n: int = B, seed: int = 0) -> np.ndarray:
    space.seed(seed)
    return np.stack([space.sample() for _ in range(n)])


def batch(obs_space=OBS, act_space=ACT, n: int = B, seed: int = 0):
    """(state, action, next_state, done) with some terminal transitions."""
    done = np.zeros(n, dtype=bool)
    done[::3] = True
    return (
        sample(obs_space, n, seed),
        sample(act_space, n, seed + 1),
        sample(obs_space, n, seed + 2),
        done,
    )


class LinearNet(rn.RewardNet):
    """A user-defined net in the imitation docs' style: only ``__init__`` and ``forward``."""

    def __init__(self, observation_space, action_space):
        super().__init__(observation_space, action_space)
        self.linear = nn.Linear(4, 1)

    def forward(self, state, action, next_state, done):
        return self.linear(th.cat([state, action], dim=1)).squeeze(1)


class Recording(rn.RewardNet):
    """Parameterless net that rewards the sum of the state and records predict_processed kwargs."""

    def __init__(self, observation_space=OBS, action_space=ACT, offset: float = 0.0):
        super().__init__(observation_space, action_space)
        self.offset = offset
        self.calls: list[dict] = []

    def forward(self, state, action, next_state, done):
        return state.sum(1) + self.offset

    def predict_th(self, state, action, next_state=None, done=None):
        self.calls.append("predict_th")
        return super().predict_th(state, action, next_state, done)

    def predict_processed(self, state, action, next_state=None, done=None, **kwargs):
        self.calls.append(kwargs)
        return super().predict_processed(state, action, next_state, done)


class Scaled(rn.PredictProcessedWrapper):
    """A user-defined PredictProcessedWrapper: doubles the processed reward."""

    def predict_processed(self, state, action, next_state=None, done=None, **kwargs):
        return 2 * self.base.predict_processed(state, action, next_state, done, **kwargs)


# ---------------------------------------------------------------- RewardNet API


def test_reward_net_is_abstract():
    with pytest.raises(TypeError):
        rn.RewardNet(OBS, ACT)


def test_user_subclass_with_only_forward_gets_the_whole_api():
    th.manual_seed(0)
    net = LinearNet(OBS, ACT)
    s, a, ns, d = batch()
    rew = net.predict(s, a, ns, d)
    assert isinstance(rew, np.ndarray) and rew.shape == (B,) and rew.dtype == np.float32
    want = net.linear(th.cat([th.as_tensor(s), th.as_tensor(a)], 1)).squeeze(1)
    np.testing.assert_allclose(rew, want.detach().numpy(), rtol=1e-6)
    np.testing.assert_array_equal(net.predict_processed(s, a, ns, d), rew)
    np.testing.assert_array_equal(net.predict_th(s, a, ns, d).numpy(), rew)
    # Its forward ignores next_state and done, so None is fine for them.
    np.testing.assert_array_equal(net.predict(s, a), rew)
    st, at, nst, dt = net.preprocess(s, a, ns, d)
    assert st.dtype == th.float32 and st.shape == (B, 3) and dt.shape == (B,)
    assert dt.dtype == th.float32 and dt.tolist() == d.astype(float).tolist()
    assert net.uses_next_state and net.uses_done  # unknown forward: assume it reads all


def test_predict_th_is_detached_and_forward_differentiable():
    net = rn.BasicRewardNet(OBS, ACT)
    s, a, ns, d = batch()
    out = net.predict_th(s, a, ns, d)
    assert not out.requires_grad and out.shape == (B,)
    tensors = net.preprocess(s, a, ns, d)
    fwd = net(*tensors)
    assert fwd.requires_grad
    fwd.sum().backward()
    assert all(p.grad is not None for p in net.parameters())
    th.testing.assert_close(out, fwd.detach())


def test_device_and_dtype():
    net = rn.BasicRewardNet(OBS, ACT)
    assert net.device == th.device("cpu") and net.dtype == th.float32
    net.double()
    assert net.dtype == th.float64
    s, a, ns, d = batch()
    assert net.preprocess(s, a, ns, d)[0].dtype == th.float64
    assert net.predict_th(s, a).dtype == th.float64
    wrapped = rn.NormalizedRewardNet(net, RunningNorm)
    assert wrapped.dtype == th.float64 and wrapped.device == th.device("cpu")
    # A parameterless net: CPU and torch's default dtype.
    assert Recording().device == th.device("cpu") and Recording().dtype == th.float32
    old = th.get_default_dtype()
    try:
        th.set_default_dtype(th.float64)
        assert Recording().dtype == th.float64
    finally:
        th.set_default_dtype(old)


class Noisy(rn.RewardNet):
    """A net whose output changes in training mode (Dropout) and that has a RunningNorm."""

    def __init__(self):
        super().__init__(OBS, ACT)
        self.body = rn.BasicRewardNet(
            OBS, ACT, hid_sizes=(64,), dropout_prob=0.5, normalize_input_layer=RunningNorm
        )

    @property
    def uses_next_state(self) -> bool:
        return False

    @property
    def uses_done(self) -> bool:
        return False

    def forward(self, state, action, next_state, done):
        return self.body(state, action, None, None)


@pytest.mark.parametrize(
    "setup",
    [
        lambda net: net.train(),
        lambda net: net.eval(),
        # Root in eval mode, a submodule left in training mode: still eval inside predict.
        lambda net: (net.eval(), net.body.train()),
        lambda net: (net.train(), net.body.mlp.eval()),
    ],
)
def test_predict_runs_in_eval_mode_and_restores_modes(setup):
    th.manual_seed(0)
    net = Noisy()
    s, a, _, _ = batch()
    with networks.evaluating(net), th.no_grad():
        want = net(*net.preprocess(s, a, None, None)).numpy()
    setup(net)
    before = [m.training for m in net.modules()]
    norm = net.body.mlp.normalize_input
    for predict in (net.predict, net.predict_processed, lambda *x: net.predict_th(*x).numpy()):
        np.testing.assert_array_equal(predict(s, a), want)  # no dropout
        assert int(norm.count) == 0  # the input RunningNorm did not update
    assert [m.training for m in net.modules()] == before


def test_forward_in_training_mode_updates_input_norm():
    net = rn.BasicRewardNet(OBS, ACT, normalize_input_layer=RunningNorm)
    tensors = net.preprocess(*batch())
    net.train()
    net(*tensors)
    assert int(net.mlp.normalize_input.count) == B


def test_wrong_reward_shape_from_forward_is_an_error():
    class Bad(rn.RewardNet):
        def forward(self, state, action, next_state, done):
            return state[:, :1]

    with pytest.raises(
        ValueError, match=r"Bad.forward: expected rewards of shape \(6,\), got \(6, 1\)"
    ):
        Bad(OBS, ACT).predict(*batch())


# ---------------------------------------------------------------- bad input through predict


@pytest.mark.parametrize("method", ["predict", "predict_th", "predict_processed"])
def test_mismatched_batch_sizes_name_the_argument(method):
    net = rn.BasicRewardNet(OBS, ACT, use_next_state=True, use_done=True)
    s, a, ns, d = batch()
    call = getattr(net, method)
    with pytest.raises(ValueError, match=r"^action: expected shape \(6, 1\).*got \(5, 1\)"):
        call(s, a[:5], ns, d)
    with pytest.raises(ValueError, match=r"^next_state: expected shape \(6, 3\).*got \(7, 3\)"):
        call(s, a, np.concatenate([ns, ns[:1]]), d)
    with pytest.raises(ValueError, match=r"^done: expected shape \(6,\).*got \(4,\)"):
        call(s, a, ns, d[:4])
    with pytest.raises(ValueError, match=r"^done: expected shape \(6,\).*got \(6, 1\)"):
        call(s, a, ns, d[:, None])  # never broadcast silently
    with pytest.raises(ValueError, match=r"^state: expected shape \(6, 3\).*got \(6, 2\)"):
        call(s[:, :2], a, ns, d)


def test_unused_inputs_still_need_the_batch_size():
    net = rn.BasicRewardNet(OBS, ACT)  # reads neither next_state nor done
    s, a, ns, d = batch()
    with pytest.raises(ValueError, match="^next_state: expected a batch of 6 like state, got 5"):
        net.predict(s, a, ns[:5], d)
    with pytest.raises(ValueError, match="^done: expected a batch of 6 like state, got 3"):
        net.predict(s, a, ns, d[:3])
    with pytest.raises(
        ValueError, match=r"^done: expected a batch of 6 like state, got shape \(\)"
    ):
        net.predict(s, a, ns, np.bool_(False))
    with pytest.raises(ValueError, match="^state: expected a batch with a leading batch axis"):
        net.predict(np.float32(1.0), a)


@pytest.mark.parametrize("arg", [0, 1, 2])
def test_nan_and_inf_rejected(arg):
    net = rn.BasicRewardNet(OBS, ACT, use_next_state=True)
    inputs = list(batch())
    inputs[arg] = inputs[arg].copy()
    inputs[arg][2, 0] = np.nan if arg != 1 else np.inf
    name = ["state", "action", "next_state"][arg]
    with pytest.raises(ValueError, match=f"^{name}: expected finite values"):
        net.predict(*inputs)


def test_out_of_range_and_non_integral_discrete_actions():
    net = rn.BasicRewardNet(OBS, DISC_ACT)
    s = sample(OBS)
    a = np.array([1, 2, 3, 1, 2, 0])  # start=1, so 0 is out of range
    with pytest.raises(
        ValueError, match=r"^action: expected values within Discrete\(3, start=1\), got 0 at row 5"
    ):
        net.predict(s, a)
    with pytest.raises(ValueError, match="^action: expected integer values"):
        net.predict(s, np.array([1.0, 2.0, 3.0, 1.5, 2.0, 1.0]))
    # Valid integral floats are fine and one-hot like ints.
    np.testing.assert_array_equal(
        net.predict(s, np.array([1.0, 2.0, 3.0, 1.0, 2.0, 1.0])),
        net.predict(s, np.array([1, 2, 3, 1, 2, 1])),
    )


def test_tensor_inputs_give_the_same_rewards():
    net = rn.BasicRewardNet(OBS, DISC_ACT, use_next_state=True, use_done=True)
    s, a, ns, d = batch(act_space=DISC_ACT)
    want = net.predict(s, a, ns, d)
    got = net.predict(*(th.as_tensor(x) for x in (s, a, ns, d)))
    np.testing.assert_allclose(got, want, rtol=1e-6)


# ---------------------------------------------------------------- wrappers


def test_wrapper_base_and_delegation():
    base = rn.BasicRewardNet(OBS, ACT, use_done=True)
    w = Scaled(base)
    assert w.base is base
    assert w.observation_space is OBS and w.action_space is ACT
    assert w.uses_done and not w.uses_next_state
    s, a, ns, d = batch()
    np.testing.assert_array_equal(w.predict(s, a, ns, d), base.predict(s, a, ns, d))
    th.testing.assert_close(w.predict_th(s, a, ns, d), base.predict_th(s, a, ns, d))
    tensors = base.preprocess(s, a, ns, d)
    th.testing.assert_close(w(*tensors), base(*tensors))
    assert w(*tensors).requires_grad  # training sees the raw, differentiable net
    np.testing.assert_allclose(w.predict_processed(s, a, ns, d), 2 * base.predict(s, a, ns, d))
    with pytest.raises(TypeError, match="base: expected a RewardNet, got Linear"):
        Scaled(nn.Linear(1, 1))


def test_predict_processed_kwargs_reach_the_base_through_wrappers():
    base = Recording()
    net = Scaled(rn.NormalizedRewardNet(Scaled(base), RunningNorm))
    s, a, ns, d = batch()
    net.predict_processed(s, a, ns, d, update_stats=False, foo=1, bar="x")
    # NormalizedRewardNet consumes update_stats; everything else passes down.
    assert base.calls == [{"foo": 1, "bar": "x"}, "predict_th"]
    base.calls.clear()
    net.predict(s, a, ns, d)
    net.predict_th(s, a, ns, d)
    assert base.calls == ["predict_th", "predict_th"]  # the base's own predict path


@pytest.mark.parametrize(
    "make",
    [
        lambda: rn.NormalizedRewardNet(Recording(), RunningNorm),
        lambda: Scaled(Recording()),
        lambda: rn.AddSTDRewardWrapper(rn.RewardEnsemble(OBS, ACT, [Recording(), Recording()])),
    ],
)
def test_forward_wrapper_over_predict_processed_wrapper_raises(make):
    inner = make()
    with pytest.raises(
        ValueError, match="ForwardWrapper cannot be applied on top of PredictProcessedWrapper"
    ):
        rn.ShapedRewardNet(inner, nn.Linear(3, 1), 0.9)


# ---------------------------------------------------------------- BasicRewardNet


USE_COMBOS = [c for c in itertools.product([False, True], repeat=4) if any(c)]


@pytest.mark.parametrize(
    "use", USE_COMBOS, ids=lambda c: "".join("SANd"[i] for i in range(4) if c[i])
)
def test_basic_reward_net_reads_exactly_the_inputs_it_uses(use):
    use_state, use_action, use_next_state, use_done = use
    th.manual_seed(0)
    net = rn.BasicRewardNet(
        OBS,
        ACT,
        use_state=use_state,
        use_action=use_action,
        use_next_state=use_next_state,
        use_done=use_done,
        hid_sizes=(8,),
    )
    assert net.mlp[0].in_features == 3 * use_state + use_action + 3 * use_next_state + use_done
    assert net.uses_next_state == use_next_state and net.uses_done == use_done
    s, a, ns, d = batch()
    ref = net.predict(s, a, ns, d)
    perturbed = [s + 0.5, a + 0.5, ns + 0.5, ~d]
    inputs = [s, a, ns, d]
    for i, used in enumerate(use):
        changed = list(inputs)
        changed[i] = perturbed[i]
        assert (not np.allclose(net.predict(*changed), ref)) == used, i
    if not use_next_state and not use_done:
        np.testing.assert_array_equal(net.predict(s, a), ref)  # None for unused inputs
    if use_next_state:
        with pytest.raises(
            ValueError, match="BasicRewardNet uses next_state, but got next_state=None"
        ):
            net.predict(s, a, None, d)
    if use_done:
        with pytest.raises(ValueError, match="BasicRewardNet uses done, but got done=None"):
            net.predict(s, a, ns, None)


def test_basic_reward_net_options_and_spaces():
    net = rn.BasicRewardNet(OBS, ACT)
    assert [m.out_features for m in net.mlp if isinstance(m, nn.Linear)] == [32, 32, 1]
    net = rn.BasicRewardNet(OBS, ACT, hid_sizes=(5, 4, 3), normalize_input_layer=RunningNorm)
    assert [m.out_features for m in net.mlp if isinstance(m, nn.Linear)] == [5, 4, 3, 1]
    assert isinstance(net.mlp[0], RunningNorm) and net.mlp[0].num_features == 4
    with pytest.raises(ValueError, match="at least one of use_"):
        rn.BasicRewardNet(OBS, ACT, use_state=False, use_action=False)
    # Discrete observations and MultiDiscrete actions are one-hot.
    obs, act = spaces.Discrete(4), spaces.MultiDiscrete([2, 3])
    net = rn.BasicRewardNet(obs, act, use_next_state=True)
    assert net.mlp[0].in_features == 4 + 5 + 4
    s, a, ns, _ = batch(obs, act)
    assert net.predict(s, a, ns).shape == (B,)
    st, at, nst, _ = net.preprocess(s, a, ns, None)
    np.testing.assert_array_equal(st.numpy(), np.eye(4)[s])
    np.testing.assert_array_equal(
        at.numpy(), np.concatenate([np.eye(2)[a[:, 0]], np.eye(3)[a[:, 1]]], 1)
    )


def test_normalize_images_flag_reaches_preprocess_through_wrappers():
    class Mean(rn.RewardNet):
        def forward(self, state, action, next_state, done):
            return state.flatten(1).mean(1)

    s, a, _, _ = batch(IMG_HWC, DISC_ACT)
    want = s.reshape(B, -1).astype(np.float64).mean(1)
    scaled, raw = Mean(IMG_HWC, DISC_ACT), Mean(IMG_HWC, DISC_ACT, normalize_images=False)
    np.testing.assert_allclose(scaled.predict(s, a), want / 255, rtol=1e-5)
    np.testing.assert_allclose(raw.predict(s, a), want, rtol=1e-5)
    wrapped = rn.NormalizedRewardNet(raw, RunningNorm)
    assert not wrapped.normalize_images
    np.testing.assert_allclose(wrapped.predict(s, a), want, rtol=1e-5)


# ---------------------------------------------------------------- CNN nets


def cnn_reference(net: rn.CNNRewardNet, s, a, ns, d) -> np.ndarray:
    """The reward the CNN net should give, computed from its cnn by hand (HWC)."""
    imgs = [x for x, used in ((s, net.use_state), (ns, net.use_next_state)) if used]
    x = th.as_tensor(np.concatenate(imgs, axis=3), dtype=th.float32) / 255.0
    with th.no_grad():
        out = net.cnn(x.permute(0, 3, 1, 2)).numpy()
    if not (net.use_action or net.use_done):
        return out
    col = np.zeros(len(s), dtype=int)
    if net.use_action:
        col += a - DISC_ACT.start
    if net.use_done:
        col += d.astype(int) * (DISC_ACT.n if net.use_action else 1)
    return out[np.arange(len(s)), col]


@pytest.mark.parametrize(
    "use_state, use_action, use_next_state, use_done",
    [
        (True, True, False, False),
        (True, False, False, False),
        (True, True, True, True),
        (False, False, True, True),
        (True, False, False, True),
    ],
)
def test_cnn_reward_net_hwc_and_chw(use_state, use_action, use_next_state, use_done):
    th.manual_seed(0)
    kw = dict(
        use_state=use_state,
        use_action=use_action,
        use_next_state=use_next_state,
        use_done=use_done,
        hid_channels=(4,),
    )
    hwc = rn.CNNRewardNet(IMG_HWC, DISC_ACT, **kw)
    s, a, ns, d = batch(IMG_HWC, DISC_ACT)
    got = hwc.predict(s, a, ns, d)
    assert got.shape == (B,)
    np.testing.assert_allclose(got, cnn_reference(hwc, s, a, ns, d), rtol=1e-5, atol=1e-6)
    chw = rn.CNNRewardNet(IMG_CHW, DISC_ACT, hwc_format=False, **kw)
    chw.load_state_dict(hwc.state_dict())
    s_chw, ns_chw = s.transpose(0, 3, 1, 2), ns.transpose(0, 3, 1, 2)
    np.testing.assert_allclose(chw.predict(s_chw, a, ns_chw, d), got, rtol=1e-5, atol=1e-6)
    assert hwc.uses_next_state == use_next_state and hwc.uses_done == use_done


def test_cnn_reward_net_errors():
    with pytest.raises(ValueError, match="CNNRewardNet requires observations to be images"):
        rn.CNNRewardNet(OBS, DISC_ACT)
    with pytest.raises(
        ValueError, match=r"CNNRewardNet can only use Discrete action spaces .*got Box"
    ):
        rn.CNNRewardNet(IMG_HWC, ACT)
    with pytest.raises(ValueError, match="use_state or use_next_state must be True"):
        rn.CNNRewardNet(IMG_HWC, DISC_ACT, use_state=False)
    net = rn.CNNRewardNet(IMG_HWC, ACT, use_action=False, hid_channels=(2,))  # action unused
    s, a, _, _ = batch(IMG_HWC, ACT)
    assert net.predict(s, a).shape == (B,)
    with pytest.raises(ValueError, match=r"^state: expected shape \(6, 6, 5, 2\)"):
        net.predict(s.transpose(0, 3, 1, 2), a)


def test_cnn_transpose():
    x = th.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5)
    out = rn.cnn_transpose(x)
    assert out.shape == (2, 5, 3, 4)
    assert out[1, 4, 2, 3] == x[1, 2, 3, 4]
    for shape in [(3, 4, 5), (1, 2, 3, 4, 5)]:
        with pytest.raises(
            ValueError, match=re.escape(f"expected a 4-D tensor, got shape {shape}")
        ):
            rn.cnn_transpose(th.zeros(shape))


def test_potential_nets():
    mlp = rn.BasicPotentialMLP(OBS, (4,))
    assert mlp(th.zeros(B, 3)).shape == (B,)
    disc = rn.BasicPotentialMLP(spaces.Discrete(5), [3])
    assert disc(th.zeros(B, 5)).shape == (B,)
    hwc = rn.BasicPotentialCNN(IMG_HWC, (3,))
    chw = rn.BasicPotentialCNN(IMG_CHW, (3,), hwc_format=False)
    chw.load_state_dict(hwc.state_dict())
    x = th.rand(B, 6, 5, 2)
    assert hwc(x).shape == (B,)
    th.testing.assert_close(chw(x.permute(0, 3, 1, 2)), hwc(x))
    with pytest.raises(ValueError, match="BasicPotentialCNN requires observations to be images"):
        rn.BasicPotentialCNN(OBS, (3,))


# ---------------------------------------------------------------- shaping


class SumPotential(nn.Module):
    """Φ(s) = 10 · sum(s), optionally as (B, 1) or in a wrong shape."""

    def __init__(self, shape: str = "flat"):
        super().__init__()
        self.shape = shape

    def forward(self, state):
        phi = 10 * state.sum(1)
        return {
            "flat": phi,
            "column": phi[:, None],
            "wide": phi[:, None].repeat(1, 2),
            "short": phi[1:],
        }[self.shape]


@pytest.mark.parametrize("shape", ["flat", "column"])
def test_shaping_formula_and_terminal_next_states(shape):
    gamma = 0.9
    base = Recording(offset=0.25)
    net = rn.ShapedRewardNet(base, SumPotential(shape), gamma)
    s, a, ns, d = batch()
    got = net.predict(s, a, ns, d)
    r = s.sum(1) + 0.25
    phi, phi_next = 10 * s.sum(1), 10 * ns.sum(1)
    want = r + gamma * (1 - d) * phi_next - phi
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # Terminal next states have potential 0: their next_state does not matter.
    ns2 = ns.copy()
    ns2[d] += 3.0
    np.testing.assert_array_equal(net.predict(s, a, ns2, d)[d], got[d])
    assert not np.allclose(net.predict(s, a, ns2, ~d)[d], net.predict(s, a, ns, ~d)[d])
    np.testing.assert_array_equal(net.predict_processed(s, a, ns, d), got)
    assert net.uses_next_state and net.uses_done and net.base is base


@pytest.mark.parametrize("shape, got_shape", [("wide", r"\(6, 2\)"), ("short", r"\(5,\)")])
def test_potential_of_wrong_shape_is_an_error(shape, got_shape):
    net = rn.ShapedRewardNet(Recording(), SumPotential(shape), 0.9)
    with pytest.raises(
        ValueError,
        match=rf"ShapedRewardNet.potential: expected rewards of shape \(6,\), got {got_shape}",
    ):
        net.predict(*batch())


def test_shaped_net_needs_next_state_and_done():
    net = rn.ShapedRewardNet(Recording(), SumPotential(), 0.9)
    s, a, ns, d = batch()
    with pytest.raises(ValueError, match="uses next_state, but got next_state=None"):
        net.predict(s, a, None, d)
    with pytest.raises(ValueError, match="uses done, but got done=None"):
        net.predict(s, a, ns, None)


def test_basic_shaped_reward_net():
    th.manual_seed(0)
    net = rn.BasicShapedRewardNet(
        OBS,
        ACT,
        reward_hid_sizes=(7,),
        potential_hid_sizes=(5, 4),
        discount_factor=0.8,
        normalize_input_layer=RunningNorm,
    )
    assert isinstance(net.base, rn.BasicRewardNet) and isinstance(
        net.potential, rn.BasicPotentialMLP
    )
    assert net.discount_factor == 0.8
    assert [m.out_features for m in net.base.mlp if isinstance(m, nn.Linear)] == [7, 1]
    pot_layers = list(net.potential._potential_net)
    assert [m.out_features for m in pot_layers if isinstance(m, nn.Linear)] == [5, 4, 1]
    assert any(isinstance(m, RunningNorm) for m in pot_layers)  # kwargs reach both nets
    s, a, ns, d = batch()
    got = net.predict(s, a, ns, d)
    with networks.evaluating(net), th.no_grad():
        st, at, nst, dt = net.preprocess(s, a, ns, d)
        want = net.base(st, at, nst, dt) + 0.8 * (1 - dt) * net.potential(nst) - net.potential(st)
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-6)
    defaults = rn.BasicShapedRewardNet(OBS, ACT)
    assert defaults.discount_factor == 0.99
    assert [m.out_features for m in defaults.base.mlp if isinstance(m, nn.Linear)] == [32, 1]


# ---------------------------------------------------------------- normalization


def test_normalized_reward_net_uses_stats_before_the_batch_then_updates():
    base = rn.BasicRewardNet(OBS, ACT)
    net = rn.NormalizedRewardNet(base, RunningNorm)
    eps = net.normalize_output_layer.eps
    seen: list[np.ndarray] = []
    for seed in range(4):
        s, a, ns, d = batch(n=5 + seed, seed=seed)
        raw = base.predict(s, a, ns, d)
        if seen:
            prev = np.concatenate(seen).astype(np.float64)
            mean, var = prev.mean(), prev.var()
        else:
            mean, var = 0.0, 1.0  # nothing seen yet
        got = net.predict_processed(s, a, ns, d)
        assert got.dtype == np.float32 and got.shape == raw.shape
        np.testing.assert_allclose(got, (raw - mean) / np.sqrt(var + eps), rtol=1e-5, atol=1e-6)
        seen.append(raw)
        m = net.normalize_output_layer.moments()
        all_raw = np.concatenate(seen).astype(np.float64)
        assert m.count == len(all_raw)
        np.testing.assert_allclose(m.mean, [all_raw.mean()], rtol=1e-6)
        np.testing.assert_allclose(m.var, [all_raw.var()], rtol=1e-5)
    # forward, predict and predict_th are the base's (unnormalized).
    s, a, ns, d = batch(seed=9)
    np.testing.assert_array_equal(net.predict(s, a, ns, d), base.predict(s, a, ns, d))


def test_normalized_reward_net_update_stats_false_changes_nothing():
    base = rn.BasicRewardNet(OBS, ACT)
    net = rn.NormalizedRewardNet(base, RunningNorm)
    net.predict_processed(*batch(seed=1))
    before = net.normalize_output_layer.moments()
    net.train()  # mode does not matter
    s, a, ns, d = batch(seed=2)
    first = net.predict_processed(s, a, ns, d, update_stats=False)
    second = net.predict_processed(s, a, ns, d, update_stats=False)
    np.testing.assert_array_equal(first, second)
    assert net.normalize_output_layer.moments().allclose(before, rtol=0, atol=0)
    raw = base.predict(s, a, ns, d)
    np.testing.assert_allclose(
        first, (raw - before.mean) / np.sqrt(before.var + 1e-5), rtol=1e-5, atol=1e-6
    )


def test_normalized_reward_net_with_ema_norm():
    base = Recording()
    net = rn.NormalizedRewardNet(base, EMANorm)
    s, a, ns, d = batch()
    raw = base.predict(s, a, ns, d)
    np.testing.assert_allclose(
        net.predict_processed(s, a, ns, d), raw / np.sqrt(1 + 1e-5), rtol=1e-6
    )
    # The first batch sets the (bias-corrected) statistics to its own.
    np.testing.assert_allclose(
        net.predict_processed(s, a, ns, d),
        (raw - raw.mean()) / np.sqrt(raw.var() + 1e-5),
        rtol=1e-4,
        atol=1e-5,
    )


# ---------------------------------------------------------------- ensembles


def test_ensemble_moments_use_ddof_1_over_members_processed_rewards():
    members = [rn.NormalizedRewardNet(Recording(offset=o), RunningNorm) for o in (0.0, 1.0, 5.0)]
    for i, m in enumerate(members):
        m.normalize_output_layer.set_moments(
            networks.Moments(10, np.array([float(i)]), np.array([4.0**i]))
        )
    ens = rn.RewardEnsemble(OBS, ACT, members)
    assert ens.num_members == 3
    s, a, ns, d = batch()
    each = np.stack([m.predict_processed(s, a, ns, d, update_stats=False) for m in members], -1)
    mean, var = ens.predict_reward_moments(s, a, ns, d, update_stats=False)
    np.testing.assert_allclose(mean, each.mean(-1), rtol=1e-6)
    np.testing.assert_allclose(var, each.var(-1, ddof=1), rtol=1e-5)
    np.testing.assert_array_equal(ens.predict_processed_all(s, a, ns, d, update_stats=False), each)
    np.testing.assert_allclose(ens.predict_processed(s, a, ns, d, update_stats=False), mean)
    # forward is the mean of the members' raw forwards.
    tensors = ens.preprocess(s, a, ns, d)
    th.testing.assert_close(ens(*tensors), th.stack([m(*tensors) for m in members]).mean(0))


def test_ensemble_validation_and_uses():
    with pytest.raises(ValueError, match="expected at least 2 members, got 1"):
        rn.RewardEnsemble(OBS, ACT, [Recording()])
    with pytest.raises(ValueError, match="expected at least 2 members, got 0"):
        rn.RewardEnsemble(OBS, ACT, [])
    with pytest.raises(TypeError, match="members\\[1\\]: expected a RewardNet, got Linear"):
        rn.RewardEnsemble(OBS, ACT, [Recording(), nn.Linear(1, 1)])
    plain = [rn.BasicRewardNet(OBS, ACT) for _ in range(2)]
    assert not rn.RewardEnsemble(OBS, ACT, plain).uses_next_state
    mixed = [rn.BasicRewardNet(OBS, ACT), rn.BasicRewardNet(OBS, ACT, use_next_state=True)]
    ens = rn.RewardEnsemble(OBS, ACT, mixed)
    assert ens.uses_next_state and not ens.uses_done
    s, a, ns, _ = batch()
    assert ens.predict(s, a, ns).shape == (B,)


def test_add_std_wrapper():
    with pytest.raises(
        TypeError, match="expected a RewardNetWithVariance base.*got BasicRewardNet"
    ):
        rn.AddSTDRewardWrapper(rn.BasicRewardNet(OBS, ACT))
    members = [Recording(offset=o) for o in (0.0, 1.0, 3.0)]
    ens = rn.RewardEnsemble(OBS, ACT, members)
    s, a, ns, d = batch()
    mean, var = ens.predict_reward_moments(s, a, ns, d)
    std = np.sqrt(var)
    np.testing.assert_allclose(std, np.std([0.0, 1.0, 3.0], ddof=1), rtol=1e-5)
    np.testing.assert_allclose(rn.AddSTDRewardWrapper(ens).predict_processed(s, a, ns, d), mean)
    pessimist = rn.AddSTDRewardWrapper(ens, default_alpha=-1.5)
    np.testing.assert_allclose(
        pessimist.predict_processed(s, a, ns, d), mean - 1.5 * std, rtol=1e-6
    )
    np.testing.assert_allclose(
        pessimist.predict_processed(s, a, ns, d, alpha=2.0, tag=7), mean + 2.0 * std, rtol=1e-6
    )
    assert {"tag": 7} in members[0].calls  # other kwargs reach the members
    np.testing.assert_array_equal(pessimist.predict(s, a, ns, d), ens.predict(s, a, ns, d))


# ---------------------------------------------------------------- learning regression


SCALES = np.array([1.0, 10.0, 0.1], np.float32)  # badly scaled observation features
W = np.array([0.5, -1.0, 2.0], np.float32)


def reward_fn(obs: np.ndarray, act: np.ndarray) -> np.ndarray:
    return (obs / SCALES) @ W + act[:, 0] ** 2


@pytest.fixture
def one_thread():
    """Tiny nets run fastest on one thread; more only fight the other tests for the cores."""
    old = th.get_num_threads()
    th.set_num_threads(1)
    yield
    th.set_num_threads(old)


@pytest.mark.parametrize("normalize", [None, RunningNorm], ids=["plain", "running_norm"])
def test_basic_reward_net_learns_a_simple_reward(normalize, one_thread):
    th.manual_seed(0)
    rng = np.random.default_rng(0)
    obs_space = spaces.Box(-SCALES * 3, SCALES * 3, dtype=np.float32)

    def data(n):
        obs = (rng.standard_normal((n, 3)) * SCALES).astype(np.float32)
        act = rng.uniform(-2, 2, (n, 1)).astype(np.float32)
        return obs, act, reward_fn(obs, act)

    obs, act, rew = data(2048)
    net = rn.BasicRewardNet(obs_space, ACT, hid_sizes=(64, 64), normalize_input_layer=normalize)
    opt = th.optim.Adam(net.parameters(), lr=1e-2)
    state, action, _, _ = net.preprocess(obs, act, None, None)
    target = th.as_tensor(rew)
    net.train()
    for _ in range(400):
        idx = th.as_tensor(rng.integers(0, len(obs), 256))
        loss = th.mean((net(state[idx], action[idx], None, None) - target[idx]) ** 2)
        opt.zero_grad()
        loss.backward()
        opt.step()
    test_obs, test_act, test_rew = data(1024)
    mse = float(np.mean((net.predict(test_obs, test_act) - test_rew) ** 2))
    # Measured: relative MSE about 0.002 (plain) and 0.0005 (RunningNorm).
    assert mse < 0.02 * float(np.var(test_rew)), (mse, np.var(test_rew))
