"""Behaviours that code written against imitation's reward nets relies on.

README promises that such code keeps working when ``imitation.rewards.reward_nets``,
``imitation.util.networks`` and ``imitation.rewards.serialize`` become
``ray_rewards.reward_nets``, ``ray_rewards.networks`` and ``ray_rewards.serialize``.
These tests pin what that takes, grouped by behaviour: names and signatures,
accepted inputs (Discrete actions as ``(B, 1)`` too), error types and the phrases in
their messages, buffer dtypes (float32 statistics, an int64 count), EMANorm's
``inv_learning_rate``, and saved-net round trips (files with the float64 buffers
written before still load).
"""

from __future__ import annotations

import functools
import pickle

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from torch import nn

from ray_rewards import networks, reward_nets, serialize
from ray_rewards.networks import EMANorm, RunningNorm
from ray_rewards.stats import Moments

B = 6
BOX = spaces.Box(-1.0, 1.0, (2, 3), np.float32)  # 2-D observations are flattened
DISCRETE = spaces.Discrete(4)
MULTI_DISCRETE = spaces.MultiDiscrete([2, 3])
MULTI_BINARY = spaces.MultiBinary(3)
IMAGE = spaces.Box(0, 255, (12, 10, 3), np.uint8)
ATARI_ACT = spaces.Discrete(5)


def sample(space: spaces.Space, n: int = B, seed: int = 0) -> np.ndarray:
    space.seed(seed)
    return np.stack([space.sample() for _ in range(n)])


def batch(obs: spaces.Space, act: spaces.Space, n: int = B, seed: int = 0) -> tuple:
    done = np.zeros(n, dtype=bool)
    done[-1] = True
    return sample(obs, n, seed), sample(act, n, seed + 1), sample(obs, n, seed + 2), done


class ConstantNet(reward_nets.RewardNet):
    """Gives ``value`` for every transition; records the keyword arguments it gets."""

    def __init__(self, obs: spaces.Space, act: spaces.Space, value: float = 0.0, **kwargs):
        super().__init__(obs, act, **kwargs)
        self.value = value
        self.seen_kwargs: list[dict] = []

    def forward(self, state, action, next_state, done):
        return th.full((state.shape[0],), float(self.value), device=state.device)

    def predict_processed(self, state, action, next_state=None, done=None, **kwargs):
        self.seen_kwargs.append(kwargs)
        return self.predict(state, action, next_state, done)


serialize.register_safe_class(ConstantNet)


def ensemble(obs: spaces.Space, act: spaces.Space, **kwargs) -> reward_nets.RewardEnsemble:
    members = [reward_nets.BasicRewardNet(obs, act, **kwargs) for _ in range(3)]
    return reward_nets.RewardEnsemble(obs, act, members)


# ---------------------------------------------------------------- construction and shapes

MLP_NETS = [
    functools.partial(reward_nets.BasicRewardNet, hid_sizes=(4,)),
    functools.partial(
        reward_nets.BasicShapedRewardNet, reward_hid_sizes=(4,), potential_hid_sizes=(4,)
    ),
    functools.partial(ensemble, hid_sizes=(4,)),
]
MLP_OPTIONS = [
    {},
    {"normalize_input_layer": RunningNorm},
    {"normalize_input_layer": EMANorm},
    {"use_next_state": True, "dropout_prob": 0.25},
    {"use_done": True},
]
SPACE_PAIRS = [(BOX, DISCRETE), (DISCRETE, MULTI_DISCRETE), (MULTI_BINARY, BOX)]


@pytest.mark.parametrize("obs, act", SPACE_PAIRS)
@pytest.mark.parametrize("make", MLP_NETS)
@pytest.mark.parametrize("options", MLP_OPTIONS)
@pytest.mark.parametrize("normalized", [False, True])
def test_mlp_nets_build_and_give_one_reward_per_transition(obs, act, make, options, normalized):
    net = make(obs, act, **options)
    if normalized:
        net = reward_nets.NormalizedRewardNet(net, RunningNorm)
    s, a, ns, d = batch(obs, act)
    for rew in (net.predict(s, a, ns, d), net.predict_processed(s, a, ns, d)):
        assert isinstance(rew, np.ndarray) and rew.shape == (B,)
        assert np.issubdtype(rew.dtype, np.floating) and np.isfinite(rew).all()
    assert net.predict_th(s, a, ns, d).shape == (B,)


