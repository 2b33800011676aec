"""The files behind the labeling service: a queue folder as
:class:`~ray_rewards.preferences.AsyncGatherer` documents its layout (read
incrementally by :class:`QueueIndex`), the lock that keeps one server per queue, and
a Parquet set of fragment pairs with query ids made from its content.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections import Counter
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ray_rewards import storage
from ray_rewards.preferences._files import join, read_table
from ray_rewards.preferences._files import list_parquet as parquet_names
from ray_rewards.preferences.fragments import (
    LABEL_COLUMNS,
    QUERY_ID,
    Pairs,
    infer_preference_schema,
)
from ray_rewards.train import schemas

LOCK_FILE = ".label-server.lock"


def is_queue(path: str) -> bool:
    """Whether ``path`` (local or URI) is an AsyncGatherer queue folder (has ``queries/``)."""
    import pyarrow.fs as pafs

    fs, root = storage.resolve(join(storage.absolute(path), "queries"))
    fs = fs or pafs.LocalFileSystem()
    return fs.get_file_info(root).type == pafs.FileType.Directory


class QueueIndex:
    """The query ids and answers of a queue folder, read as files appear (the layout
    :class:`~ray_rewards.preferences.AsyncGatherer` documents: ``queries/*.parquet``
    with ``query_id``; ``answers/*.parquet`` with ``query_id``, ``preference``,
    ``labeler``, ``time``). The first answer to a query is its answer, as for the
    gatherer.
    """

    def __init__(self, queue_dir: str) -> None:
        self.queue_dir = queue_dir
        self.order: list[str] = []  # every query id, oldest first
        self.known: set[str] = set()
        self.answered: dict[str, float] = {}  # query id -> its first answer (NaN: skipped)
        self.labels_by: Counter[str] = Counter()  # labeler -> labels
        self.first_answers: dict[str, list[tuple[str, float]]] = {}  # answer file -> its rows
        self._queries_read: set[str] = set()

    def refresh(self) -> list[str]:
        """Read the files that appeared since the last call; the new answer files' names."""
        for name, where in parquet_names(join(self.queue_dir, "queries")).items():
            if name not in self._queries_read:
                ids = [str(q) for q in read_table(where, [QUERY_ID]).column(QUERY_ID).to_pylist()]
                self.order.extend(q for q in ids if q not in self.known)
                self.known.update(ids)
                self._queries_read.add(name)
        new = []
        for name, where in parquet_names(join(self.queue_dir, "answers")).items():
            if name in self.first_answers:
                continue
            table = read_table(where).to_pydict()
            first = []
            labelers = table.get("labeler") or [""] * len(table[QUERY_ID])
            for qid, pref, who in zip(table[QUERY_ID], table["preference"], labelers):
                qid, pref = str(qid), math.nan if pref is None else float(pref)
                if qid in self.answered:
                    continue
                self.answered[qid] = pref
                first.append((qid, pref))
                if pref == pref:
                    self.labels_by[str(who)] += 1
            self.first_answers[name] = first
            new.append(name)
        return new

    def pending(self) -> list[str]:
        """Ids of the queries without an answer, oldest first."""
        return [q for q in self.order if q not in self.answered]

    @property
    def num_labels(self) -> int:
        """Answered queries with a label (skips left out)."""
        return sum(1 for p in self.answered.values() if p == p)


def lock_queue(queue_dir: str) -> Any:
    """Hold ``<queue_dir>/.label-server.lock`` (local folders) for this process's life,
    or raise ValueError naming the process that holds it.
    """
    if storage.is_uri(queue_dir):
        return None
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        return None
    os.makedirs(queue_dir, exist_ok=True)
    f = open(os.path.join(queue_dir, LOCK_FILE), "a+")  # held until close()
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise ValueError(
            f"{queue_dir} is served already (by {holder}); one labeling server per queue, "
            "or their leases would clash"
        ) from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()}\n")
    f.flush()
    return f


def read_pairs(source: str) -> tuple[Pairs, pa.Schema]:
    """The fragment columns of a Parquet set of pairs and the preference schema of its
    files (their own field types; inferred when a column is not there as expected).
    """
    try:
        columns = schemas.read_numpy(source, LABEL_COLUMNS)
    except FileNotFoundError:
        raise FileNotFoundError(f"SOURCE {source}: no such file or directory") from None
    except ValueError as err:
        raise ValueError(
            f"SOURCE {source} is neither a queue folder (no queries/ in it) nor a Parquet "
            f"set of fragment pairs: {err}"
        ) from None
    pairs = {c: columns[c] for c in LABEL_COLUMNS}
    fs, files = storage.parquet_files(source)
    with fs.open_input_file(files[0]) as f:
        file_schema = pq.read_schema(f)
    inferred = infer_preference_schema(pairs)
    try:
        fields = [file_schema.field(c) for c in schemas.PREFERENCE_COLUMNS]
        schema = pa.schema(fields, metadata=file_schema.metadata)
    except KeyError:  # no preference column: the shapes and dtypes of the arrays
        schema = inferred
    if not schema.equals(inferred, check_metadata=False):
        schema = inferred
    return pairs, schema


def content_ids(pairs: Pairs) -> np.ndarray:
    """Query ids ``<digest>-<row>``, the digest of the pairs' content: the same data
    gets the same ids in every run, wherever its files are.
    """
    digest = hashlib.sha256()
    for name in LABEL_COLUMNS:
        arr = np.ascontiguousarray(pairs[name])
        digest.update(f"{name}{arr.shape}{arr.dtype.str}".encode())
        digest.update(arr.tobytes())
    prefix = digest.hexdigest()[:16]
    return np.array([f"{prefix}-{i:06d}" for i in range(len(pairs["obs_1"]))], dtype=object)


__all__ = ["LOCK_FILE", "QueueIndex", "content_ids", "is_queue", "lock_queue", "read_pairs"]
