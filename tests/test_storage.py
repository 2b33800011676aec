from __future__ import annotations

import os

import pyarrow.fs as pafs
import pytest

from ray_rewards import storage


def test_uri_rules():
    assert storage.is_uri("s3://bucket/x") and storage.is_uri("file:///tmp/x")
    assert not storage.is_uri("relative/x")
    assert storage.absolute("s3://bucket/x") == "s3://bucket/x"
    assert storage.absolute("x") == os.path.join(os.getcwd(), "x")
    fs, path = storage.resolve("file:///tmp/x")
    assert fs is None and path == "/tmp/x"


def test_write_bytes_is_atomic_and_leaves_no_temp_file(tmp_path, monkeypatch):
    target = tmp_path / "sub" / "f.bin"
    storage.write_bytes(target, b"old")
    assert storage.read_bytes(target) == b"old"

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        storage.write_bytes(target, b"new")
    assert target.read_bytes() == b"old"
    assert os.listdir(target.parent) == ["f.bin"]


def test_write_and_read_through_a_non_local_filesystem(tmp_path):
    fs = pafs.SubTreeFileSystem(str(tmp_path), pafs.LocalFileSystem())
    storage.write_bytes("a/b.bin", b"data", filesystem=fs)
    assert (tmp_path / "a" / "b.bin").read_bytes() == b"data"
    assert storage.read_bytes("a/b.bin", filesystem=fs) == b"data"
    assert os.listdir(tmp_path / "a") == ["b.bin"]
    with pytest.raises(FileNotFoundError, match="no thing at a/c.bin"):
        storage.read_bytes("a/c.bin", filesystem=fs, what="thing")


def test_read_bytes_errors_name_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="no saved net at .*: no such file"):
        storage.read_bytes(tmp_path / "missing", what="saved net")
    with pytest.raises(IsADirectoryError, match="it is a directory"):
        storage.read_bytes(tmp_path)


def test_publish_dir_appears_whole_or_not_at_all(tmp_path):
    out = tmp_path / "out"
    with storage.publish_dir(out) as tmp:
        assert not out.exists()
        open(os.path.join(tmp, "part-0"), "w").close()
    assert os.listdir(out) == ["part-0"]
    with pytest.raises(FileExistsError, match="already exists"):
        with storage.publish_dir(out):
            pass
    with pytest.raises(RuntimeError):
        with storage.publish_dir(out, overwrite=True) as tmp:
            open(os.path.join(tmp, "part-1"), "w").close()
            raise RuntimeError("writer failed")
    assert os.listdir(out) == ["part-0"]
    with storage.publish_dir(out, overwrite=True) as tmp:
        open(os.path.join(tmp, "part-1"), "w").close()
    assert os.listdir(out) == ["part-1"]
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_publish_dir_removes_what_a_killed_run_left(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "out"
    code = (
        "import os, sys\n"
        "from ray_rewards import storage\n"
        f"with storage.publish_dir({str(out)!r}) as tmp:\n"
        "    print(tmp, flush=True)\n"
        "    os.kill(os.getpid(), 9)\n"
    )
    killed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert killed.returncode == -9
    left = killed.stdout.strip()
    assert os.path.isdir(left)
    live = tmp_path / f".out.tmp-{os.getpid()}-keep"  # a concurrent run's, still alive
    live.mkdir()
    with storage.publish_dir(out) as tmp:
        open(os.path.join(tmp, "part-0"), "w").close()
    assert not os.path.exists(left) and live.exists()
    assert sorted(os.listdir(tmp_path)) == [live.name, "out"]
