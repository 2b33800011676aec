"""Jobs on a real two-node Ray cluster on this machine, through cluster/local/ and
``ray job submit``, exactly as a user runs them.

The clusters are separate Ray instances (own ports, temp dir and auth token), so
this test never touches the session's ``ray_session`` runtime or anyone else's Ray.
They need Ray's dashboard/job server (``pip install 'ray_rewards[cluster]'``); set
RAY_REWARDS_CLUSTER_PYTHON to run the cluster with another interpreter that has it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import gymnasium as gym
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from ray_rewards import networks, reward_nets, serialize
from ray_rewards.train import schemas
from ray_rewards.util import make_gym_vec_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOCAL = os.path.join(ROOT, "cluster", "local")
CLUSTER_PYTHON = os.environ.get("RAY_REWARDS_CLUSTER_PYTHON", sys.executable)
MARKER = "RAY_REWARDS_LOCAL_CLUSTER"


def _has_job_server(python: str) -> bool:
    check = [python, "-c", "import aiohttp, ray.dashboard.modules.job.job_head"]
    return subprocess.run(check, capture_output=True).returncode == 0


pytestmark = pytest.mark.skipif(
    not _has_job_server(CLUSTER_PYTHON),
    reason=f"{CLUSTER_PYTHON} lacks Ray's dashboard/job server, which `ray job submit` "
    "needs: pip install 'ray_rewards[cluster]' (or set RAY_REWARDS_CLUSTER_PYTHON)",
)


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHON": CLUSTER_PYTHON}
    for name in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        env.pop(name, None)
    return env


def _run(argv: list[str], timeout: float) -> subprocess.CompletedProcess:
    """Run a script in its own process group; on a time-out kill the whole group."""
    proc = subprocess.Popen(
        argv,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"{argv} timed out after {timeout}s:\n{out[-5000:]}")
    return subprocess.CompletedProcess(argv, proc.returncode, out)


def _cluster_processes(cluster_dir: str) -> list[int]:
    """PIDs of the processes of the cluster in ``cluster_dir`` (by their env marker)."""
    marker = f"{MARKER}={cluster_dir}".encode()
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                if marker in f.read().split(b"\0"):
                    pids.append(int(name))
        except OSError:
            continue
    return pids


@contextlib.contextmanager
def local_cluster(cluster_dir: str) -> Iterator[None]:
    """start.sh, the body, stop.sh; then check that no process of the cluster is left."""
    os.makedirs(cluster_dir, exist_ok=True)
    started = _run([os.path.join(LOCAL, "start.sh"), cluster_dir], timeout=300)
    try:
        assert started.returncode == 0, started.stdout
        assert len(_cluster_processes(cluster_dir)) >= 4  # 2 x (ray start, raylet), GCS...
        yield
    finally:
        stopped = _run([os.path.join(LOCAL, "stop.sh"), cluster_dir], timeout=180)
        assert stopped.returncode == 0, stopped.stdout
        assert _cluster_processes(cluster_dir) == []


def _submit(cluster_dir: str, job: str, config: str, timeout: float) -> subprocess.CompletedProcess:
    return _run([os.path.join(LOCAL, "submit.sh"), cluster_dir, job, config], timeout=timeout)


def _nodes(results: dict) -> tuple[str, str]:
    """(head node id, worker node id) of a job's placement report."""
    nodes = results["placement"]["nodes"]
    assert len(nodes) == 2
    head = next(n for n, info in nodes.items() if info["head"])
    worker = next(n for n, info in nodes.items() if not info["head"])
    assert nodes[worker]["resources"]["cpu_worker"] > 0
    assert "CPU" not in nodes[head]["resources"]  # the head takes no tasks
    return head, worker


