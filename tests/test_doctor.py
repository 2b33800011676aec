"""``ray-rewards doctor``, run as users run it: the command in a subprocess, against this
machine's real environment and a real local Ray cluster of its own.

The cluster (``ray start --head`` on 127.0.0.1, its own ports, temp dir and auth token)
is separate from the session's ``ray_session`` runtime; only its processes (found by
an environment marker) are stopped afterwards.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

import pytest

from ray_rewards import doctor

CLI = os.path.join(os.path.dirname(sys.executable), "ray-rewards")
MARKER = "RAY_REWARDS_DOCTOR_TEST_CLUSTER"
AUTH_VARS = ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in AUTH_VARS}
    return {**env, "RAY_USAGE_STATS_ENABLED": "0", **extra}


def run_doctor(
    *args: str, prelude: str = "", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """The doctor command in a fresh interpreter; ``prelude`` runs first in it."""
    code = f"import sys\n{prelude}\nfrom ray_rewards.cli import main\nmain(sys.argv[1:])"
    argv = [sys.executable, "-c", code, "doctor", *args]
    return subprocess.run(argv, capture_output=True, text=True, env=env or _env(), timeout=240)


def lines(run: subprocess.CompletedProcess, status: str) -> list[str]:
    return [ln for ln in run.stdout.splitlines() if ln.startswith(f"{status} ")]


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


# --- This process alone -------------------------------------------------------------------


def test_healthy_local_run_exits_0(tmp_path):
    storage = tmp_path / "results" / "run-1"
    run = subprocess.run(
        [CLI, "doctor", "--job", "pipeline", "--storage", str(storage)],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=240,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert lines(run, "FAIL") == []
    for what in ("python", "ray_rewards", "ray", "dependencies", "torch build", "storage"):
        assert any(ln.startswith(f"ok    {what}: ") for ln in run.stdout.splitlines()), what
    assert "ok    ray cluster: none given" in run.stdout
    assert not (tmp_path / "results").exists()  # the probe file and its folders are gone


def test_missing_pillow_is_reported_with_its_fix():
    # Real import machinery: a None entry in sys.modules makes `import PIL` fail.
    run = run_doctor("--job", "rllib", prelude="sys.modules['PIL'] = None")
    [pillow] = [ln for ln in run.stdout.splitlines() if " Pillow: " in ln]
    assert pillow.startswith("warn  Pillow: not importable (import of PIL halted")
    assert "DreamerV3" in pillow and pillow.endswith("fix: pip install pillow")
    # RLlib trains PPO (what the jobs run) without Pillow: a warning, not a FAIL.
    assert run.returncode == 0, run.stdout + run.stderr

    relabel = run_doctor("--job", "relabel", prelude="sys.modules['PIL'] = None")
    assert " Pillow: " not in relabel.stdout  # relabeling never imports it
    assert relabel.returncode == 0, relabel.stdout + relabel.stderr


def _unwritable(tmp_path, how: str) -> str:
    if how == "under a file":
        (tmp_path / "a-file").write_text("not a folder")
        return str(tmp_path / "a-file" / "storage")
    if os.geteuid() == 0:
        pytest.skip("root writes into a chmod 0o500 folder anyway")
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o500)
    return str(folder / "storage")


@pytest.mark.parametrize("how", ["under a file", "read-only folder"])
def test_unwritable_storage_fails_with_its_fix(tmp_path, how):
    path = _unwritable(tmp_path, how)
    try:
        run = run_doctor("--job", "train", "--storage", path)
    finally:
        if (tmp_path / "read-only").exists():
            (tmp_path / "read-only").chmod(0o700)  # for pytest to remove it
    assert run.returncode == 1, run.stdout + run.stderr
    [storage] = lines(run, "FAIL")
    assert storage.startswith(f"FAIL  storage: cannot write to {path}: ")
    if how == "under a file":
        assert "fix: part of" in storage and "is a file, not a folder" in storage
    else:
        assert f"fix: sudo chown -R {os.getuid()}:{os.getgid()} {tmp_path / 'read-only'}" in storage
    assert "1 FAIL finding(s)" in run.stderr


def test_storage_holding_a_finished_job_fails(tmp_path):
    (tmp_path / "results.json").write_text("{}")
    run = run_doctor("--job", "relabel", "--storage", str(tmp_path))
    assert run.returncode == 1, run.stdout + run.stderr
    [failure] = lines(run, "FAIL")
    assert failure.startswith(f"FAIL  storage results: {tmp_path} holds a finished job's")
    assert failure.endswith("fix: choose a new storage_path (or pass the job --storage-path)")


def test_an_address_where_nothing_listens_fails_fast():
    [port] = _free_ports(1)
    start = time.monotonic()
    run = run_doctor("--address", f"127.0.0.1:{port}", "--timeout", "5")
    assert time.monotonic() - start < 60
    assert run.returncode == 1
    [failure] = lines(run, "FAIL")
    assert failure.startswith(f"FAIL  ray cluster: nothing answers at 127.0.0.1:{port}")
    assert "fix: start the cluster, or give its head's GCS address" in failure


def test_nvidia_smi_header_parsing():
    # nvidia-smi does not run on this machine; this is the header it prints.
    header = "| NVIDIA-SMI 550.54.15    Driver Version: 550.54.15    CUDA Version: 12.4     |\n"
    assert doctor.parse_nvidia_smi(header) == ("550.54.15", "12.4")
    assert doctor.parse_nvidia_smi("NVIDIA-SMI has failed") is None
    fix = doctor.checks._torch_fix("2.13.0+cpu", ("550.54.15", "12.4"))
    assert fix == (
        "pip install --force-reinstall 'torch==2.13.0' "
        "--index-url https://download.pytorch.org/whl/cu124"
    )


# --- A real local cluster -----------------------------------------------------------------


def _cluster_pids(marker: str) -> list[int]:
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/environ", "rb") as f:
                    if f"{MARKER}={marker}".encode() in f.read().split(b"\0"):
                        pids.append(int(name))
            except OSError:
                continue
    return pids


def _stop(marker: str) -> None:
    """SIGTERM, then SIGKILL, to this cluster's processes only."""
    for sig, wait in ((signal.SIGTERM, 2.0), (signal.SIGKILL, 5.0)):
        for pid in _cluster_pids(marker):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while _cluster_pids(marker) and time.monotonic() < deadline:
            time.sleep(0.2)


