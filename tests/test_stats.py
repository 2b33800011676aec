"""Mergeable moments: exactness of merge/subtract against numpy, as hypothesis properties."""

from __future__ import annotations

import numpy as np
import pytest
import torch as th
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ray_rewards.networks import RunningNorm
from ray_rewards.stats import Moments, column_moments

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Values of moderate magnitude: merge is exact up to float64 round-off, and round-off
# relative to the data's spread is what the tolerances below allow.
FLOATS = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False, width=64)
RTOL, ATOL = 1e-9, 1e-7


@st.composite
def data_and_splits(draw, min_rows: int = 1, max_parts: int = 6):
    """A (N, F) data set and a partition of its rows into contiguous, possibly empty parts."""
    n = draw(st.integers(min_rows, 40))
    f = draw(st.integers(1, 3))
    data = draw(hnp.arrays(np.float64, (n, f), elements=FLOATS))
    cuts = sorted(draw(st.lists(st.integers(0, n), max_size=max_parts - 1)))
    bounds = [0, *cuts, n]
    return data, [data[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def assert_moments_close(got: Moments, want: Moments) -> None:
    assert got.count == want.count
    np.testing.assert_allclose(got.mean, want.mean, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(got.var, want.var, rtol=RTOL, atol=ATOL)


def assert_stored_moments_close(got: Moments, want: Moments, data: np.ndarray) -> None:
    """A RunningNorm's moments against exact ones: merged in float64, each update is
    rounded into float32 buffers, so the error is float32 round-off of the data's scale.
    """
    scale = 1.0 + float(np.max(np.abs(data), initial=0.0))
    assert got.count == want.count
    np.testing.assert_allclose(got.mean, want.mean, rtol=1e-6, atol=1e-6 * scale)
    np.testing.assert_allclose(got.var, want.var, rtol=1e-5, atol=1e-6 * scale**2)


@SETTINGS
@given(hnp.arrays(np.float64, st.tuples(st.integers(1, 50), st.integers(1, 4)), elements=FLOATS))
def test_of_matches_numpy(data):
    m = Moments.of(data)
    assert m.count == len(data)
    assert m.mean.dtype == np.float64 and m.mean.shape == (data.shape[1],)
    np.testing.assert_allclose(m.mean, data.mean(0), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(m.var, data.var(0), rtol=RTOL, atol=ATOL)  # population var


@SETTINGS
@given(
    hnp.arrays(
        st.sampled_from([np.float32, np.float64]),
        st.integers(1, 60),
        elements=st.floats(-1e3, 1e3, width=32),
    )
)
def test_column_moments_match_numpy_and_moments_of(column):
    n, mean, var = column_moments(column)
    assert (n, type(mean), type(var)) == (len(column), float, float)
    wide = column.astype(np.float64)
    np.testing.assert_allclose([mean, var], [wide.mean(), wide.var()], rtol=RTOL, atol=ATOL)
    assert_moments_close(Moments.of(column), Moments(n, mean, var))
    two_d = Moments.of(column.reshape(-1, 1))
    np.testing.assert_allclose([two_d.mean[0], two_d.var[0]], [mean, var], rtol=RTOL, atol=ATOL)


def test_of_multidimensional_features_and_empty():
    data = np.arange(24, dtype=np.float32).reshape(4, 2, 3)
    m = Moments.of(data)
    assert m.mean.shape == (2, 3) and m.mean.dtype == np.float64
    np.testing.assert_allclose(m.var, data.astype(np.float64).var(0))
    empty = Moments.of(np.zeros((0, 5)))
    assert empty.count == 0 and empty.mean.shape == (5,)
    with pytest.raises(ValueError, match="scalar"):
        Moments.of(np.float64(3.0))


@SETTINGS
@given(data_and_splits(), st.randoms(use_true_random=False))
def test_merge_of_any_split_in_any_order_equals_whole(data_parts, rnd):
    data, parts = data_parts
    whole = Moments.of(data)
    moments = [Moments.of(p) for p in parts]
    assert_moments_close(Moments.merge_all(moments), whole)
    rnd.shuffle(moments)  # commutativity: any order
    assert_moments_close(Moments.merge_all(moments), whole)
    # Associativity: a random binary tree of merges.
    pool = list(moments)
    while len(pool) > 1:
        i = rnd.randrange(len(pool) - 1)
        pool[i : i + 2] = [pool[i].merge(pool[i + 1])]
    assert_moments_close(pool[0], whole)


@SETTINGS
@given(data_and_splits(min_rows=0, max_parts=3))
def test_merge_is_commutative_and_empty_is_identity(data_parts):
    data, parts = data_parts
    a = Moments.of(parts[0])
    b = Moments.of(np.concatenate([data[:0], *parts[1:]]))
    assert_moments_close(a.merge(b), b.merge(a))
    empty = Moments.empty((data.shape[1],))
    assert_moments_close(a.merge(empty), a)
    assert_moments_close(empty.merge(a), a)


@SETTINGS
@given(data_and_splits(max_parts=2))
def test_subtract_inverts_merge(data_parts):
    _, parts = data_parts
    a = Moments.of(parts[0])
    b = Moments.of(parts[-1]) if len(parts) > 1 else Moments.empty(a.mean.shape)
    # Round-off of the subtraction scales with the spread of the merged data.
    merged = a.merge(b)
    scale = 1.0 + float(np.max(np.abs(merged.mean))) + float(np.max(merged.var))
    got = merged.subtract(a)
    assert got.count == b.count
    np.testing.assert_allclose(got.mean, b.mean, rtol=1e-7, atol=1e-9 * scale)
    np.testing.assert_allclose(got.var, b.var, rtol=1e-6, atol=1e-9 * scale**2)
    assert np.all(got.var >= 0)


@SETTINGS
@given(data_and_splits(min_rows=1, max_parts=5))
def test_merge_updates_counts_base_once(data_parts):
    """Workers each start from the shared `base` and add their own shard."""
    data, parts = data_parts
    base, shards = parts[0], parts[1:]
    base_m = Moments.of(base)
    updated = [base_m.merge(Moments.of(s)) for s in shards]
    got = Moments.merge_updates(base_m, updated)
    assert_moments_close(got, Moments.of(data))
    # Naively merging the workers' statistics would count base once per worker.
    if len(shards) > 1 and len(base):
        assert Moments.merge_all(updated).count == len(data) + (len(shards) - 1) * len(base)


def test_merge_updates_with_no_workers_is_base():
    base = Moments.of(np.arange(6.0).reshape(3, 2))
    assert_moments_close(Moments.merge_updates(base, []), base)


@SETTINGS
@given(data_and_splits(min_rows=1, max_parts=5), st.sampled_from([th.float32, th.float64]))
def test_running_norm_moments_equal_moments_of_all_data(data_parts, dtype):
    data, parts = data_parts
    norm = RunningNorm(data.shape[1])
    for p in parts:
        norm.update_stats(th.as_tensor(p, dtype=dtype))
    want = Moments.of(th.as_tensor(data, dtype=dtype).double().numpy())
    assert_stored_moments_close(norm.moments(), want, data)
    # Numpy batches go through the same merge.
    norm_np = RunningNorm(data.shape[1])
    for p in parts:
        norm_np.update_stats(p)
    assert_stored_moments_close(norm_np.moments(), Moments.of(data), data)


def test_set_moments_round_trip_and_forward_uses_them():
    norm = RunningNorm(2)
    m = Moments(10, np.array([1.0, -2.0]), np.array([4.0, 0.25]))
    norm.set_moments(m)
    got = norm.moments()
    assert got.allclose(m) and got.count == 10
    assert norm.running_mean.dtype == th.float32 and norm.count.dtype == th.int64
    got.mean[0] = 99.0  # moments() is a copy, not a view of the buffers
    assert norm.running_mean[0].item() == 1.0
    norm.eval()
    x = th.tensor([[3.0, -1.5]])
    expected = (x.double() - th.tensor([1.0, -2.0])) / th.sqrt(th.tensor([4.0, 0.25]) + norm.eps)
    th.testing.assert_close(norm(x), expected.float())
    with pytest.raises(ValueError, match=r"expected mean of shape \(2,\), got \(3,\)"):
        norm.set_moments(Moments.of(np.zeros((2, 3))))


def test_error_cases():
    with pytest.raises(ValueError, match="one shape"):
        Moments(1, np.zeros(2), np.zeros(3))
    with pytest.raises(ValueError, match="count must be >= 0"):
        Moments(-1, np.zeros(2), np.zeros(2))
    a, b = Moments.of(np.zeros((2, 2))), Moments.of(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"feature shapes differ: \(2,\) vs \(3,\)"):
        a.merge(b)
    with pytest.raises(ValueError, match="feature shapes differ"):
        a.subtract(b)
    with pytest.raises(ValueError, match="cannot remove 5 samples from 2"):
        a.subtract(Moments.of(np.zeros((5, 2))))
    with pytest.raises(ValueError, match="at least one"):
        Moments.merge_all([])


def test_allclose_and_std():
    a = Moments.of(np.array([[1.0], [3.0]]))
    np.testing.assert_allclose(a.std, [1.0])
    assert a.allclose(Moments(2, np.array([2.0]), np.array([1.0 + 1e-12])))
    assert not a.allclose(Moments(3, np.array([2.0]), np.array([1.0])))
    assert not a.allclose(Moments(2, np.array([2.1]), np.array([1.0])))


def test_merge_exact_on_large_offset_data():
    """Chan's update keeps the variance of data far from zero (naive E[x²]−E[x]² loses it)."""
    rng = np.random.default_rng(0)
    data = 1e8 + rng.standard_normal((10_000, 1))
    parts = np.array_split(data, 7)
    got = Moments.merge_all(Moments.of(p) for p in parts)
    np.testing.assert_allclose(got.var, data.var(0), rtol=1e-6)
    np.testing.assert_allclose(got.mean, data.mean(0), rtol=1e-14)