def _write_transitions(path: str, env: gym.Env, n: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    columns = {
        "obs": rng.normal(size=(n, 3)).astype(np.float32),
        "actions": rng.uniform(-2, 2, size=(n, 1)).astype(np.float32),
        "new_obs": rng.normal(size=(n, 3)).astype(np.float32),
        "terminateds": rng.random(n) < 0.1,
        "rewards": rng.normal(size=n).astype(np.float32),
    }
    schema = schemas.transitions_schema(env.observation_space, env.action_space, ["rewards"])
    table = schemas.to_table(columns, schema)
    os.makedirs(path)
    half = n // 2
    pq.write_table(table.slice(0, half), os.path.join(path, "part-0.parquet"))
    pq.write_table(table.slice(half), os.path.join(path, "part-1.parquet"))
    return columns


def _numpy(table: pa.Table) -> dict[str, np.ndarray]:
    out = {}
    for name in table.column_names:
        column = table.column(name).combine_chunks()
        tensor = isinstance(column.type, pa.FixedShapeTensorType)
        out[name] = column.to_numpy_ndarray() if tensor else column.to_numpy(zero_copy_only=False)
    return out


def test_relabel_job_on_a_two_node_cluster(tmp_path):
    """Quick variant: a real two-node cluster, a bad config and a relabel job."""
    env = gym.make("Pendulum-v1")
    net = reward_nets.NormalizedRewardNet(
        reward_nets.BasicRewardNet(env.observation_space, env.action_space, hid_sizes=(8,)),
        networks.RunningNorm,
    )
    net.normalize_output_layer.update_stats(np.array([[1.0], [3.0], [5.0]]))
    serialize.save(net, str(tmp_path / "net.pt"))
    columns = _write_transitions(str(tmp_path / "transitions"), env, 600)
    good = tmp_path / "relabel.yaml"
    good.write_text(
        yaml.safe_dump(
            {
                # A URI: results go through pyarrow's filesystems, as to s3:// or gs://.
                "storage_path": f"file://{tmp_path}/out",
                "relabel": {"input": "transitions", "reward": "net.pt", "batch_size": 128},
            }
        )
    )
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"storage_path": "out", "relabel": {"input": "x"}}))
    cluster_dir = str(tmp_path / "cluster")

    with local_cluster(cluster_dir):
        failed = _submit(cluster_dir, "relabel", str(bad), timeout=240)
        assert failed.returncode != 0
        assert "missing required keys ['reward']" in failed.stdout
        assert "FAILED" in failed.stdout
        done = _submit(cluster_dir, "relabel", str(good), timeout=400)
        assert done.returncode == 0, done.stdout[-5000:]

    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["job"] == "relabel" and results["rows"] == 600
    assert results["files"]["relabeled"] == f"file://{tmp_path}/out/relabeled"
    head, worker = _nodes(results)
    placement = results["placement"]
    assert placement["driver_node"] == head
    relabelers = {
        node: count
        for node, actors in placement["actors"].items()
        for name, count in actors.items()
        if "_RelabelBatches" in name
    }
    assert list(relabelers) == [worker]
    # The rewards are the net's, computed on the worker node, next to the original data.
    out = _numpy(pq.read_table(results["files"]["relabeled"]))
    order = np.lexsort(out["obs"].T)
    expected = net.predict_processed(
        columns["obs"],
        columns["actions"],
        columns["new_obs"],
        columns["terminateds"],
        update_stats=False,
    )
    np.testing.assert_allclose(
        out["learned_rewards"][order], expected[np.lexsort(columns["obs"].T)], rtol=1e-5
    )
    np.testing.assert_array_equal(
        out["rewards"][order], columns["rewards"][np.lexsort(columns["obs"].T)]
    )


