"""Preprocessing of gymnasium spaces into tensors, and its validation of bad input."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch as th
from gymnasium import spaces

from ray_rewards import preprocessing
from ray_rewards.preprocessing import flat_dim, is_image_space

IMAGE_HWC = spaces.Box(0, 255, (4, 5, 3), dtype=np.uint8)
IMAGE_CHW = spaces.Box(0, 255, (3, 4, 5), dtype=np.uint8)
CPU = th.device("cpu")


def prep(x, space, *, name="state", batch_size=None, dtype=th.float32, normalize_images=True):
    if batch_size is None:
        batch_size = len(x)
    return preprocessing.preprocess_space(
        x,
        space,
        name=name,
        batch_size=batch_size,
        device=CPU,
        dtype=dtype,
        normalize_images=normalize_images,
    )


@pytest.mark.parametrize(
    "space, dim",
    [
        (spaces.Box(-1, 1, (3,)), 3),
        (spaces.Box(-1, 1, (2, 3)), 6),
        (spaces.Box(-1, 1, ()), 1),
        (IMAGE_HWC, 60),
        (spaces.Discrete(5, start=3), 5),
        (spaces.MultiDiscrete([3, 2, 4]), 9),
        (spaces.MultiDiscrete([[2, 3], [4, 1]]), 10),
        (spaces.MultiBinary(4), 4),
        (spaces.MultiBinary([2, 3]), 6),
    ],
)
def test_flat_dim_matches_preprocessed_width(space, dim):
    assert flat_dim(space) == dim
    space.seed(0)
    batch = np.stack([space.sample() for _ in range(3)])
    out = prep(batch, space)
    assert out.reshape(3, -1).shape == (3, dim)


@pytest.mark.parametrize(
    "space",
    [
        spaces.Dict({"a": spaces.Discrete(2)}),
        spaces.Tuple([spaces.Discrete(2)]),
        spaces.Text(5),
    ],
)
def test_unsupported_spaces_name_the_space(space):
    kind = type(space).__name__
    with pytest.raises(NotImplementedError, match=kind):
        flat_dim(space)
    with pytest.raises(NotImplementedError, match=f"state: .*{kind}"):
        prep(np.zeros(2), space, batch_size=2)
    with pytest.raises(NotImplementedError, match="expected one of Box, Discrete"):
        preprocessing.check_supported(space, "obs")


def test_is_image_space():
    assert is_image_space(IMAGE_HWC) and is_image_space(IMAGE_CHW)
    assert not is_image_space(spaces.Box(0, 255, (4, 5, 3), dtype=np.float32))
    assert not is_image_space(spaces.Box(0, 255, (20, 3), dtype=np.uint8))
    assert not is_image_space(spaces.Box(0, 100, (4, 5, 3), dtype=np.uint8))
    assert not is_image_space(spaces.Discrete(3))


def test_box_becomes_float32_with_values_kept():
    space = spaces.Box(-10, 10, (2, 2), dtype=np.float64)
    x = np.arange(12, dtype=np.float64).reshape(3, 2, 2) - 5
    out = prep(x, space)
    assert out.dtype == th.float32 and out.shape == (3, 2, 2)
    np.testing.assert_array_equal(out.numpy(), x.astype(np.float32))
    ints = prep(np.array([[1, 2], [3, 4]]), spaces.Box(-5, 5, (2,), dtype=np.int64))
    assert ints.dtype == th.float32
    np.testing.assert_array_equal(ints.numpy(), [[1, 2], [3, 4]])
    assert prep(x, space, dtype=th.float64).dtype == th.float64


def test_inputs_are_not_modified_and_read_only_arrays_accepted():
    space = spaces.Box(-10, 10, (2,))
    x = np.array([[1.0, 2.0]], dtype=np.float32)
    x.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns when wrapping non-writable arrays
        out = prep(x, space)
    np.testing.assert_array_equal(out.numpy(), x)
    assert not np.shares_memory(out.numpy(), x)  # a copy: the net cannot write through
    lst = prep([[1.0, 2.0], [3.0, 4.0]], space)  # array-likes too
    np.testing.assert_array_equal(lst.numpy(), [[1, 2], [3, 4]])


def test_discrete_one_hot_with_start():
    space = spaces.Discrete(4, start=-1)
    out = prep(np.array([-1, 2, 0]), space)
    assert out.dtype == th.float32
    np.testing.assert_array_equal(out.numpy(), np.eye(4)[[0, 3, 1]])
    # Integral floats and other integer dtypes are fine.
    np.testing.assert_array_equal(prep(np.array([2.0, -1.0]), space).numpy(), np.eye(4)[[3, 0]])
    np.testing.assert_array_equal(prep(np.array([1], np.uint8), space).numpy(), np.eye(4)[[2]])


def test_multidiscrete_one_hot_concat_with_start():
    space = spaces.MultiDiscrete([3, 2], start=[1, -1])
    out = prep(np.array([[1, -1], [3, 0]]), space)
    want = np.array([[1, 0, 0, 1, 0], [0, 0, 1, 0, 1]], dtype=np.float32)
    np.testing.assert_array_equal(out.numpy(), want)
    grid = spaces.MultiDiscrete([[2, 3], [1, 2]])
    out = prep(np.array([[[1, 2], [0, 1]]]), grid)
    np.testing.assert_array_equal(out.numpy(), [[0, 1, 0, 0, 1, 1, 0, 1]])


def test_multibinary_is_float():
    space = spaces.MultiBinary([2, 2])
    x = np.array([[[1, 0], [0, 1]]], dtype=np.int8)
    out = prep(x, space)
    assert out.dtype == th.float32 and out.shape == (1, 2, 2)
    np.testing.assert_array_equal(out.numpy(), x)
    np.testing.assert_array_equal(prep(x.astype(bool), space).numpy(), x)


@pytest.mark.parametrize("space", [IMAGE_HWC, IMAGE_CHW])
def test_images_scaled_iff_normalize_images(space):
    space.seed(0)
    x = np.stack([space.sample() for _ in range(2)])
    x[0].flat[0], x[1].flat[0] = 0, 255
    scaled = prep(x, space, normalize_images=True)
    assert scaled.dtype == th.float32 and scaled.shape == x.shape
    np.testing.assert_allclose(scaled.numpy(), x / 255.0, rtol=1e-6)
    assert scaled.min() == 0.0 and scaled.max() == 1.0
    raw = prep(x, space, normalize_images=False)
    np.testing.assert_array_equal(raw.numpy(), x.astype(np.float32))
    # The space decides, not the container's dtype: image data that arrives as float
    # (e.g. a float column of a dataset) is scaled alike (as stable-baselines3 does).
    np.testing.assert_allclose(prep(x.astype(np.float32), space).numpy(), scaled.numpy())
    np.testing.assert_allclose(prep(th.as_tensor(x), space).numpy(), scaled.numpy())


def test_uint8_non_image_box_not_scaled():
    space = spaces.Box(0, 255, (6,), dtype=np.uint8)
    x = np.full((2, 6), 200, dtype=np.uint8)
    np.testing.assert_array_equal(prep(x, space).numpy(), x.astype(np.float32))


@pytest.mark.parametrize(
    "space, x",
    [
        (spaces.Box(-1, 1, (3,)), np.array([[0.5, -0.5, 0.0]])),
        (spaces.Discrete(3, start=1), np.array([3, 1])),
        (spaces.MultiDiscrete([2, 3]), np.array([[1, 2]])),
        (spaces.MultiBinary(3), np.array([[1, 0, 1]])),
        (IMAGE_HWC, np.full((1, 4, 5, 3), 51, dtype=np.uint8)),
    ],
)
def test_tensors_give_the_same_as_numpy(space, x):
    want = prep(x, space)
    got = prep(th.as_tensor(x), space)
    assert got.dtype == want.dtype
    th.testing.assert_close(got, want)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "space, x, want",
    [
        (spaces.Box(-1, 1, (3,)), np.zeros((4, 2)), r"\(4, 3\).*got \(4, 2\)"),
        (spaces.Box(-1, 1, (3,)), np.zeros((5, 3)), r"\(4, 3\).*got \(5, 3\)"),
        (spaces.Box(-1, 1, (3,)), np.zeros(3), r"\(4, 3\).*got \(3,\)"),
        # (B, 1) is taken for Discrete (as imitation does), no other trailing axis.
        (spaces.Discrete(3), np.zeros((4, 2), int), r"\(4,\) \(or \(4, 1\)\).*got \(4, 2\)"),
        (spaces.MultiDiscrete([2, 2]), np.zeros((4, 3), int), r"\(4, 2\).*got \(4, 3\)"),
        (spaces.MultiBinary(2), np.zeros((4,), int), r"\(4, 2\).*got \(4,\)"),
        (IMAGE_HWC, np.zeros((4, 3, 4, 5), np.uint8), r"\(4, 4, 5, 3\).*got \(4, 3, 4, 5\)"),
    ],
)
def test_wrong_shapes_name_argument_expected_and_received(space, x, want):
    with pytest.raises(ValueError, match=f"^action: expected shape {want}"):
        prep(x, space, name="action", batch_size=4)
    with pytest.raises(ValueError, match=f"^action: expected shape {want}"):
        prep(th.as_tensor(x), space, name="action", batch_size=4)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize(
    "space, x",
    [
        (spaces.Box(-1, 1, (2,)), np.zeros((3, 2))),
        (spaces.Discrete(3), np.zeros(3)),
        (spaces.MultiDiscrete([3, 3]), np.zeros((3, 2))),
    ],
)
def test_non_finite_values_rejected(space, x, bad):
    x = x.copy()
    x.flat[-1] = bad
    for arr in (x, th.as_tensor(x)):
        with pytest.raises(ValueError, match="^next_state: expected finite values, got NaN or inf"):
            prep(arr, space, name="next_state")


@pytest.mark.parametrize(
    "space, x, row",
    [
        (spaces.Discrete(3), np.array([0, 3, 1]), 1),
        (spaces.Discrete(3), np.array([0, 1, -1]), 2),
        (spaces.Discrete(3, start=5), np.array([5, 7, 4]), 2),
        (spaces.MultiDiscrete([2, 3]), np.array([[0, 0], [1, 3]]), 1),
        (spaces.MultiDiscrete([2, 3], start=[0, -1]), np.array([[0, -2], [1, 0]]), 0),
    ],
)
def test_out_of_range_discrete_values_name_value_and_row(space, x, row):
    shown = str(x[row].tolist()).replace("[", r"\[").replace("]", r"\]")
    for arr in (x, th.as_tensor(x)):
        with pytest.raises(
            ValueError, match=rf"^action: expected values within .*{shown} at row {row}"
        ):
            prep(arr, space, name="action")


def test_non_integral_floats_for_discrete_rejected():
    for space, x in [
        (spaces.Discrete(3), np.array([0.0, 1.5])),
        (spaces.MultiDiscrete([3, 3]), np.array([[0.0, 1.0], [2.0, 0.25]])),
    ]:
        for arr in (x, th.as_tensor(x)):
            with pytest.raises(
                ValueError, match=r"^action: expected integer values for .*non-integral"
            ):
                prep(arr, space, name="action")


def test_multibinary_values_other_than_0_1_rejected():
    space = spaces.MultiBinary(2)
    for x in (np.array([[0, 2]]), np.array([[0.5, 1.0]]), np.array([[-1, 0]])):
        for arr in (x, th.as_tensor(x)):
            with pytest.raises(ValueError, match=r"^state: expected values 0 or 1 for MultiBinary"):
                prep(arr, space)


def test_object_and_ragged_arrays_rejected():
    box = spaces.Box(-1, 1, (2,))
    with pytest.raises(ValueError, match="^state: expected a numeric array, got list of objects"):
        prep([{}, {}], box, batch_size=2)
    with pytest.raises(ValueError, match="^state: expected a numeric array, got list"):
        prep([np.zeros(2), np.zeros(3)], box, batch_size=2)


def test_non_native_byte_order_accepted():
    x = np.array([[1.0, 2.0]], dtype=">f8")
    np.testing.assert_array_equal(prep(x, spaces.Box(-5, 5, (2,))).numpy(), [[1.0, 2.0]])
    d = np.array([2, 0], dtype=">i4")
    np.testing.assert_array_equal(prep(d, spaces.Discrete(3)).numpy(), np.eye(3)[[2, 0]])


def test_all_finite():
    big = np.full(4, 3e38, dtype=np.float32)  # finite, though their float32 sum is not
    assert preprocessing.all_finite(big)
    for bad in (np.inf, -np.inf, np.nan):
        x = big.copy()
        x[2] = bad
        assert not preprocessing.all_finite(x)
        assert not preprocessing.all_finite(th.as_tensor(x))
    both = np.array([np.inf, -np.inf])  # sums to NaN
    assert not preprocessing.all_finite(both)
    assert preprocessing.all_finite(np.array([1, 2], dtype=np.int64))