REPORT_GROUPS = """
from ray._raylet import GcsClient
from ray.core.generated import autoscaler_pb2 as pb
groups = [
    pb.NodeGroupConfig(name="gpu-workers", resources={"CPU": 1, "GPU": 1}, max_count=4),
    pb.NodeGroupConfig(
        name="cpu-workers", resources={"CPU": 8, "cpu_worker": 8}, min_count=1, max_count=6
    ),
]
config = pb.ClusterConfig(node_group_configs=groups)
GcsClient(address=sys.argv[1]).report_cluster_config(config.SerializeToString())
"""


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[str, dict[str, str]]]:
    """A one-node cluster that claims a GPU, labeled as KubeRay labels a group's nodes
    (``gpu-workers``), requiring a token; its autoscaler config (reported to Ray as an
    autoscaler reports it) also lists ``cpu-workers`` (a ``cpu_worker`` group) with no
    node. Yields its address and the environment of a client holding its token.
    """
    temp = tempfile.mkdtemp(prefix="rrdoc-", dir="/tmp")  # short: Ray's socket paths
    token = os.path.join(temp, "auth_token")
    with open(token, "w") as f:
        f.write("doctor-test-" + os.urandom(16).hex())
    client = _env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=token)
    gcs, client_port, dash, agent, agent_grpc, metrics, runtime_env = _free_ports(7)
    start = [
        sys.executable, "-m", "ray.scripts.scripts", "start", "--head",
        "--node-ip-address=127.0.0.1", f"--port={gcs}", f"--temp-dir={temp}/ray",
        "--num-cpus=1", "--num-gpus=1", "--include-dashboard=false",
        f"--ray-client-server-port={client_port}", f"--dashboard-port={dash}",
        f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
        f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={runtime_env}",
        "--disable-usage-stats",
    ]  # fmt: skip
    node_env = {
        **client,
        MARKER: temp,
        "RAY_NODE_TYPE_NAME": "gpu-workers",  # what KubeRay sets: the ray.io/node-group label
        "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",  # stop at once on SIGTERM
    }
    try:
        started = subprocess.run(start, capture_output=True, text=True, env=node_env, timeout=180)
        assert started.returncode == 0, started.stdout + started.stderr
        address = f"127.0.0.1:{gcs}"
        code = f"import sys\n{REPORT_GROUPS}"
        subprocess.run([sys.executable, "-c", code, address], env=client, check=True, timeout=60)
        yield address, client
    finally:
        _stop(temp)
        shutil.rmtree(temp, ignore_errors=True)
    assert _cluster_pids(temp) == []