def test_cnn_reward_net_is_reachable_by_imitations_name():
    assert reward_nets.CnnRewardNet is reward_nets.CNNRewardNet


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"use_next_state": True, "use_action": False},
        {"dropout_prob": 0.25},
        {"use_done": True},
        {"use_done": True, "use_action": False},
    ],
)
def test_cnn_reward_net_takes_build_cnn_options(options):
    net = reward_nets.CnnRewardNet(
        IMAGE, ATARI_ACT, hid_channels=(2, 2), kernel_size=3, stride=2, padding=0, **options
    )
    assert net.predict(*batch(IMAGE, ATARI_ACT)).shape == (B,)


def test_parameterless_net_lives_on_cpu_with_default_dtype():
    net = ConstantNet(BOX, DISCRETE)
    assert net.device == th.device("cpu") and net.dtype == th.get_default_dtype()


# ---------------------------------------------------------------- preprocessing


def test_preprocess_turns_each_space_into_float_tensors():
    net = ConstantNet(BOX, DISCRETE)
    s, a, ns, d = batch(BOX, DISCRETE)
    st, at, nst, dt = net.preprocess(s, a, ns, d)
    assert st.shape == (B, 2, 3) and st.dtype == th.float32
    np.testing.assert_array_equal(at.numpy(), np.eye(4)[a])
    assert nst.shape == (B, 2, 3) and dt.tolist() == d.astype(float).tolist()
    multi = ConstantNet(MULTI_BINARY, MULTI_DISCRETE)
    s, a, _, _ = batch(MULTI_BINARY, MULTI_DISCRETE)
    st, at, _, _ = multi.preprocess(s, a, None, None)
    np.testing.assert_array_equal(st.numpy(), s.astype(np.float32))
    np.testing.assert_array_equal(
        at.numpy(), np.concatenate([np.eye(2)[a[:, 0]], np.eye(3)[a[:, 1]]], 1)
    )


def test_preprocess_scales_uint8_images_unless_told_not_to():
    s = sample(IMAGE)
    scaled = ConstantNet(IMAGE, ATARI_ACT).preprocess(s, sample(ATARI_ACT), None, None)[0]
    th.testing.assert_close(scaled, th.as_tensor(s, dtype=th.float32) / 255)
    raw = ConstantNet(IMAGE, ATARI_ACT, normalize_images=False)
    assert raw.preprocess(s, sample(ATARI_ACT), None, None)[0].max() > 1


@pytest.mark.parametrize("as_tensor", [False, True])
def test_discrete_batches_may_keep_a_trailing_axis_of_one(as_tensor):
    """Rollout buffers often store Discrete actions as (B, 1); both layouts one-hot alike."""
    net = reward_nets.BasicRewardNet(DISCRETE, DISCRETE, use_next_state=True)
    s, a, ns, d = batch(DISCRETE, DISCRETE)
    flat = net.preprocess(s, a, ns, d)
    column = [x.reshape(-1, 1) for x in (s, a, ns)]
    if as_tensor:
        column = [th.as_tensor(x) for x in column]
    kept = net.preprocess(column[0], column[1], column[2], d)
    for x, y in zip(flat, kept):
        th.testing.assert_close(x, y)
    np.testing.assert_array_equal(net.predict(*column, d), net.predict(s, a, ns, d))
    with pytest.raises(ValueError, match=r"expected shape \(6,\) \(or \(6, 1\)\)"):
        net.preprocess(s, a.reshape(-1, 1).repeat(2, 1), ns, d)


# ---------------------------------------------------------------- wrappers and their errors


def test_forward_wrapper_refuses_a_predict_processed_wrapper_in_imitations_words():
    normalized = reward_nets.NormalizedRewardNet(ConstantNet(BOX, DISCRETE), RunningNorm)
    with pytest.raises(
        ValueError, match="ForwardWrapper cannot be applied on top of PredictProcessedWrapper!"
    ):
        reward_nets.ShapedRewardNet(normalized, nn.Identity(), 0.9)


