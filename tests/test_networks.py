"""Normalization layers, MLP/CNN builders, mode context managers, cross-worker norm helpers."""

from __future__ import annotations

import numpy as np
import pytest
import torch as th
from torch import nn

from ray_rewards import networks
from ray_rewards.networks import EMANorm, RunningNorm
from ray_rewards.stats import Moments

# Statistics are stored as float32 (merges run in float64, rounded once per update):
# compared with exact float64 moments they agree to float32 round-off.
F32 = {"rtol": 2e-6, "atol": 1e-6}


def rand(*shape: int, seed: int = 0, scale: float = 1.0, loc: float = 0.0) -> th.Tensor:
    g = th.Generator().manual_seed(seed)
    return loc + scale * th.randn(*shape, generator=g)


# ---------------------------------------------------------------- BaseNorm family


@pytest.mark.parametrize("cls", [RunningNorm, EMANorm])
def test_norm_buffers_are_in_state_dict_and_round_trip(cls):
    norm = cls(3)
    sd = norm.state_dict()
    assert {"running_mean", "running_var", "count"} <= set(sd)
    # float32 statistics as imitation's; an int64 count (imitation's int32 wraps).
    assert sd["running_mean"].dtype == th.float32 and sd["running_mean"].shape == (3,)
    assert sd["running_var"].dtype == th.float32 and sd["count"].dtype == th.int64
    assert sd["count"].shape == ()
    th.testing.assert_close(sd["running_mean"], th.zeros(3))
    th.testing.assert_close(sd["running_var"], th.ones(3))
    norm(rand(7, 3, scale=3.0, loc=2.0))  # training mode: updates
    other = cls(3)
    other.load_state_dict(norm.state_dict())
    assert other.moments().allclose(norm.moments(), rtol=0, atol=0)
    assert int(other.count) == 7
    assert not list(norm.parameters())  # statistics are not trainable


@pytest.mark.parametrize("cls", [RunningNorm, EMANorm])
def test_norm_updates_in_forward_only_in_training_mode(cls):
    norm = cls(2)
    x = rand(16, 2, scale=4.0, loc=-3.0)
    norm.eval()
    out = norm(x)
    assert int(norm.count) == 0
    th.testing.assert_close(out, x / np.sqrt(1 + norm.eps))  # initial stats: mean 0, var 1
    norm.train()
    out = norm(x)
    assert int(norm.count) == 16
    # Update first, then normalize with the updated statistics (as imitation's layers).
    mean, var = x.double().mean(0), x.double().var(0, unbiased=False)
    th.testing.assert_close(out, ((x.double() - mean) / th.sqrt(var + norm.eps)).float())
    assert out.dtype == th.float32
    norm.eval()
    before = norm.moments()
    norm(rand(5, 2, seed=1))
    assert norm.moments().allclose(before, rtol=0, atol=0)


def test_norm_forward_keeps_input_dtype_and_takes_1d_for_one_feature():
    norm = RunningNorm(1)
    x = th.tensor([1.0, 2.0, 3.0], dtype=th.float64)
    out = norm(x)
    assert out.shape == (3,) and out.dtype == th.float64
    th.testing.assert_close(
        out, (x - 2.0) / th.sqrt(th.tensor(2.0 / 3 + norm.eps, dtype=th.float64))
    )
    assert int(norm.count) == 3


def test_norm_does_not_track_gradients_of_stats():
    norm = RunningNorm(2)
    x = rand(4, 2).requires_grad_()
    norm(x).sum().backward()
    assert x.grad is not None
    assert not norm.running_mean.requires_grad and norm.running_mean.grad_fn is None


@pytest.mark.parametrize("cls", [RunningNorm, EMANorm])
def test_reset_running_stats(cls):
    norm = cls(2)
    norm(rand(8, 2, loc=5.0))
    norm.reset_running_stats()
    m = norm.moments()
    assert m.count == 0
    np.testing.assert_array_equal(m.mean, [0.0, 0.0])
    np.testing.assert_array_equal(m.var, [1.0, 1.0])
    if cls is EMANorm:
        assert int(norm.num_batches) == 0
        norm(th.tensor([[1.0, 2.0], [3.0, 6.0]]))  # first batch after reset: its own stats
        np.testing.assert_allclose(norm.moments().mean, [2.0, 4.0])


