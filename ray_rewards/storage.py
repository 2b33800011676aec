"""Where files live and how they are written: local paths and URIs, atomically.

Every module that reads or writes a saved net, a job result or a data set goes
through here, so one rule decides what a URI is (``scheme://...``, anything
``pyarrow.fs.FileSystem.from_uri`` understands), and one implementation writes
"to a temporary name, then rename": a crash never leaves a partial file or a
half-written data set under the final name.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator

import pyarrow.fs as pafs

NET_FILE = "reward_net.pt"
"""The file name of a saved reward net inside a checkpoint or a job's output folder."""

PathLike = str | os.PathLike


def is_uri(path: PathLike) -> bool:
    """Whether ``path`` names a remote (or ``file://``) location rather than a local path."""
    return "://" in os.fspath(path)


def absolute(path: PathLike) -> str:
    """An absolute local path (another process may run elsewhere); URIs as they are."""
    path = os.fspath(path)
    return path if is_uri(path) else os.path.abspath(path)


def resolve(
    path: PathLike, filesystem: pafs.FileSystem | None = None
) -> tuple[pafs.FileSystem | None, str]:
    """``(None, local path)`` for local files, else ``(filesystem, path within it)``."""
    path = os.fspath(path)
    if filesystem is None:
        if not is_uri(path):
            return None, path
        filesystem, path = pafs.FileSystem.from_uri(path)
    if isinstance(filesystem, pafs.LocalFileSystem):
        return None, path
    return filesystem, path


def parquet_files(path: PathLike, what: str = "input") -> tuple[pafs.FileSystem, list[str]]:
    """The filesystem and sorted Parquet files of ``path`` (a file, or a folder searched
    recursively; local or URI). FileNotFoundError names ``what`` when nothing is there.
    """
    fs, root = resolve(absolute(path))
    fs = fs or pafs.LocalFileSystem()
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"{what} {os.fspath(path)}: no such file or directory")
    if info.type != pafs.FileType.Directory:
        return fs, [root]
    found = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    return fs, sorted(f.path for f in found if f.is_file and f.path.endswith(".parquet"))


def _fsync_dir(directory: str) -> None:
    # Makes a rename durable. Best effort: some filesystems cannot fsync a directory,
    # and the file is complete under its name either way.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_local(path: str, data: bytes) -> None:
    path = os.path.abspath(path)
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
    # os.open with 0o666 lets the umask decide the final file's mode, as open() would.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)


def _write_remote(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    # Object stores publish an object only when its upload completes; writing a temp
    # name first and moving it keeps a failed upload from touching the final name.
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    if parent:
        fs.create_dir(parent, recursive=True)
    tmp = f"{path}.{uuid.uuid4().hex}.tmp"
    try:
        with fs.open_output_stream(tmp) as out:
            out.write(data)
        try:
            fs.move(tmp, path)
        except NotImplementedError:
            fs.copy_file(tmp, path)
            fs.delete_file(tmp)
    except BaseException:
        if fs.get_file_info(tmp).type != pafs.FileType.NotFound:
            fs.delete_file(tmp)
        raise


def write_bytes(path: PathLike, data: bytes, *, filesystem: pafs.FileSystem | None = None) -> None:
    """Write ``data`` to a local path or URI atomically; parent directories are created.

    A local file goes to a temporary name in the same directory, is fsync'ed and
    renamed over ``path``; a remote one is uploaded under a temporary name and moved.
    """
    fs, fs_path = resolve(path, filesystem)
    if fs is None:
        _write_local(fs_path, data)
    else:
        _write_remote(fs, fs_path, data)


def read_bytes(
    path: PathLike, *, filesystem: pafs.FileSystem | None = None, what: str = "file"
) -> bytes:
    """The whole content of a local file or URI.

    Raises FileNotFoundError (IsADirectoryError for a local folder) saying there is
    no ``what`` at ``path``.
    """
    fs, fs_path = resolve(path, filesystem)
    if fs is None:
        if os.path.isdir(fs_path):
            raise IsADirectoryError(f"no {what} at {fs_path}: it is a directory")
        try:
            with open(fs_path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise FileNotFoundError(f"no {what} at {fs_path}: no such file") from None
    if fs.get_file_info(fs_path).type != pafs.FileType.File:
        raise FileNotFoundError(f"no {what} at {os.fspath(path)}: no such file")
    with fs.open_input_stream(fs_path) as f:
        return f.read()


@contextlib.contextmanager
def publish_dir(path: PathLike, *, overwrite: bool = False) -> Iterator[str]:
    """Build a local folder under a temporary name, then rename it to ``path``.

    Yields the temporary folder (a hidden sibling of ``path``, so the rename stays on
    one filesystem). On success it replaces ``path`` (an existing one only with
    ``overwrite``); on any error it is removed and ``path`` is untouched. Temporary
    folders left by an earlier publish of ``path`` whose process was killed are
    removed first.

    Raises:
        FileExistsError: ``path`` exists (a non-empty folder or a file) and not
            ``overwrite``.
    """
    path = os.path.abspath(os.fspath(path))
    if not overwrite and os.path.exists(path) and not _empty_dir(path):
        raise FileExistsError(f"{path} already exists; choose a new path")
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    _remove_stale(parent, os.path.basename(path))
    tmp = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(path)}.tmp-{os.getpid()}-")
    try:
        yield tmp
        if os.path.exists(path):
            old = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(path)}.old-")
            os.replace(path, os.path.join(old, "data"))
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
        _fsync_dir(parent)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


def _remove_stale(parent: str, name: str) -> None:
    """Remove temporary folders of earlier publishes of ``name`` whose process is gone
    (killed with SIGKILL, nothing of ours ran to clean up). Folders of a live process
    (a concurrent publish) are left alone.
    """
    prefix = f".{name}.tmp-"
    for entry in os.listdir(parent):
        if not entry.startswith(prefix):
            continue
        pid = entry[len(prefix) :].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _empty_dir(path: str) -> bool:
    return os.path.isdir(path) and not os.listdir(path)


__all__ = [
    "NET_FILE",
    "PathLike",
    "absolute",
    "is_uri",
    "publish_dir",
    "read_bytes",
    "resolve",
    "write_bytes",
]
