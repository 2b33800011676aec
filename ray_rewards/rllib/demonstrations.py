"""Expert demonstrations for adversarial reward learning, and drawing minibatches of them.

:func:`~ray_rewards.rllib.with_adversarial_reward` takes demonstrations as

- a Parquet file or folder (local path or URI) in RLlib's transition columns
  (``obs``, ``actions``, ``new_obs``, ``terminateds``; RLlib's packed columns too,
  e.g. its own offline output or ``ray-rewards record``'s);
- a ``ray.data.Dataset`` with those columns;
- in-memory arrays: a mapping with those keys, or imitation's ``Transitions``
  (``obs``, ``acts``, ``next_obs``, ``dones``).

Actions are in the env's units. Everything is checked against the discriminator's
spaces on the driver, before anything runs.

How the data reaches the learners. A Parquet source travels as its path: each
learner reads only its own share of the row groups (learner ``r`` of ``n`` takes
groups ``r, r + n, ...``), a window of ``buffer_rows`` rows at a time, and moves
the window on as it draws rows, so no process ever holds the whole set.
Datasets and arrays are small by nature here (a Dataset is collected on the
driver, up to :data:`MAX_COLLECTED_BYTES`; write a larger one to Parquet and pass
the path) and travel as arrays inside the config, one copy per learner.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ray_rewards import preprocessing, storage
from ray_rewards.data.columns import (
    ACTIONS,
    NEXT_OBS,
    OBS,
    TERMINATEDS,
    check_schema,
    table_transitions,
    transition_arrays,
)
from ray_rewards.reward_nets import RewardNet

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
"""``(obs, actions, new_obs, terminateds)``, one row per transition."""

MAX_COLLECTED_BYTES = 1 << 30
"""A ``ray.data.Dataset`` of demonstrations larger than this is refused (pass Parquet)."""

_IMITATION_KEYS = {"obs": OBS, "acts": ACTIONS, "next_obs": NEXT_OBS, "dones": TERMINATEDS}


class Demonstrations:
    """Checked expert transitions: arrays, or the Parquet files each learner reads a
    share of. Build with :meth:`from_source`; learners draw with :meth:`sampler`.
    """

    def __init__(self, arrays: Arrays | None, files: list[str], uri: str | None, num_rows: int):
        self.arrays = arrays
        self.files = files
        self.uri = uri
        self.num_rows = num_rows

    @classmethod
    def from_source(cls, source: Any, net: RewardNet) -> Demonstrations:
        """Read (arrays, Dataset) or inspect (Parquet) ``source`` and check it against
        ``net``'s spaces. ValueError names what does not fit; an empty source is refused.
        """
        import ray.data

        if isinstance(source, (str, os.PathLike)):
            return cls._from_parquet(os.fspath(source), net)
        if isinstance(source, ray.data.Dataset):
            size = source.size_bytes()
            if size > MAX_COLLECTED_BYTES:
                raise ValueError(
                    f"demonstrations: a Dataset of {size / 2**20:.0f} MiB; Datasets are "
                    f"collected on the driver up to {MAX_COLLECTED_BYTES / 2**20:.0f} MiB. "
                    "Write it with ds.write_parquet(path) and pass the path: learners then "
                    "each read a share of it"
                )
            tables = list(source.iter_batches(batch_size=None, batch_format="pyarrow"))
            parts = [table_transitions(t, net) for t in tables if t.num_rows]
            if not parts:
                raise ValueError("demonstrations: the Dataset holds no rows")
            return cls._from_arrays(
                tuple(np.concatenate([p[i] for p in parts]) for i in range(4)), net
            )
        if not isinstance(source, Mapping) and all(
            hasattr(source, k) for k in _IMITATION_KEYS
        ):  # imitation's Transitions
            source = {k: getattr(source, k) for k in _IMITATION_KEYS}
        if isinstance(source, Mapping):
            columns = {_IMITATION_KEYS.get(k, k): v for k, v in source.items()}
            return cls._from_arrays(transition_arrays(columns, net), net)
        raise TypeError(
            "demonstrations: expected a Parquet path or URI, a ray.data.Dataset, a mapping "
            f"of arrays (obs, actions, new_obs, terminateds) or imitation's Transitions, "
            f"got {type(source).__name__}"
        )

    @classmethod
    def _from_arrays(cls, arrays: Arrays, net: RewardNet) -> Demonstrations:
        arrays = tuple(np.ascontiguousarray(a) for a in arrays)
        if not len(arrays[0]):
            raise ValueError("demonstrations: no transitions")
        lengths = {len(a) for a in arrays}
        if len(lengths) > 1:
            raise ValueError(f"demonstrations: columns of different lengths {sorted(lengths)}")
        _check_rows(arrays, net, "demonstrations")
        return cls(arrays, [], None, len(arrays[0]))

    @classmethod
    def _from_parquet(cls, path: str, net: RewardNet) -> Demonstrations:
        fs, files = storage.parquet_files(path, "demonstrations")
        num_rows = 0
        for name in files:
            with fs.open_input_file(name) as f:
                parquet = pq.ParquetFile(f)
                schema = parquet.schema_arrow
                check_schema(schema.names, list(schema.types), net)
                num_rows += parquet.metadata.num_rows
                if parquet.metadata.num_rows and num_rows == parquet.metadata.num_rows:
                    first = pa.Table.from_batches([next(parquet.iter_batches(batch_size=8))])
                    _check_rows(table_transitions(first, net), net, f"demonstrations {path}")
        if not num_rows:
            raise ValueError(f"demonstrations {path}: no transitions (no Parquet rows found)")
        uri = None if isinstance(fs, pafs.LocalFileSystem) else storage.absolute(path)
        return cls(None, files, uri, num_rows)

    def sampler(self, rank: int, world: int, seed: int, buffer_rows: int) -> DemonstrationSampler:
        """Where learner ``rank`` of ``world`` draws its expert minibatches from."""
        return DemonstrationSampler(self, rank, world, seed, buffer_rows)


def _check_rows(arrays: Arrays, net: RewardNet, what: str) -> None:
    """ValueError unless the rows fit the net (its preprocessing checks values and
    spaces) and hold finite numbers (naming the rows).
    """
    for name, arr in zip(("obs", "actions", "new_obs"), arrays[:3]):
        if arr.dtype.kind in "fc":
            bad = preprocessing.non_finite_rows(arr)
            if bad:
                raise ValueError(
                    f"{what}: column {name!r} holds NaN or inf at rows "
                    f"{preprocessing.format_rows(bad)} of {len(arr)}"
                )
    try:
        net.preprocess(*(a[:256] for a in arrays))
    except ValueError as err:
        raise ValueError(f"{what} do not fit the reward net: {err}") from err


class DemonstrationSampler:
    """One learner's uniform draws from its share of the demonstrations.

    Arrays: draws from all rows. Parquet: from a window of at least ``buffer_rows``
    rows of whole row groups; after as many rows as the window holds have been
    drawn, its oldest group makes room for the next one of this learner's share.
    """

    def __init__(self, demos: Demonstrations, rank: int, world: int, seed: int, buffer_rows: int):
        self.rng = np.random.default_rng([seed, rank])
        self.window: list[Arrays] = []
        self.rows: Arrays | None = demos.arrays
        self.drawn = 0
        self.groups: list[tuple[str, int]] = []
        if demos.arrays is None:
            fs, _ = storage.resolve(demos.uri) if demos.uri else (None, "")
            self.fs = fs or pafs.LocalFileSystem()
            groups = []
            for name in demos.files:
                with self.fs.open_input_file(name) as f:
                    groups += [(name, g) for g in range(pq.ParquetFile(f).num_row_groups)]
            mine = groups[rank::world] if len(groups) >= world else groups
            self.groups = [mine[i] for i in self.rng.permutation(len(mine))]
            self.next_group = 0
            self.buffer_rows = buffer_rows
            while len(self.window) < len(self.groups) and self._window_rows() < buffer_rows:
                self._load_group()
            self._join()

    def _window_rows(self) -> int:
        return sum(len(part[0]) for part in self.window)

    def _load_group(self) -> None:
        name, group = self.groups[self.next_group % len(self.groups)]
        self.next_group += 1
        with self.fs.open_input_file(name) as f:
            table = pq.ParquetFile(f).read_row_group(group)
        self.window.append(table_transitions(table, None))

    def _join(self) -> None:
        self.rows = tuple(np.concatenate([p[i] for p in self.window]) for i in range(4))
        self.drawn = 0

    def sample(self, n: int) -> Arrays:
        """``n`` transitions drawn uniformly (with replacement) from the current rows."""
        assert self.rows is not None
        idx = self.rng.integers(0, len(self.rows[0]), n)
        out = tuple(a[idx] for a in self.rows)
        self.drawn += n
        if len(self.window) < len(self.groups) and self.drawn >= len(self.rows[0]):
            self.window.pop(0)
            self._load_group()
            self._join()
        return out


__all__ = ["Demonstrations", "DemonstrationSampler"]