def test_predict_processed_wrapper_takes_device_and_dtype_from_its_base():
    class Elsewhere(ConstantNet):
        @property
        def device(self) -> th.device:
            return th.device("meta")

        @property
        def dtype(self) -> th.dtype:
            return th.float16

    wrapper = reward_nets.NormalizedRewardNet(Elsewhere(BOX, DISCRETE), RunningNorm)
    assert wrapper.device == th.device("meta") and wrapper.dtype == th.float16


def test_predict_processed_wrappers_pass_keywords_down():
    base = ConstantNet(BOX, DISCRETE)
    wrapper = reward_nets.NormalizedRewardNet(base, RunningNorm)
    wrapper.predict_processed(*batch(BOX, DISCRETE), custom=7)
    assert base.seen_kwargs == [{"custom": 7}]


def test_cnn_errors_use_imitations_phrases():
    not_images = [
        spaces.Box(0, 255, (12, 10, 3), np.float32),
        spaces.Box(0, 200, (12, 10, 3), np.uint8),
        spaces.Box(0, 255, (12, 10), np.uint8),
    ]
    for space in not_images:
        with pytest.raises(ValueError, match="requires observations to be images"):
            reward_nets.CnnRewardNet(space, ATARI_ACT)
        with pytest.raises(ValueError, match="must be given image inputs"):
            reward_nets.BasicPotentialCNN(space, hid_sizes=(2,))
    with pytest.raises(ValueError, match="must take current or next state"):
        reward_nets.CnnRewardNet(IMAGE, ATARI_ACT, use_state=False, use_next_state=False)
    with pytest.raises(ValueError, match="can only use Discrete action spaces"):
        reward_nets.CnnRewardNet(IMAGE, MULTI_DISCRETE)
    reward_nets.CnnRewardNet(IMAGE, MULTI_DISCRETE, use_action=False)  # action unused: fine
    for dims in (2, 3, 5):
        with pytest.raises(ValueError, match="Invalid input: "):
            reward_nets.cnn_transpose(th.zeros((1,) * dims))


# ---------------------------------------------------------------- shaped nets


def test_shaping_adds_discounted_potential_difference():
    def ten(x: th.Tensor) -> th.Tensor:
        return th.full((x.shape[0],), 10.0)

    shaped = reward_nets.ShapedRewardNet(ConstantNet(BOX, DISCRETE, value=1.0), ten, 0.9)
    s, a, ns, d = batch(BOX, DISCRETE)
    # 1 + 0.9 * 10 * (1 - done) - 10: the terminal transition loses the next potential.
    want = np.where(d, 1.0 - 10.0, 1.0 + 9.0 - 10.0)
    np.testing.assert_allclose(shaped.predict(s, a, ns, d), want)
    np.testing.assert_allclose(shaped.predict_processed(s, a, ns, d), want)
    np.testing.assert_allclose(shaped(*shaped.preprocess(s, a, ns, d)).numpy(), want)


def test_basic_shaped_net_handles_multi_dimensional_observations():
    net = reward_nets.BasicShapedRewardNet(BOX, DISCRETE)
    assert net.predict(*batch(BOX, DISCRETE, n=1)).shape == (1,)


# ---------------------------------------------------------------- normalized nets


def test_normalized_net_normalizes_only_processed_rewards_and_learns_their_stats():
    th.manual_seed(0)
    net = reward_nets.NormalizedRewardNet(
        reward_nets.BasicRewardNet(BOX, DISCRETE, normalize_input_layer=RunningNorm),
        RunningNorm,
    )
    s, a, ns, d = batch(BOX, DISCRETE, n=50)
    with networks.training(net):
        trained = net(*net.preprocess(s, a, ns, d)).detach().numpy()
    raw = net.predict(s, a, ns, d)
    np.testing.assert_array_equal(trained, raw)  # forward and predict skip the output norm
    first = net.predict_processed(s, a, ns, d)  # normalized by the stats before the batch
    np.testing.assert_allclose(first, raw / np.sqrt(1 + 1e-5), rtol=1e-6)
    stats = net.normalize_output_layer.moments()
    assert stats.count == 50 and np.allclose(stats.mean, raw.mean(), rtol=1e-5)
    frozen = net.predict_processed(s, a, ns, d, update_stats=False)
    wide = raw.astype(np.float64)
    want = (wide - wide.mean()) / np.sqrt(wide.var() + 1e-5)
    np.testing.assert_allclose(frozen, want, rtol=1e-4, atol=1e-4)
    assert net.normalize_output_layer.moments().count == 50