@pytest.mark.parametrize("cls", [RunningNorm, EMANorm])
def test_norm_bad_batch_shapes(cls):
    norm = cls(3)
    with pytest.raises(ValueError, match=r"expected a batch of shape \(B, 3\), got \(4, 2\)"):
        norm.update_stats(np.zeros((4, 2)))
    with pytest.raises(ValueError, match=r"\(B, 3\), got \(4,\)"):
        norm(th.zeros(4))
    with pytest.raises(ValueError, match="num_features must be >= 1, got 0"):
        cls(0)


def test_running_norm_numpy_and_tensor_updates_agree():
    data = rand(30, 4, scale=2.0, loc=1.0)
    a, b = RunningNorm(4), RunningNorm(4)
    for chunk in data.split(7):
        a.update_stats(chunk)
        b.update_stats(chunk.numpy())
    assert a.moments().allclose(b.moments(), **F32)
    assert a.moments().allclose(Moments.of(data.double().numpy()), **F32)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_running_norm_reward_column_fast_path_equals_general_path(dtype):
    """A 1-D numpy batch into a 1-feature norm (the per-step reward update) merges as
    Python floats; it must hold what (B, 1) batches and tensors give, to float32."""
    rng = np.random.default_rng(0)
    chunks = [rng.normal(5.0, 3.0, n).astype(dtype) for n in (1, 8, 64, 0, 300)]
    column, matrix, tensor = RunningNorm(1), RunningNorm(1), RunningNorm(1)
    for c in chunks:
        column.update_stats(c)
        matrix.update_stats(c.reshape(-1, 1))
        tensor.update_stats(th.as_tensor(c))
    want = Moments.of(np.concatenate(chunks).astype(np.float64).reshape(-1, 1))
    for norm in (column, matrix, tensor):
        assert norm.moments().allclose(want, **F32)
        assert int(norm.count) == want.count == 373
    with pytest.raises(ValueError, match=r"expected a batch of shape \(B, 3\), got \(5,\)"):
        RunningNorm(3).update_stats(np.zeros(5))


@pytest.mark.parametrize("features, shape", [(1, (6,)), (1, (6, 1)), (3, (6, 3))])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_normalize_is_forward_in_eval_mode_in_numpy(features, shape, dtype):
    norm = RunningNorm(features)
    norm.update_stats(rand(50, features, scale=3.0, loc=-2.0))
    before = norm.moments()
    x = rand(*shape, seed=1, scale=4.0).numpy().astype(dtype)
    got = norm.normalize(x)
    assert got.dtype == dtype and got.shape == shape
    with networks.evaluating(norm):
        want = norm(th.as_tensor(x)).numpy()
    np.testing.assert_allclose(got, want.reshape(shape), rtol=1e-6, atol=1e-6)
    assert norm.moments().allclose(before, rtol=0, atol=0)  # never updates


def test_emanorm_bias_correction_and_weights():
    decay = 0.9
    norm = EMANorm(2, decay=decay)
    batches = [rand(6, 2, seed=s, scale=1 + s, loc=3.0 * s) for s in range(4)]
    norm.update_stats(batches[0])
    first = batches[0].double().numpy()
    # Bias correction: the first batch gives exactly its own mean and variance.
    np.testing.assert_allclose(norm.moments().mean, first.mean(0), **F32)
    np.testing.assert_allclose(norm.moments().var, first.var(0), **F32)
    for b in batches[1:]:
        norm.update_stats(b)
    # Batch j of k gets weight decay**(k-1-j) / sum(...): the statistics are those of the
    # mixture of the batches' distributions with those weights.
    w = decay ** np.arange(len(batches) - 1, -1, -1.0)
    w /= w.sum()
    means = np.stack([b.double().numpy().mean(0) for b in batches])
    vars_ = np.stack([b.double().numpy().var(0) for b in batches])
    mix_mean = (w[:, None] * means).sum(0)
    mix_var = (w[:, None] * (vars_ + (means - mix_mean) ** 2)).sum(0)
    m = norm.moments()
    np.testing.assert_allclose(m.mean, mix_mean, **F32)
    np.testing.assert_allclose(m.var, mix_var, **F32)
    assert m.count == 24 and int(norm.num_batches) == 4
    # inv_learning_rate (imitation's buffer) is the sum of the batches' weights.
    assert norm.inv_learning_rate.item() == pytest.approx(sum(decay**k for k in range(4)))
    assert {"num_batches", "inv_learning_rate"} <= set(norm.state_dict())


