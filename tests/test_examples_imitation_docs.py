"""Smoke test: the imitation-docs example runs end to end as a script."""

from __future__ import annotations

import pathlib
import subprocess
import sys

EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "examples" / "imitation_docs.py"


def test_imitation_docs_example_runs():
    proc = subprocess.run(
        [sys.executable, str(EXAMPLE), "--steps", "20"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "statistics fitted on 60 rewards" in out
    assert "update_stats=True went on fitting (60 -> 120 rewards)" in out
    assert "MyRewardNet: saved, loaded with th.load, all rewards zero" in out
    assert out.rstrip().endswith("imitation docs flow: OK")