# ---------------------------------------------------------------- ensembles and AddSTD


def test_ensemble_moments_and_add_std_wrapper():
    members = [ConstantNet(BOX, DISCRETE, value=v) for v in (3.0, -1.0)]
    two = reward_nets.RewardEnsemble(BOX, DISCRETE, members)
    mean, var = two.predict_reward_moments(*batch(BOX, DISCRETE))
    np.testing.assert_allclose(mean, 1.0)
    np.testing.assert_allclose(var, 8.0)  # the unbiased (ddof=1) variance over members
    optimist = reward_nets.AddSTDRewardWrapper(two, default_alpha=0.5)
    np.testing.assert_allclose(optimist.predict_processed(*batch(BOX, DISCRETE)), 1 + 0.5 * 8**0.5)
    pessimist = optimist.predict_processed(*batch(BOX, DISCRETE), alpha=-1.0)
    np.testing.assert_allclose(pessimist, 1 - 8**0.5)


def test_ensemble_and_add_std_refuse_what_they_cannot_use():
    for n in (0, 1):
        with pytest.raises(ValueError):
            reward_nets.RewardEnsemble(BOX, DISCRETE, [ConstantNet(BOX, DISCRETE)] * n)
    with pytest.raises(TypeError):
        reward_nets.AddSTDRewardWrapper(ConstantNet(BOX, DISCRETE))


def test_ensemble_members_start_from_different_weights():
    members = ensemble(BOX, DISCRETE).members
    assert not th.equal(members[0].mlp[0].weight, members[1].mlp[0].weight)


# ---------------------------------------------------------------- norm layers


@pytest.mark.parametrize("cls", [RunningNorm, EMANorm])
def test_norm_buffers_have_imitations_dtypes_but_a_wide_count(cls):
    norm = cls(3)
    assert norm.running_mean.dtype == th.float32 and norm.running_var.dtype == th.float32
    assert norm.count.dtype == th.int64
    norm(th.randn(5, 3))
    assert norm.running_mean.dtype == th.float32 and norm.count.dtype == th.int64


@pytest.mark.parametrize("cls", [RunningNorm, EMANorm])
def test_a_fresh_norm_is_the_identity_in_eval_mode(cls):
    norm = cls(1, eps=0.0).eval()
    x = th.tensor([-3.5, 0.0, 2.25, 100.0])
    for _ in range(3):
        th.testing.assert_close(norm(x), x, rtol=0, atol=0)
    assert int(norm.count) == 0


def test_running_norm_merges_in_float64_and_rounds_once_per_update():
    rng = np.random.default_rng(3)
    data = rng.normal([3.0, -0.5], [2.0, 30.0], size=(300, 2))
    norm, reference = RunningNorm(2), Moments.empty((2,))
    for begin in range(0, 300, 37):
        chunk = data[begin : begin + 37]
        norm.update_stats(chunk)
        reference = norm.stored(reference.merge(Moments.of(chunk)))
        # Bit for bit: the float64 merge of the stored statistics, rounded to float32.
        assert norm.moments().allclose(reference, rtol=0, atol=0)
    exact = Moments.of(data)
    np.testing.assert_allclose(norm.running_mean.numpy(), exact.mean, rtol=1e-6)
    np.testing.assert_allclose(norm.running_var.numpy(), exact.var, rtol=1e-6)
    assert int(norm.count) == 300


def test_running_norm_count_goes_past_int32():
    norm = RunningNorm(1)
    norm.set_moments(Moments(2**31 + 5, np.array([1.0]), np.array([2.0])))
    norm.update_stats(np.array([1.0, 1.0]))
    assert int(norm.count) == 2**31 + 7
    assert norm.moments().count == 2**31 + 7


def test_set_moments_rounds_float64_merges_into_float32_buffers():
    norm = RunningNorm(1)
    merged = Moments(3, np.array([1 / 3]), np.array([2 / 3]))
    norm.set_moments(merged)
    assert norm.running_mean.item() == np.float32(1 / 3)
    assert norm.stored(merged).allclose(norm.moments(), rtol=0, atol=0)


