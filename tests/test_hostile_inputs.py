"""Hostile and broken inputs: refused with a named error, and nothing changes."""

from __future__ import annotations

import numpy as np
import pytest
import torch as th
from helpers import make_net

from ray_rewards import networks
from ray_rewards.networks import EMANorm, RunningNorm


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


def test_non_finite_rewards_from_finite_inputs_leave_the_statistics_alone(net):
    with th.no_grad():
        for p in net.base.parameters():
            p.fill_(1e30)  # finite inputs, overflowing activations
    before = networks.norm_moments(net)
    with pytest.raises(ValueError, match=r"rewards are NaN or inf at rows [0-9, ]+ of 4"):
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
