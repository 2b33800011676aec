"""`ray-rewards` killed with SIGKILL leaves no process and, after the next run, no file."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import make_net, random_transitions

from ray_rewards import serialize
from ray_rewards._supervise import descendants

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="supervision is Linux-only"),
]


def ray_rewards_command() -> str:
    return shutil.which("ray-rewards") or pytest.skip("the ray-rewards script is not installed")


def test_sigkill_on_relabel_leaves_no_process_and_no_temp_folder(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "in").mkdir()
    for i in range(4):
        cols = random_transitions(rng, 200_000)
        table = pa.table({k: list(v) if v.ndim > 1 else v for k, v in cols.items()})
        pq.write_table(table, tmp_path / "in" / f"part-{i}.parquet")
    serialize.save(make_net(), tmp_path / "net.pt")
    command = [ray_rewards_command(), "relabel", str(tmp_path / "in"), str(tmp_path / "out")]
    command += ["--reward", str(tmp_path / "net.pt")]

    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while len(descendants(proc.pid)) < 8:  # Ray is up: GCS, raylet, agents, workers
        assert proc.poll() is None and time.monotonic() < deadline, "Ray never started"
        time.sleep(0.2)
    time.sleep(3)
    tree = descendants(proc.pid)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(10)
    alive = [p for p in tree if os.path.exists(f"/proc/{p}")]
    assert alive == [], [open(f"/proc/{p}/cmdline").read() for p in alive]

    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(os.listdir(tmp_path)) == ["in", "net.pt", "out"]