def ema_reference(batches: list[np.ndarray], decay: float) -> tuple[np.ndarray, np.ndarray]:
    """Statistics of the mixture that weights batch j of k by decay**(k-1-j), normalized."""
    weights = decay ** np.arange(len(batches) - 1, -1, -1.0)
    weights /= weights.sum()
    means = np.stack([b.mean(0) for b in batches])
    variances = np.stack([b.var(0) for b in batches])
    mean = weights @ means
    return mean, weights @ (variances + (means - mean) ** 2)


@pytest.mark.parametrize("decay", [0.5, 0.9])
def test_ema_norm_learning_rate_buffer_and_statistics(decay):
    rng = np.random.default_rng(1)
    batches = [rng.normal(i, 1 + i, size=(8, 2)) for i in range(6)]
    norm = EMANorm(2, decay=decay)
    assert norm.inv_learning_rate.dtype == th.float32 and norm.inv_learning_rate.item() == 0
    for k, b in enumerate(batches):
        norm.update_stats(b)
        # inv_learning_rate is the sum of the weights so far; the batch got 1 / it.
        assert norm.inv_learning_rate.item() == pytest.approx((1 - decay ** (k + 1)) / (1 - decay))
        if k == 0:  # bias-corrected: the first batch replaces the initial statistics
            np.testing.assert_allclose(norm.running_mean.numpy(), b.mean(0), rtol=1e-6)
    mean, var = ema_reference(batches, decay)
    np.testing.assert_allclose(norm.running_mean.numpy(), mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(norm.running_var.numpy(), var, rtol=1e-5, atol=1e-5)
    assert int(norm.num_batches) == 6 and int(norm.count) == 48
    norm.reset_running_stats()
    assert norm.inv_learning_rate.item() == 0 and int(norm.num_batches) == 0


def test_ema_norm_state_dict_without_inv_learning_rate_still_loads():
    norm = EMANorm(2, decay=0.8)
    for i in range(3):
        norm.update_stats(th.full((4, 2), float(i)) + th.randn(4, 2))
    old = {k: v for k, v in norm.state_dict().items() if k != "inv_learning_rate"}
    fresh = EMANorm(2, decay=0.8)
    fresh.load_state_dict(old)
    assert fresh.inv_learning_rate.item() == pytest.approx(norm.inv_learning_rate.item())


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.1, 1.5])
def test_ema_norm_decay_must_be_strictly_between_0_and_1(decay):
    with pytest.raises(ValueError, match="decay must be between 0 and 1"):
        EMANorm(4, decay=decay)


# ---------------------------------------------------------------- build_mlp / build_cnn


def test_build_mlp_accepts_norm_layer_classes_and_refuses_anything_else():
    for layer in (RunningNorm, EMANorm, nn.BatchNorm1d):
        mlp = networks.build_mlp(3, [5], normalize_input_layer=layer)
        assert isinstance(mlp.normalize_input, layer) and mlp(th.randn(4, 3)).shape == (4, 1)
    for bad in (nn.Module, RunningNorm(3), "RunningNorm"):
        with pytest.raises(ValueError, match="normalize_input_layer.*not a valid normalization"):
            networks.build_mlp(3, [5], normalize_input_layer=bad)


def test_builders_refuse_squeezing_a_wide_output():
    with pytest.raises(ValueError, match="squeeze_output is only applicable when out_size=1"):
        networks.build_mlp(3, [], out_size=2, squeeze_output=True)
    with pytest.raises(ValueError, match="squeeze_output is only applicable when out_size=1"):
        networks.build_cnn(3, [], out_size=2, squeeze_output=True)


