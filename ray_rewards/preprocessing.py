"""Turning batches from gymnasium spaces into tensors a reward net can eat.

Our own replacement for stable-baselines3's preprocessing:

======================  ==========================================================
space                   tensor (for a batch of ``B`` elements)
======================  ==========================================================
Box                     float, shape ``(B, *space.shape)``; a uint8 image Box is
                        scaled to [0, 1] when ``normalize_images``
Discrete(n)             one-hot, shape ``(B, n)``, from ``(B,)`` or ``(B, 1)``
MultiDiscrete(nvec)     one-hot per dimension, concatenated: ``(B, sum(nvec))``
MultiBinary             float, shape ``(B, *space.shape)``
======================  ==========================================================

Other spaces (Dict, Tuple, Text, Graph, ...) raise NotImplementedError. Inputs may
be numpy arrays (checked in numpy, cheap) or torch tensors (checked in torch, so
tensors already on a GPU never leave it).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces

SUPPORTED_SPACES = (spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary)


def check_supported(space: spaces.Space, name: str = "space") -> None:
    """Raise NotImplementedError unless ``space`` is one we can preprocess."""
    if not isinstance(space, SUPPORTED_SPACES):
        raise NotImplementedError(
            f"{name}: {space!r} ({type(space).__name__}) is not supported; expected one of "
            + ", ".join(s.__name__ for s in SUPPORTED_SPACES)
        )


def is_image_space(space: spaces.Space) -> bool:
    """Whether ``space`` is a uint8 image Box: 3-D, bounds exactly [0, 255]."""
    return (
        isinstance(space, spaces.Box)
        and len(space.shape) == 3
        and space.dtype == np.uint8
        and bool(np.all(space.low == 0))
        and bool(np.all(space.high == 255))
    )


def flat_dim(space: spaces.Space) -> int:
    """Number of features of one preprocessed, flattened element of ``space``."""
    check_supported(space)
    if isinstance(space, spaces.Discrete):
        return int(space.n)
    if isinstance(space, spaces.MultiDiscrete):
        return int(np.sum(space.nvec))
    return int(np.prod(space.shape))


def all_finite(x: np.ndarray | th.Tensor) -> bool:
    """Whether every element of a numeric array or tensor is finite (no NaN or inf)."""
    if isinstance(x, th.Tensor):
        return bool(th.isfinite(x).all()) if x.is_floating_point() else True
    return bool(np.isfinite(x).all()) if x.dtype.kind == "f" else True


def _as_array(x: Any, name: str) -> Any:
    """``x`` as a real-valued numpy array or tensor; ValueError naming ``name`` otherwise."""
    if isinstance(x, th.Tensor):
        if x.is_complex():
            raise ValueError(f"{name}: expected a real-valued array, got a {x.dtype} tensor")
        return x
    arr = x
    if not isinstance(x, np.ndarray):
        try:
            arr = np.asarray(x)
        except ValueError as e:  # ragged nesting
            raise ValueError(
                f"{name}: expected a numeric array, got {type(x).__name__}: {e}"
            ) from e
    if arr.dtype == object:
        raise ValueError(f"{name}: expected a numeric array, got {type(x).__name__} of objects")
    if arr.dtype.kind not in "biuf":
        raise ValueError(
            f"{name}: expected a real-valued numeric array, got {type(x).__name__} of "
            f"dtype {arr.dtype}"
        )
    return arr


def non_finite_rows(x: np.ndarray | th.Tensor) -> list[int]:
    """Indices of the rows of a batch that hold NaN or inf (for error messages)."""
    if isinstance(x, th.Tensor):
        bad = ~th.isfinite(x.reshape(x.shape[0], -1)).all(1)
        return bad.nonzero().flatten().tolist()
    return np.flatnonzero(~np.isfinite(x.reshape(x.shape[0], -1)).all(1)).tolist()


def format_rows(rows: list[int], limit: int = 10) -> str:
    """``rows`` for a message: at most ``limit`` indices, then how many more."""
    shown = ", ".join(map(str, rows[:limit]))
    return shown + (f" and {len(rows) - limit} more" if len(rows) > limit else "")


def _check_integral(t: th.Tensor, name: str, space: spaces.Space) -> None:
    if t.is_floating_point() and not bool((t == t.round()).all()):
        raise ValueError(f"{name}: expected integer values for {space}, got non-integral floats")


def preprocess_space(
    x: Any,
    space: spaces.Space,
    *,
    name: str,
    batch_size: int,
    device: th.device,
    dtype: th.dtype,
    normalize_images: bool = True,
) -> th.Tensor:
    """Validate a batch from ``space`` and turn it into a float tensor on ``device``.

    Args:
        x: batch of ``batch_size`` elements of ``space`` (numpy array, array-like or tensor).
        space: the gymnasium space the elements come from.
        name: argument name used in error messages (e.g. ``"state"``).
        batch_size: the expected leading dimension.
        device: where the tensor goes.
        dtype: floating dtype of the result.
        normalize_images: scale batches from uint8 image Boxes to [0, 1].

    Raises:
        ValueError: wrong shape, NaN/inf, or values outside a discrete space.
        NotImplementedError: an unsupported space.
    """
    x = _as_array(x, name)
    if isinstance(space, (spaces.Box, spaces.MultiBinary)):
        expected: tuple[int, ...] = (batch_size, *space.shape)
    elif isinstance(space, spaces.Discrete):
        # (B, 1) as well: imitation (through stable-baselines3's preprocess_obs) takes
        # the trailing axis some rollouts and buffers keep.
        expected = (batch_size, 1) if tuple(x.shape) == (batch_size, 1) else (batch_size,)
    elif isinstance(space, spaces.MultiDiscrete):
        expected = (batch_size, *space.nvec.shape)
    else:
        check_supported(space, name)
    if x.shape != expected:  # a torch.Size compares equal to the tuple
        also = f" (or {(batch_size, 1)})" if isinstance(space, spaces.Discrete) else ""
        raise ValueError(
            f"{name}: expected shape {expected}{also} for a batch of {batch_size} from "
            f"{space}, got {tuple(x.shape)}"
        )
    if not all_finite(x):
        raise _non_finite(name, x)
    if isinstance(space, (spaces.Discrete, spaces.MultiDiscrete)):
        return _one_hot(x, space, name=name, device=device, dtype=dtype)
    t = _to_tensor(x, device)
    if isinstance(space, spaces.MultiBinary) and not bool(((t == 0) | (t == 1)).all()):
        bad = t[(t != 0) & (t != 1)][0].item()
        raise ValueError(f"{name}: expected values 0 or 1 for {space}, got {bad}")
    # The space decides, not the batch's dtype: image data that arrives as float or
    # int (a dataset column, a frame stack) is scaled alike, as stable-baselines3 does.
    if normalize_images and is_image_space(space):
        t = t.to(dtype) / 255.0
    elif t.dtype != dtype:
        t = t.to(dtype)
    # Finite before the cast is not enough: 1e300 is finite in float64, inf in float32.
    # Only a narrowing cast can overflow, so only then is the result checked again.
    if _narrows(x, dtype) and not all_finite(t):
        raise _non_finite(name, t, overflow=True)
    return t


_NARROWS: dict[tuple[Any, th.dtype], bool] = {}


def _narrows(x: np.ndarray | th.Tensor, dtype: th.dtype) -> bool:
    """Whether casting ``x`` to ``dtype`` can turn finite values into inf (cached)."""
    key = (x.dtype, dtype)
    narrows = _NARROWS.get(key)
    if narrows is None:
        if not dtype.is_floating_point:
            narrows = False
        elif isinstance(x, th.Tensor):
            narrows = x.is_floating_point() and th.finfo(x.dtype).max > th.finfo(dtype).max
        elif x.dtype.kind in "iu":
            narrows = float(np.iinfo(x.dtype).max) > th.finfo(dtype).max
        else:
            narrows = x.dtype.kind == "f" and float(np.finfo(x.dtype).max) > th.finfo(dtype).max
        _NARROWS[key] = narrows
    return narrows


def _non_finite(name: str, x: np.ndarray | th.Tensor, overflow: bool = False) -> ValueError:
    """The error for a batch with NaN/inf rows; ``overflow``: finite before the cast."""
    what = f"values that overflow {x.dtype}, the net's dtype," if overflow else "NaN or inf"
    return ValueError(
        f"{name}: expected finite values, got {what} at rows "
        f"{format_rows(non_finite_rows(x))} of {x.shape[0]}"
    )


def _to_tensor(x: Any, device: th.device) -> th.Tensor:
    """Zero-copy for writable native numpy arrays headed to the CPU (a hot path).

    Read-only arrays (Arrow/Ray Data buffers) and non-native byte orders are copied:
    torch cannot wrap the latter, and warns on (and may write through) the former.
    """
    if isinstance(x, np.ndarray):
        if not (x.flags.writeable and x.dtype.isnative):
            x = x.astype(x.dtype.newbyteorder("="))
        t = th.from_numpy(x)
        return t if device.type == "cpu" else t.to(device)
    t = th.as_tensor(x)
    return t if t.device == device else t.to(device)


def _one_hot(
    x: Any, space: spaces.Space, *, name: str, device: th.device, dtype: th.dtype
) -> th.Tensor:
    t = _to_tensor(x, device)
    _check_integral(t, name, space)
    if isinstance(space, spaces.Discrete):
        nvec = th.tensor([int(space.n)], device=device)
        start = th.tensor([int(space.start)], device=device)
    else:
        nvec = th.as_tensor(space.nvec.reshape(-1), device=device)
        start = th.as_tensor(space.start.reshape(-1), device=device)
    rel = t.reshape(t.shape[0], -1).long() - start
    bad = (rel < 0) | (rel >= nvec)
    if bool(bad.any()):
        row = int(bad.any(1).nonzero()[0, 0])
        raise ValueError(
            f"{name}: expected values within {space}, got {x[row].tolist()} at row {row}"
        )
    return th.cat(
        [th.nn.functional.one_hot(rel[:, i], int(n)) for i, n in enumerate(nvec.tolist())],
        dim=1,
    ).to(dtype)
