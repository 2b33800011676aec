"""Where a job's outputs go and how a job reports: paths under ``storage_path`` (local
or URI), existence checks, uploads and the driver's progress lines.
"""

from __future__ import annotations

import os
import time
from typing import Any

from ray_rewards import storage


def storage_join(storage_path: str, *names: str) -> str:
    """``names`` under a storage path (a URI keeps its scheme and ``/`` separators)."""
    if storage.is_uri(storage_path):
        return "/".join([storage_path.rstrip("/"), *names])
    return os.path.join(storage_path, *names)


def exists(path: str) -> bool:
    """Whether a local path or URI names a file or folder."""
    import pyarrow.fs as pafs

    fs, fs_path = storage.resolve(path)
    if fs is None:
        return os.path.exists(fs_path)
    return fs.get_file_info(fs_path).type != pafs.FileType.NotFound


def require_input(key: str, path: str, what: str) -> None:
    """ValueError naming the config key unless ``path`` exists (an earlier job's output,
    so it is checked when the job starts, not when its config is read).
    """
    if not exists(path):
        raise ValueError(f"{key}: {path} does not exist (expected {what})")


def upload_dir(local_dir: str, uri: str) -> None:
    """Copy a local folder's files to ``uri`` (any ``pyarrow.fs`` URI)."""
    import pyarrow.fs as pafs

    log(f"uploading {local_dir} -> {uri}")
    fs, path = storage.resolve(uri)
    fs = fs or pafs.LocalFileSystem()
    # Object stores need no folders; a filesystem (file://, hdfs://) needs the top one.
    fs.create_dir(path, recursive=True)
    pafs.copy_files(local_dir, path, destination_filesystem=fs)


def as_float(value: Any) -> float | None:
    """A metric as a float (None stays None)."""
    return None if value is None else float(value)


def log(msg: str) -> None:
    """A progress line in the job's log."""
    print(f"[ray_rewards.jobs {time.strftime('%H:%M:%S')}] {msg}", flush=True)