def test_build_mlp_trains():
    th.manual_seed(0)
    x = th.linspace(-3, 3, 64).reshape(-1, 1)
    mlp = networks.build_mlp(1, [16], normalize_input_layer=RunningNorm, dropout_prob=0.1)
    opt = th.optim.Adam(mlp.parameters(), lr=1e-2)
    losses = []
    for _ in range(100):
        loss = ((mlp(x) - th.sin(x)) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 2


def test_training_mode_is_imitations_name_for_the_mode_switch():
    net = nn.Sequential(nn.Dropout(0.5)).train()
    with networks.training_mode(net):  # as imitation's: evaluation unless told
        assert not net[0].training
    with networks.training_mode(net.eval(), mode=True):
        assert net[0].training
    assert not net[0].training


def test_build_cnn_with_strides_and_no_padding():
    cnn = networks.build_cnn(3, [4, 4], kernel_size=3, stride=2, padding=0, squeeze_output=True)
    assert cnn(th.zeros(2, 3, 15, 15)).shape == (2,)


# ---------------------------------------------------------------- serialize


SAVED_NETS = {
    "basic": lambda: reward_nets.BasicRewardNet(BOX, DISCRETE, hid_sizes=(4,)),
    "ema_input": lambda: reward_nets.BasicRewardNet(
        BOX, DISCRETE, hid_sizes=(4,), normalize_input_layer=EMANorm
    ),
    "shaped": lambda: reward_nets.BasicShapedRewardNet(BOX, DISCRETE),
    "normalized_ensemble": lambda: reward_nets.NormalizedRewardNet(
        ensemble(DISCRETE, MULTI_DISCRETE, hid_sizes=(3,)), RunningNorm
    ),
    "cnn": lambda: reward_nets.CnnRewardNet(IMAGE, ATARI_ACT, hid_channels=(2,)),
}


def spaces_of(net: reward_nets.RewardNet) -> tuple[spaces.Space, spaces.Space]:
    return net.observation_space, net.action_space


@pytest.mark.parametrize("name", sorted(SAVED_NETS))
def test_plain_torch_save_and_load_round_trip(name, tmp_path):
    net = SAVED_NETS[name]()
    data = batch(*spaces_of(net), n=20)
    with networks.training(net):
        net(*net.preprocess(*data))  # moves any normalization statistics
    path = tmp_path / "net.pt"
    th.save(net, path)
    loaded = th.load(path)  # torch's safe default, weights_only=True
    assert type(loaded) is type(net) and spaces_of(loaded) == spaces_of(net)
    np.testing.assert_array_equal(loaded.predict(*data), net.predict(*data))
    for (k, a), (_, b) in zip(net.state_dict().items(), loaded.state_dict().items()):
        assert a.dtype == b.dtype and th.equal(a, b), k


def save(net: reward_nets.RewardNet, tmp_path) -> str:
    path = str(tmp_path / "reward.pt")
    th.save(net, path)
    return path


@pytest.mark.parametrize(
    "reward_type",
    [
        "zero",
        "RewardNet_normalized",
        "RewardNet_unnormalized",
        "RewardNet_shaped",
        "RewardNet_unshaped",
    ],
)
@pytest.mark.parametrize("obs, act", [(BOX, DISCRETE), (IMAGE, ATARI_ACT)])
def test_load_reward_types_give_numeric_rewards_per_transition(reward_type, obs, act, tmp_path):
    cls = reward_nets.CnnRewardNet if obs is IMAGE else reward_nets.BasicRewardNet
    net = cls(obs, act)
    if reward_type == "RewardNet_normalized":
        net = reward_nets.NormalizedRewardNet(net, RunningNorm)
    if reward_type == "RewardNet_shaped":
        potential = (
            reward_nets.BasicPotentialCNN(obs, [2])
            if obs is IMAGE
            else reward_nets.BasicPotentialMLP(obs, [4])
        )
        net = reward_nets.ShapedRewardNet(net, potential, discount_factor=0.9)
    env = gym.Env()
    env.observation_space, env.action_space = obs, act
    fn = serialize.load_reward(reward_type, save(net, tmp_path), env)
    rew = fn(*batch(obs, act))
    assert isinstance(rew, np.ndarray) and rew.shape == (B,)
    assert np.issubdtype(rew.dtype, np.number)


def test_zero_reward_loader_and_registry_names():
    zero = serialize.load_zero(None, None)
    np.testing.assert_array_equal(zero(*batch(BOX, DISCRETE)), np.zeros(B))
    assert serialize.reward_registry.get("zero") is serialize.load_zero
    assert serialize.RewardFnLoaderFn is serialize.RewardFnLoader


def test_load_reward_refuses_an_unnormalized_net_as_normalized(tmp_path):
    path = save(reward_nets.BasicRewardNet(BOX, DISCRETE), tmp_path)
    with pytest.raises(TypeError):
        serialize.load_reward("RewardNet_normalized", path, None)


def test_load_reward_passes_alpha_to_the_std_wrapper(tmp_path):
    members = [ConstantNet(BOX, DISCRETE, value=v) for v in (3.0, -1.0)]
    net = reward_nets.AddSTDRewardWrapper(reward_nets.RewardEnsemble(BOX, DISCRETE, members))
    fn = serialize.load_reward("RewardNet_std_added", save(net, tmp_path), None, alpha=-0.5)
    np.testing.assert_allclose(fn(*batch(BOX, DISCRETE)), 1 - 0.5 * 8**0.5)


def make_legacy(net: reward_nets.RewardNet) -> reward_nets.RewardNet:
    """``net`` as files written before this release held it: float64 statistics, and
    EMANorm without ``inv_learning_rate``.
    """
    for layer in net.modules():
        if isinstance(layer, networks.BaseNorm):
            for name in ("running_mean", "running_var"):
                layer._buffers[name] = layer._buffers[name].double()
        if isinstance(layer, EMANorm):
            del layer._buffers["inv_learning_rate"]
    return net


def test_files_with_float64_statistics_still_load(tmp_path):
    th.manual_seed(0)
    net = reward_nets.NormalizedRewardNet(
        reward_nets.BasicRewardNet(BOX, DISCRETE, normalize_input_layer=EMANorm), RunningNorm
    )
    data = batch(BOX, DISCRETE, n=30)
    with networks.training(net):
        for _ in range(3):
            net(*net.preprocess(*data))
    net.predict_processed(*data)  # output statistics
    want = net.predict_processed(*data, update_stats=False)
    inv_lr = net.base.mlp[0].inv_learning_rate.item()
    path = save(make_legacy(net), tmp_path)
    for loaded in (serialize.load(path), th.load(path)):
        for layer in loaded.modules():
            if isinstance(layer, networks.BaseNorm):
                assert layer.running_mean.dtype == layer.running_var.dtype == th.float32
        assert loaded.base.mlp[0].inv_learning_rate.item() == pytest.approx(inv_lr)
        np.testing.assert_allclose(loaded.predict_processed(*data, update_stats=False), want)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda n: n._buffers.update(count=n.count.float()), "count of dtype torch.float32"),
        (lambda n: n._buffers.update(running_var=n.running_var.half()), "running_var of dtype"),
        (lambda n: n._buffers.pop("count"), "has no count"),
        # The expected dtypes come from the class, not from attributes the file sets.
        (
            lambda n: (
                setattr(n, "STATS_DTYPE", th.float16),
                n._buffers.update(running_mean=n.running_mean.half()),
            ),
            "running_mean of dtype torch.float16",
        ),
    ],
)
def test_statistics_of_the_wrong_dtype_are_refused(edit, message, tmp_path):
    net = reward_nets.NormalizedRewardNet(reward_nets.BasicRewardNet(BOX, DISCRETE), RunningNorm)
    edit(net.normalize_output_layer)
    path = save(net, tmp_path)
    with pytest.raises(ValueError, match=message):
        serialize.load(path)


# ---------------------------------------------------------------- ValidateRewardFn


def row_numbers(obs, acts, next_obs, dones) -> np.ndarray:
    return np.arange(len(obs), dtype=np.float32)


def test_validate_reward_fn_passes_good_rewards_through():
    checked = serialize.ValidateRewardFn(row_numbers)
    np.testing.assert_array_equal(checked(*batch(BOX, DISCRETE)), np.arange(B))
    assert pickle.loads(pickle.dumps(checked)).reward_fn is row_numbers


def test_validate_reward_fn_refuses_the_wrong_number_of_rewards():
    def one_short(obs, acts, next_obs, dones):
        return np.zeros(len(obs) - 1)

    checked = serialize.ValidateRewardFn(one_short)
    # imitation's version asserted; ours is a ValueError that is also an AssertionError.
    for error in (ValueError, AssertionError, serialize.RewardShapeError):
        with pytest.raises(error, match=r"one_short: expected rewards of shape \(6,\)"):
            checked(*batch(BOX, DISCRETE))