def test_emanorm_ignores_empty_batches_and_validates_decay():
    norm = EMANorm(1)
    norm.update_stats(np.zeros((0, 1)))
    assert int(norm.num_batches) == 0 and norm.moments().count == 0
    for bad in (0.0, 1.0, -0.5, 1.5):
        with pytest.raises(ValueError, match="decay must be between 0 and 1"):
            EMANorm(1, decay=bad)


def test_running_norm_ignores_empty_tensor_batch():
    norm = RunningNorm(2)
    norm.update_stats(rand(3, 2))
    before = norm.moments()
    norm.update_stats(th.zeros(0, 2))
    assert norm.moments().allclose(before, rtol=0, atol=0)
    assert np.isfinite(norm.moments().mean).all()


# ---------------------------------------------------------------- builders


def test_build_mlp_layers_and_shapes():
    mlp = networks.build_mlp(4, (8, 5), out_size=3, name="rew")
    names = [n for n, _ in mlp.named_children()]
    assert names == ["rew_dense0", "rew_act0", "rew_dense1", "rew_act1", "rew_dense_final"]
    assert [m.out_features for m in mlp if isinstance(m, nn.Linear)] == [8, 5, 3]
    assert mlp(th.zeros(2, 4)).shape == (2, 3)


def test_build_mlp_options():
    mlp = networks.build_mlp(
        6,
        (7,),
        activation=nn.Tanh,
        dropout_prob=0.5,
        squeeze_output=True,
        flatten_input=True,
        normalize_input_layer=RunningNorm,
    )
    kinds = [type(m) for m in mlp]
    assert kinds == [
        nn.Flatten,
        RunningNorm,
        nn.Linear,
        nn.Tanh,
        nn.Dropout,
        nn.Linear,
        networks.SqueezeLayer,
    ]
    assert mlp[1].num_features == 6
    assert mlp(th.zeros(5, 2, 3)).shape == (5,)
    linear = networks.build_mlp(3, (), activation=None)
    assert [type(m) for m in linear] == [nn.Linear] and linear(th.zeros(2, 3)).shape == (2, 1)
    no_act = networks.build_mlp(3, (4, 4), activation=None)
    assert not any(isinstance(m, nn.ReLU) for m in no_act)
    with pytest.raises(ValueError, match="only applicable when out_size=1, got out_size=2"):
        networks.build_mlp(3, (4,), out_size=2, squeeze_output=True)


def test_build_cnn_shapes_and_options():
    cnn = networks.build_cnn(3, (4, 6), out_size=5, name="c", dropout_prob=0.1)
    assert cnn(th.zeros(2, 3, 9, 7)).shape == (2, 5)
    convs = [m for m in cnn if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(3, 4), (4, 6)]
    assert sum(isinstance(m, nn.Dropout) for m in cnn) == 2
    assert all(n.startswith("c_") for n, _ in cnn.named_children())
    strided = networks.build_cnn(1, (2,), kernel_size=3, stride=2, padding=1, squeeze_output=True)
    assert strided[0].stride == (2, 2)
    assert strided(th.zeros(4, 1, 8, 8)).shape == (4,)
    with pytest.raises(ValueError, match="squeeze_output is only applicable when out_size=1"):
        networks.build_cnn(1, (2,), out_size=3, squeeze_output=True)


def test_squeeze_layer_rejects_other_shapes():
    sq = networks.SqueezeLayer()
    assert sq(th.zeros(3, 1)).shape == (3,)
    for shape in [(3, 2), (3,), (3, 1, 1)]:
        with pytest.raises(ValueError, match=r"expected shape \(B, 1\)"):
            sq(th.zeros(shape))


# ---------------------------------------------------------------- training / evaluating


def tree() -> nn.Sequential:
    return nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.Dropout(), RunningNorm(2)), nn.ReLU())


def modes(m: nn.Module) -> list[bool]:
    return [x.training for x in m.modules()]


@pytest.mark.parametrize("ctx, mode", [(networks.evaluating, False), (networks.training, True)])
@pytest.mark.parametrize(
    "setup",
    [
        lambda net: net.train(),
        lambda net: net.eval(),
        # Mixed modes, with the root in either mode: for one of the two contexts the
        # root is already in the target mode while a submodule is not.
        lambda net: (net.train(), net[1].eval()),
        lambda net: (net.eval(), net[1][1].train()),
        lambda net: (net.eval(), net[1].train()),
        lambda net: (net.train(), net[1][0].eval()),
    ],
)
def test_mode_context_sets_every_submodule_and_restores(ctx, mode, setup):
    net = tree()
    setup(net)
    before = modes(net)
    with ctx(net) as got:
        assert got is net
        assert modes(net) == [mode] * len(before)
    assert modes(net) == before


