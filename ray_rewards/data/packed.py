"""RLlib's packed observation columns, decoded without running code from the data.

``config.offline_data(output=..., output_write_episodes=False)`` writes one row
per transition. By default (``output_compress_columns=["obs", "new_obs"]``)
observations are stored as base64 strings of LZ4-compressed pickles of numpy
arrays. The packed form is a pickle, and a data file must not be able to run
code, so it is unpickled with an allowlist of exactly the numpy globals an array
or scalar needs (anything else is refused, naming it).
"""

from __future__ import annotations

import base64
import io
import pickle
from typing import Any

import numpy as np


class UnsafeDataError(pickle.UnpicklingError):
    """A packed column asked to unpickle something other than a numpy array."""


# What pickles of numpy arrays and scalars import (numpy 1.x and 2.x names).
_NUMPY_GLOBALS = frozenset(
    (module, name)
    for core in ("numpy.core", "numpy._core")
    for module, name in (
        (f"{core}.numeric", "_frombuffer"),
        (f"{core}.multiarray", "_reconstruct"),
        (f"{core}.multiarray", "scalar"),
    )
) | {("numpy", "ndarray"), ("numpy", "dtype")}


class _NumpyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _NUMPY_GLOBALS:
            raise UnsafeDataError(
                f"refused to unpickle {module}.{name} from a packed data column: only numpy "
                "arrays are read from data files (nothing from the file was run)"
            )
        return super().find_class(module, name)


def unpack_array(packed: str | bytes) -> np.ndarray:
    """Decode one value of RLlib's packed columns (``ray.rllib.utils.compression.pack``:
    base64 of LZ4 of a pickled array) without running code from the data.
    """
    import lz4.frame

    try:
        raw = lz4.frame.decompress(base64.b64decode(packed, validate=True))
    except (ValueError, RuntimeError) as err:  # binascii.Error is a ValueError
        raise ValueError(
            "expected RLlib's packed arrays (base64 of LZ4-compressed numpy pickles) or "
            f"numeric values, got strings that are neither: {str(packed)[:40]!r}"
        ) from err
    return np.asarray(_NumpyUnpickler(io.BytesIO(raw)).load())


__all__ = ["UnsafeDataError", "unpack_array"]