@pytest.mark.slow
@pytest.mark.timeout(2100)
def test_every_job_on_a_two_node_cluster(tmp_path):
    """run_jobs.sh: the pipeline, then reward training and RLlib on its outputs,
    demonstrations recorded from the RLlib checkpoint, relabeled with the pipeline's
    net, offline MARWIL on the relabeled ones and GAIL on the recorded ones, each
    submitted with ``ray job submit``; work lands on both nodes and the saved nets load.
    """
    cluster_dir = str(tmp_path / "cluster")
    run = _run([os.path.join(LOCAL, "run_jobs.sh"), cluster_dir], timeout=1800)
    assert run.returncode == 0, run.stdout[-8000:]
    assert _cluster_processes(cluster_dir) == []
    assert "no process of it is left" in run.stdout
    results = {
        job: json.loads(open(os.path.join(cluster_dir, "results", job, "results.json")).read())
        for job in ("pipeline", "train", "rllib", "record", "relabel", "offline", "adversarial")
    }
    venv = make_gym_vec_env("Pendulum-v1", n_envs=2, rng=np.random.default_rng(0))
    obs, _ = venv.reset(seed=0)
    acts = venv.action_space.sample()
    next_obs, *_ = venv.step(acts)

    # Pipeline: the driver (rollouts, the in-process PPO warm-up) on the head; Ray
    # Train workers and both PPO runs on the worker node.
    pipeline = results["pipeline"]
    head, worker = _nodes(pipeline)
    placement = pipeline["placement"]
    assert placement["driver_node"] == head
    assert placement["actors"][worker]["RayTrainWorker"] == 2
    assert sum(placement["tasks"][worker].values()) >= 2  # at least the two PPO runs
    assert head not in placement["tasks"]
    summary = pipeline["summary"]
    assert 0.0 <= summary["reward_eval_accuracy"] <= 1.0
    assert np.isfinite(summary["learned_final_return"]) and np.isfinite(
        summary["true_final_return"]
    )
    reward_fn = serialize.load_reward("RewardNet_normalized", pipeline["files"]["reward_net"], venv)
    assert np.isfinite(reward_fn(obs, acts, next_obs, np.zeros(2, bool))).all()

    train = results["train"]
    assert [h["epoch"] for h in train["history"]] == [0, 1]
    assert train["placement"]["actors"][_nodes(train)[1]]["RayTrainWorker"] == 2
    trained = serialize.load_reward("RewardNet_normalized", train["files"]["reward_net"], venv)
    assert np.isfinite(trained(obs, acts, next_obs, np.zeros(2, bool))).all()

    # RLlib: both env runners on the worker node (its cpu_worker resource), the
    # learner in the driver on the head; the checkpoint carries the reward net.
    rllib = results["rllib"]
    head, worker = _nodes(rllib)
    assert rllib["env_runner_nodes"] == [worker, worker]
    assert rllib["placement"]["driver_node"] == head
    assert len(rllib["history"]) == 2
    assert all(np.isfinite(h["learned_reward_mean"]) for h in rllib["history"])
    assert np.isfinite(rllib["history"][-1]["episode_return_mean"])
    serialize.load_reward("RewardNet_normalized", rllib["files"]["reward_net"], venv)

    # Record: the rllib job's policy, restored on the cluster, as Parquet transitions.
    record = results["record"]
    assert record["episodes"] == 4
    demos = pq.read_table(record["files"]["demonstrations"])
    assert demos.num_rows == record["transitions"] > 0
    assert {"obs", "actions", "new_obs", "terminateds"} <= set(demos.column_names)

    # Relabel: those transitions with the pipeline's net as RLlib's rewards column, the
    # recorded rewards kept next to them.
    relabel = results["relabel"]
    assert relabel["rows"] == record["transitions"]
    relabeled = pq.read_table(relabel["files"]["relabeled"])
    assert relabeled.num_rows == record["transitions"]
    assert {"rewards", "env_rewards", "obs", "actions"} <= set(relabeled.column_names)
    np.testing.assert_allclose(
        np.sort(relabeled.column("env_rewards").to_numpy()),
        np.sort(demos.column("rewards").to_numpy()),
        rtol=1e-6,
    )

    # Offline: CQL on the relabeled transitions, evaluated greedily after the last
    # iteration; the checkpoint is saved.
    offline = results["offline"]
    assert [h["iteration"] for h in offline["history"]] == [1, 2]
    assert np.isfinite(offline["final_return"])
    assert offline["history"][-1]["eval_return_mean"] == offline["final_return"]
    checkpoint = offline["files"]["checkpoint"]
    assert os.path.exists(os.path.join(checkpoint, "rllib_checkpoint.json"))

    # Adversarial: GAIL on those demonstrations; env runners on the worker node, the
    # learner (and the discriminator) in the driver on the head.
    adversarial = results["adversarial"]
    head, worker = _nodes(adversarial)
    assert adversarial["env_runner_nodes"] == [worker, worker]
    assert adversarial["placement"]["driver_node"] == head
    assert len(adversarial["history"]) == 2
    for entry in adversarial["history"]:
        assert 0.0 <= entry["disc_accuracy"] <= 1.0
        assert np.isfinite(entry["disc_loss"]) and np.isfinite(entry["learned_reward_mean"])
    gail = serialize.load_reward("RewardNet_unnormalized", adversarial["files"]["reward_net"], venv)
    assert np.isfinite(gail(obs, acts, next_obs, np.zeros(2, bool))).all()