def test_mode_context_restores_on_exception():
    net = tree()
    net.train()
    net[1][0].eval()
    before = modes(net)
    with pytest.raises(RuntimeError), networks.evaluating(net):
        raise RuntimeError("boom")
    assert modes(net) == before


def test_mode_context_restores_mixed_modes_under_a_module_overriding_train():
    """A custom ``train()`` recursing into children must not clobber their own modes."""

    class Custom(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Dropout()
            self.b = nn.Dropout()
            self.calls: list[bool] = []

        def train(self, mode: bool = True):
            self.calls.append(mode)
            return super().train(mode)

    net = nn.Sequential(Custom(), nn.Linear(1, 1))
    net.train()
    net[0].b.eval()
    before = modes(net)
    with networks.evaluating(net):
        assert modes(net) == [False] * len(before)
        assert net[0].calls[-1] is False  # the override ran
    assert modes(net) == before


def test_skip_mode_free_flips_only_modules_whose_mode_matters():
    class MyLinear(nn.Linear):  # a subclass may read self.training: never skipped
        pass

    net = nn.Sequential(nn.Linear(2, 2), nn.Dropout(), MyLinear(2, 2), RunningNorm(2), nn.ReLU())
    net.train()
    with networks.evaluating(net, skip_mode_free=True):
        assert [m.training for m in net] == [True, False, False, False, True]
        assert net.training  # Sequential is mode-free
        x = rand(4, 2)
        before = net[3].moments()
        net(x)
        assert net[3].moments().allclose(before, rtol=0, atol=0)  # RunningNorm in eval
        net[1].p = 1.0
        th.testing.assert_close(net(x), net(x))  # Dropout off
    assert modes(net) == [True] * 6


def test_skip_mode_free_falls_back_when_a_module_overrides_train():
    """A kept module whose train() recurses would flip skipped children: all take part."""

    class Custom(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(1, 1)

        def train(self, mode: bool = True):
            return super().train(mode)

    net = nn.Sequential(Custom(), nn.Linear(1, 1))
    net.train()
    net[0].lin.eval()
    before = modes(net)
    with networks.evaluating(net, skip_mode_free=True):
        assert not any(modes(net))
    assert modes(net) == before


def test_mode_contexts_nest():
    net = tree()
    net.train()
    with networks.evaluating(net):
        with networks.training(net):
            assert all(modes(net))
        assert not any(modes(net))
    assert all(modes(net))


def test_walk_modules_visits_every_module():
    net = tree()
    walked = list(networks.walk_modules(net))
    assert len(walked) == len(list(net.modules())) == 6
    assert {id(m) for m in walked} == {id(m) for m in net.modules()}
    assert walked[0] is net


# ---------------------------------------------------------------- cross-worker helpers


class TwoNorms(nn.Module):
    """An MLP with an input RunningNorm, and a RunningNorm over the first raw feature."""

    def __init__(self):
        super().__init__()
        self.mlp = networks.build_mlp(2, (3,), normalize_input_layer=RunningNorm)
        self.first = RunningNorm(1)

    def forward(self, x: th.Tensor) -> th.Tensor:
        self.first(x[:, 0])
        return self.mlp(x)


def two_norm_net() -> nn.Module:
    return TwoNorms()


def test_norm_moments_names_every_norm_layer():
    net = two_norm_net()
    got = networks.norm_moments(net)
    assert set(got) == {"mlp.normalize_input", "first"}
    assert got["mlp.normalize_input"].mean.shape == (2,) and got["first"].count == 0


def test_set_norm_moments_round_trip_and_errors():
    src, dst = two_norm_net(), two_norm_net()
    src(rand(9, 2, loc=3.0))
    networks.set_norm_moments(dst, networks.norm_moments(src))
    for name, m in networks.norm_moments(dst).items():
        assert m.allclose(networks.norm_moments(src)[name], rtol=0, atol=0)
    assert networks.norm_moments(dst)["first"].count == 9
    with pytest.raises(KeyError, match="expected moments for layers"):
        networks.set_norm_moments(dst, {"first": Moments.empty((1,))})
    extra = {**networks.norm_moments(src), "2": Moments.empty((1,))}
    with pytest.raises(KeyError, match="'2'"):
        networks.set_norm_moments(dst, extra)
    ema = nn.Sequential(EMANorm(1))
    with pytest.raises(TypeError, match="layer '0' is EMANorm"):
        networks.set_norm_moments(ema, networks.norm_moments(ema))


def test_merge_norm_updates_equals_one_net_seeing_all_data():
    base_net = two_norm_net()
    base_net(rand(5, 2, seed=9, loc=-1.0))  # shared starting statistics
    base = networks.norm_moments(base_net)
    single = two_norm_net()
    single.load_state_dict(base_net.state_dict())
    updates = []
    for seed in range(3):  # three workers, each a copy of base fed its own shard
        worker = two_norm_net()
        worker.load_state_dict(base_net.state_dict())
        shard = rand(4 + seed, 2, seed=seed, scale=2.0, loc=seed)
        worker(shard)
        single(shard)
        updates.append(networks.norm_moments(worker))
    merged = networks.merge_norm_updates(base, updates)
    want = networks.norm_moments(single)
    assert set(merged) == set(want)
    for name in want:
        assert merged[name].allclose(want[name], **F32), name
    assert merged["first"].count == 5 + 4 + 5 + 6
    networks.set_norm_moments(base_net, merged)
    assert networks.norm_moments(base_net)["first"].count == 20


def test_merge_norm_updates_missing_layer_is_named():
    base = networks.norm_moments(two_norm_net())
    partial = {"first": base["first"]}
    with pytest.raises(KeyError, match="mlp.normalize_input"):
        networks.merge_norm_updates(base, [partial])


def _two_layer_net() -> nn.Module:
    return nn.Sequential(RunningNorm(2), nn.Linear(2, 2), RunningNorm(1))


def _feed(net: nn.Module, rng: np.random.Generator, n: int) -> list[np.ndarray]:
    batches = [rng.normal(3.0, 2.0, (n, 2)), rng.normal(-1.0, 0.5, (n, 1))]
    net[0].update_stats(th.as_tensor(batches[0]))
    net[2].update_stats(th.as_tensor(batches[1]))
    return batches


def test_norm_sync_merges_copies_as_one_norm_that_saw_everything():
    rng = np.random.default_rng(0)
    copies = [_two_layer_net() for _ in range(3)]
    syncs = [networks.NormSync(c) for c in copies]
    reference = _two_layer_net()
    seen = [_feed(c, rng, 10 + 5 * i) for i, c in enumerate(copies)]
    reports = [s.report() for s in syncs]
    assert all(s.has_report for s in syncs)
    merged = {
        name: Moments.merge_all([base, *(r[name] for r in reports)])
        for name, base in syncs[0].synced.items()
    }
    # Data that arrives between the report and the merge is kept on top.
    late = _feed(copies[1], rng, 7)
    for s in syncs:
        s.absorb(merged)
    assert not any(s.has_report for s in syncs)
    for batches in [*seen, late]:
        reference[0].update_stats(th.as_tensor(batches[0]))
        reference[2].update_stats(th.as_tensor(batches[1]))
    late_copy = networks.norm_moments(copies[1])
    want = networks.norm_moments(reference)
    for name in want:
        assert late_copy[name].allclose(want[name], **F32)
        assert networks.norm_moments(copies[0])[name].allclose(merged[name], **F32)
    # After the merge a report holds only what came since: the late batch.
    again = syncs[1].report()
    assert again["0"].count == 7 and again["2"].count == 7
    assert syncs[0].report()["0"].count == 0


def test_norm_sync_refuses_changed_statistics_that_cannot_merge():
    net = nn.Sequential(EMANorm(2), RunningNorm(2))
    sync = networks.NormSync(net)
    net[1].update_stats(th.ones(4, 2))
    assert sync.report()["1"].count == 4  # an unchanged EMANorm is fine
    net[0].update_stats(th.ones(4, 2))
    with pytest.raises(TypeError, match="layer '0' is EMANorm"):
        sync.report()


def test_require_mergeable_names_the_layer_and_what_asked():
    networks.require_mergeable(_two_layer_net(), "job")
    with pytest.raises(ValueError, match=r"relabel: layer '1' is a EMANorm"):
        networks.require_mergeable(nn.Sequential(nn.Identity(), EMANorm(3)), "relabel", ValueError)