def test_cpu_only_torch_on_a_node_that_claims_a_gpu(cluster, tmp_path):
    address, client = cluster
    run = run_doctor("--address", address, "--job", "train", "--storage", str(tmp_path), env=client)
    assert run.returncode == 1, run.stdout + run.stderr
    fails = lines(run, "FAIL")
    # This process runs on the node (Ray counts its GPU) and so does the group's probe.
    [here] = [ln for ln in fails if ln.startswith("FAIL  torch build: ")]
    [there] = [ln for ln in fails if ln.startswith("FAIL  group gpu-workers (") and "torch" in ln]
    for line in (here, there):
        assert "CPU-only torch 2.13.0+cpu, but this node claims GPUs (1 GPU(s) in Ray's" in line
        assert "fix: pip install --force-reinstall 'torch==2.13.0' --index-url " in line
        assert "https://download.pytorch.org/whl/cuXYZ" in line
    assert "warn  GPU driver: nvidia-smi not found" in run.stdout
    assert "ok    ray auth: the cluster requires a token; this process has one " in run.stdout
    assert any(
        ln.startswith("ok    group gpu-workers (") and "storage, shared storage" in ln
        for ln in run.stdout.splitlines()
    )
    assert os.listdir(tmp_path) == []  # every probe file deleted


def test_group_without_a_node_is_reported_and_probes_time_out(cluster):
    address, client = cluster
    start = time.monotonic()
    # 0.2 s: long enough to join, too short for a probe (a worker importing torch).
    run = run_doctor("--address", address, "--job", "rllib", "--timeout", "0.2", env=client)
    assert time.monotonic() - start < 90
    assert run.returncode == 1, run.stdout + run.stderr
    [idle] = [ln for ln in run.stdout.splitlines() if " group cpu-workers: " in ln]
    assert idle.startswith("warn  group cpu-workers: no live node (autoscaler: min 1, max 6")
    assert "fix: start a node of cpu-workers" in idle
    [late] = [ln for ln in lines(run, "FAIL") if "group gpu-workers" in ln]
    assert "its probe did not finish within 0.2 s" in late and "fix: " in late


def test_a_cluster_that_requires_a_token_refuses_a_process_without_one(cluster, tmp_path):
    address, client = cluster
    env = {**_env(), "HOME": str(tmp_path)}  # no ~/.ray/auth_token either
    run = run_doctor("--address", address, env=env)
    assert run.returncode == 1, run.stdout + run.stderr
    [auth] = lines(run, "FAIL")
    assert auth.startswith(
        "FAIL  ray auth: the cluster requires a token and refused this process: "
        "this process has none (RAY_AUTH_MODE disabled)"
    )
    assert "fix: export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=<a file holding" in auth
    with open(client["RAY_AUTH_TOKEN_PATH"]) as f:
        token = f.read()
    assert token not in run.stdout + run.stderr
