"""Gymnasium spaces as plain data, so a saved net's spaces load without unpickling code.

Spaces hold numpy arrays and random generators, which the safe loader does not
allow: :class:`~ray_rewards.reward_nets.RewardNet` pickles its spaces as plain data
(type name, tensors, ints) and rebuilds them on load. A space's sampling RNG state
is not saved (a reward net never samples).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces

_SPACES_KEY = "_ray_rewards_spaces"


def _dtype_name(dtype: Any) -> str:
    return np.dtype(dtype).name


def _numeric_dtype(name: Any, kinds: str, what: str) -> np.dtype:
    if not isinstance(name, str):
        raise TypeError(f"{what}: expected a dtype name, got {type(name).__name__}")
    dtype = np.dtype(name)
    if dtype.kind not in kinds:
        raise ValueError(f"{what}: expected a numeric dtype, got {name!r}")
    return dtype


def _array(x: Any, what: str) -> np.ndarray:
    if isinstance(x, th.Tensor):
        return x.numpy(force=True)
    raise TypeError(f"{what}: expected a tensor, got {type(x).__name__}")


def _int(x: Any, what: str) -> int:
    if isinstance(x, bool) or not isinstance(x, int):
        raise TypeError(f"{what}: expected an int, got {type(x).__name__}")
    return x


def space_to_data(space: spaces.Space) -> dict[str, Any]:
    """A gymnasium space as plain data (str/int/tuple/dict and tensors) that loads safely.

    Supports Box, Discrete, MultiDiscrete, MultiBinary, and Tuple/Dict of those.
    Raises TypeError for other spaces.
    """
    if isinstance(space, spaces.Box):
        return {
            "type": "Box",
            "low": th.from_numpy(np.array(space.low)),
            "high": th.from_numpy(np.array(space.high)),
            "dtype": _dtype_name(space.dtype),
        }
    if isinstance(space, spaces.Discrete):
        return {
            "type": "Discrete",
            "n": int(space.n),
            "start": int(space.start),
            "dtype": _dtype_name(space.dtype),
        }
    if isinstance(space, spaces.MultiDiscrete):
        return {
            "type": "MultiDiscrete",
            "nvec": th.from_numpy(np.array(space.nvec)),
            "start": th.from_numpy(np.array(space.start)),
            "dtype": _dtype_name(space.dtype),
        }
    if isinstance(space, spaces.MultiBinary):
        n = space.n
        return {"type": "MultiBinary", "n": int(n) if np.ndim(n) == 0 else tuple(map(int, n))}
    if isinstance(space, spaces.Tuple):
        return {"type": "Tuple", "spaces": tuple(space_to_data(s) for s in space.spaces)}
    if isinstance(space, spaces.Dict):
        return {"type": "Dict", "spaces": {k: space_to_data(s) for k, s in space.spaces.items()}}
    raise TypeError(
        f"cannot save {type(space).__name__} spaces; supported: Box, Discrete, MultiDiscrete, "
        "MultiBinary, Tuple, Dict"
    )


def space_from_data(data: Any) -> spaces.Space:
    """Rebuild a space from :func:`space_to_data`'s output, validating every field.

    The data comes from a file, so nothing in it is called: the space type is looked
    up in a fixed table and every field is type-checked. Raises TypeError/ValueError
    on malformed data.
    """
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        raise TypeError(f"saved space: expected a dict with a 'type' name, got {data!r:.200}")
    kind = data["type"]
    what = f"saved {kind} space"
    if kind == "Box":
        dtype = _numeric_dtype(data["dtype"], "iuf", what)
        return spaces.Box(_array(data["low"], what), _array(data["high"], what), dtype=dtype)
    if kind == "Discrete":
        dtype = _numeric_dtype(data["dtype"], "iu", what)
        return spaces.Discrete(_int(data["n"], what), start=_int(data["start"], what), dtype=dtype)
    if kind == "MultiDiscrete":
        dtype = _numeric_dtype(data["dtype"], "iu", what)
        return spaces.MultiDiscrete(
            _array(data["nvec"], what), dtype=dtype, start=_array(data["start"], what)
        )
    if kind == "MultiBinary":
        n = data["n"]
        n = tuple(_int(i, what) for i in n) if isinstance(n, tuple) else _int(n, what)
        return spaces.MultiBinary(n)
    if kind == "Tuple" and isinstance(data.get("spaces"), tuple):
        return spaces.Tuple([space_from_data(s) for s in data["spaces"]])
    if kind == "Dict" and isinstance(data.get("spaces"), dict):
        return spaces.Dict({str(k): space_from_data(s) for k, s in data["spaces"].items()})
    raise ValueError(f"saved space: unknown or malformed space type {kind!r}")


def encode_spaces(state: dict[str, Any]) -> dict[str, Any]:
    """Pickle state of a module with each gymnasium-space attribute as plain data.

    Used by ``RewardNet.__getstate__``; :func:`decode_spaces` inverts it.
    """
    encoded = {k: space_to_data(v) for k, v in state.items() if isinstance(v, spaces.Space)}
    if not encoded:
        return state
    out = {k: v for k, v in state.items() if k not in encoded}
    out[_SPACES_KEY] = encoded
    return out


def decode_spaces(state: dict[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`encode_spaces` (used by ``RewardNet.__setstate__``)."""
    if _SPACES_KEY not in state:
        return state
    out = dict(state)
    encoded = out.pop(_SPACES_KEY)
    if not isinstance(encoded, dict) or not all(isinstance(k, str) for k in encoded):
        raise TypeError(f"saved spaces: expected a dict of attribute names, got {encoded!r:.200}")
    out.update({k: space_from_data(v) for k, v in encoded.items()})
    return out
