"""File helpers shared by the queue folder, the store and the labeling page: names
that sort by time, Parquet tables to and from bytes, listing a local folder or URI prefix.
"""

from __future__ import annotations

import io
import os
import time
import uuid
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ray_rewards import storage


def join(root: str, *parts: str) -> str:
    """``root/parts...`` for a local path or a URI."""
    if storage.is_uri(root):
        return "/".join([root.rstrip("/"), *parts])
    return os.path.join(root, *parts)


def new_name(prefix: str = "") -> str:
    """A Parquet file name that sorts by creation time and never collides."""
    return f"{prefix}{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"


def write_table(path: str, table: pa.Table) -> None:
    """Write ``table`` as one Parquet file at ``path`` (local or URI), atomically."""
    sink = io.BytesIO()
    pq.write_table(table, sink)
    storage.write_bytes(path, sink.getvalue())


def list_parquet(folder: str) -> dict[str, tuple[Any, str]]:
    """``{file name: (filesystem, path)}`` of the Parquet files under ``folder``, sorted
    by name; empty when the folder does not exist.
    """
    try:
        fs, paths = storage.parquet_files(folder)
    except FileNotFoundError:
        return {}
    return {p.rsplit("/", 1)[-1]: (fs, p) for p in paths}


def read_table(where: tuple[Any, str], columns: Sequence[str] | None = None) -> pa.Table:
    """The table (or ``columns`` of it) of a file listed by :func:`list_parquet`."""
    fs, path = where
    with fs.open_input_file(path) as f:
        return pq.read_table(f, columns=list(columns) if columns else None)
