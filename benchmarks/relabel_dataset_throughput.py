"""Relabeling Parquet as whole processes: a plain loop vs ``ray-rewards relabel`` engines.

Writes ``--rows`` Pendulum-shaped transitions (RLlib's columns; obs as Ray tensor
columns, or with ``--packed`` as RLlib's default LZ4-packed strings) to
``--files`` Parquet files and a NormalizedRewardNet to a file, then times, as whole
processes (wall clock from start to exit, so interpreter, imports and any Ray
start-up count), best of ``--repeats`` interleaved rounds:

(a) ``plain``: a plain Python loop script: pyarrow reads each file batch by batch,
    ``predict_processed`` rewards each batch, pyarrow writes one output per file
    (torch with ``--threads`` threads, as the engines get with ``--num-cpus``: on a
    busy machine the thread setting alone changes a loop's speed several times);
(b) ``ray-rewards relabel --engine local``;
(c) ``ray-rewards relabel --engine ray`` (a local Ray start, a Ray Data actor pool);
(d) ``ray-rewards relabel --engine auto``.

The order rotates each round, with ``--settle`` seconds between runs.

It prints each time and the ratios the engine choice is judged by: plain/auto
(auto's throughput relative to the plain loop; target >= 0.8) and auto against
the better of local and ray (target >= 0.95), and checks that the local and Ray
outputs hold the same rows and rewards. The ratios are of wall-clock times
(best of the rounds); the same ratios of CPU times (user + system) are printed
beside them, as a busy shared machine disturbs those much less (Ray's CPU time
is not comparable: its daemons are not all this process's children). ``--in-process`` also times
``relabel_dataset`` on ``ray.data.read_parquet`` in one driver, per engine.

    python benchmarks/relabel_dataset_throughput.py [--rows 1000000] [--packed]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time

import gymnasium as gym
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch as th

from ray_rewards import serialize
from ray_rewards.networks import RunningNorm
from ray_rewards.reward_nets import BasicRewardNet, NormalizedRewardNet

OBS = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
ACT = gym.spaces.Box(-2.0, 2.0, (1,), np.float32)

PLAIN_LOOP = textwrap.dedent(
    '''
    """Plain loop: pyarrow read -> predict_processed -> pyarrow write, one file at a time."""
    import os
    import sys

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    from ray_rewards import serialize
    from ray_rewards.data import unpack_array

    source, target, net_path, batch_size = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    torch.set_num_threads(int(sys.argv[5]))
    net = serialize.load(net_path)
    os.makedirs(target)


    def column(batch, name):
        col = batch.column(name)
        if pa.types.is_string(col.type):
            return np.stack([unpack_array(v) for v in col.to_numpy(zero_copy_only=False)])
        if pa.types.is_large_list(col.type) or pa.types.is_list(col.type):
            return col.flatten().to_numpy().reshape(len(col), -1)
        return col.to_numpy(zero_copy_only=False)


    rows = 0
    for name in sorted(os.listdir(source)):
        writer = None
        for batch in pq.ParquetFile(os.path.join(source, name)).iter_batches(batch_size):
            rewards = net.predict_processed(
                column(batch, "obs"), column(batch, "actions"), column(batch, "new_obs"),
                column(batch, "terminateds"), update_stats=False,
            )
            out = pa.Table.from_batches([batch]).append_column("learned_rewards", pa.array(rewards))
            if writer is None:
                writer = pq.ParquetWriter(os.path.join(target, name), out.schema)
            writer.write_table(out)
            rows += batch.num_rows
        writer.close()
    print(f"relabeled {rows} rows")
    '''
)


def write_parquet(directory: str, rows: int, files: int, packed: bool) -> None:
    """``rows`` random Pendulum transitions in ``files`` Parquet files (one in memory at
    a time), as Ray writes tensor columns, or packed as RLlib's offline output does.
    """
    from ray.data.extensions import ArrowTensorArray
    from ray.rllib.utils.compression import pack

    rng = np.random.default_rng(0)
    for i in range(files):
        n = rows // files + (1 if i < rows % files else 0)
        obs = rng.uniform(-1, 1, (n, 3)).astype(np.float32)
        new_obs = rng.uniform(-1, 1, (n, 3)).astype(np.float32)

        def column(x: np.ndarray) -> pa.Array:
            if packed:
                return pa.array([pack(row) for row in x], pa.string())
            return ArrowTensorArray.from_numpy(x)

        table = pa.table(
            {
                "obs": column(obs),
                "actions": ArrowTensorArray.from_numpy(
                    rng.uniform(-2, 2, (n, 1)).astype(np.float32)
                ),
                "rewards": rng.normal(size=n),
                "new_obs": column(new_obs),
                "terminateds": np.zeros(n, bool),
                "truncateds": rng.random(n) < 0.005,
            }
        )
        pq.write_table(table, os.path.join(directory, f"part-{i:03d}.parquet"))


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """Wall-clock seconds of ``cmd`` as a whole process, its CPU seconds (user + system,
    with the descendants it reaped; a busy machine disturbs them less), and its
    output's last line.
    """
    cpu = _children_cpu()
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return seconds, _children_cpu() - cpu, (done.stdout.strip().splitlines() or [""])[-1]


def same_output(a: str, b: str) -> str:
    """Whether two output folders hold the same rows and rewards (order aside)."""

    def load(path: str) -> pa.Table:
        files = sorted(os.path.join(path, f) for f in os.listdir(path) if f.endswith(".parquet"))
        return pa.concat_tables(
            [pq.read_table(f, columns=["rewards", "learned_rewards"]) for f in files]
        ).sort_by("rewards")

    ta, tb = load(a), load(b)
    if ta.num_rows != tb.num_rows:
        return f"DIFFERENT row counts {ta.num_rows} and {tb.num_rows}"
    same = np.array_equal(ta["rewards"].to_numpy(), tb["rewards"].to_numpy()) and np.allclose(
        ta["learned_rewards"].to_numpy(), tb["learned_rewards"].to_numpy(), rtol=1e-5, atol=1e-6
    )
    return f"same {ta.num_rows:,} rows and rewards" if same else "DIFFERENT values"


def whole_processes(directory: str, source: str, net_path: str, args: argparse.Namespace) -> None:
    """Time (a)-(d) as subprocesses and print the times and ratios."""
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    script = os.path.join(directory, "plain_loop.py")
    with open(script, "w") as f:
        f.write(PLAIN_LOOP)
    cli = os.path.join(os.path.dirname(sys.executable), "ray-rewards")
    common = ["--reward", net_path, "--batch-size", str(args.batch_size)]
    common += ["--concurrency", str(args.concurrency), "--num-cpus", str(args.threads)]
    runs = {"plain": [sys.executable, script]}
    for engine in ("local", "ray", "auto"):
        runs[engine] = [cli, "relabel", source, "OUT", *common, "--engine", engine]
    wall: dict[str, list[float]] = {name: [] for name in runs}
    cpu: dict[str, list[float]] = {name: [] for name in runs}
    kept: dict[str, str] = {}
    names = list(runs)
    for round_ in range(args.repeats):
        # Rotated each round so no run always follows the Ray one (whose processes take a
        # moment to go), and paused between runs.
        for name in names[round_ % 4 :] + names[: round_ % 4]:
            cmd = runs[name]
            time.sleep(args.settle)
            out = os.path.join(directory, f"out-{name}")
            shutil.rmtree(out, ignore_errors=True)
            if name == "plain":
                cmd = [*cmd, source, out, net_path, str(args.batch_size), str(args.threads)]
            else:
                cmd = [out if c == "OUT" else c for c in cmd]
            seconds, cpu_s, last = timed(cmd, env)
            wall[name].append(seconds)
            cpu[name].append(cpu_s)
            print(f"  {name:6s} {seconds:7.2f} s wall {cpu_s:7.2f} s CPU   {last}", flush=True)
            if name in ("local", "ray"):
                kept[name] = out
            else:
                shutil.rmtree(out, ignore_errors=True)
    best = {name: min(times) for name, times in wall.items()}
    rows = args.rows
    print(f"best of {args.repeats}, whole processes (wall clock start to exit; median; CPU):")
    for name, label in (
        ("plain", "(a) plain loop (pyarrow -> predict_processed -> pyarrow)"),
        ("local", "(b) ray-rewards relabel --engine local"),
        ("ray", "(c) ray-rewards relabel --engine ray"),
        ("auto", "(d) ray-rewards relabel --engine auto"),
    ):
        print(
            f"  {label:58s} {best[name]:7.2f} s {rows / best[name]:11,.0f} rows/s "
            f"(median {statistics.median(wall[name]):6.2f} s; CPU {min(cpu[name]):6.2f} s)"
        )
    mid = {name: statistics.median(times) for name, times in wall.items()}
    least = {name: min(times) for name, times in cpu.items()}
    print(
        "ratio plain/auto (auto's throughput vs the plain loop, >= 0.8): "
        f"{best['plain'] / best['auto']:.3f} best, {mid['plain'] / mid['auto']:.3f} median, "
        f"{least['plain'] / least['auto']:.3f} CPU"
    )
    print(
        "ratio better-of(local, ray)/auto (>= 0.95): "
        f"{min(best['local'], best['ray']) / best['auto']:.3f} best, "
        f"{min(mid['local'], mid['ray']) / mid['auto']:.3f} median "
        f"(better: {'local' if best['local'] <= best['ray'] else 'ray'}); "
        f"local/auto {least['local'] / least['auto']:.3f} CPU"
    )
    print(f"ratio ray/local (local's speed-up over ray): {best['ray'] / best['local']:.2f}")
    print(f"local vs ray outputs: {same_output(kept['local'], kept['ray'])}")


def in_process(source: str, net_path: str, args: argparse.Namespace) -> None:
    """``relabel_dataset`` on ``read_parquet`` in one driver, per engine (materialized)."""
    import ray

    from ray_rewards import data

    ray.init(
        num_cpus=max(4, args.concurrency + 2),
        address="local",
        include_dashboard=False,
        log_to_driver=False,
        _node_ip_address="127.0.0.1",
    )
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    net = serialize.load(net_path)
    # Untimed: the first read starts Ray's worker processes, whichever engine follows.
    ray.data.read_parquet(source).materialize()
    best = dict.fromkeys(("local", "ray", "auto"), float("inf"))
    for _ in range(args.repeats):
        for engine in best:
            start = time.perf_counter()
            ds = data.relabel_dataset(
                ray.data.read_parquet(source),
                net,
                batch_size=args.batch_size,
                concurrency=args.concurrency,
                engine=engine,
            ).materialize()
            best[engine] = min(best[engine], time.perf_counter() - start)
            assert ds.count() == args.rows
    print(
        f"relabel_dataset(read_parquet(...)) in one driver, materialized, best of {args.repeats}:"
    )
    for engine, seconds in best.items():
        print(f"  engine={engine:5s} {seconds:7.2f} s {args.rows / seconds:12,.0f} rows/s")
    ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--files", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads: plain loop and --num-cpus"
    )
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--packed", action="store_true", help="RLlib's packed obs columns")
    parser.add_argument("--settle", type=float, default=2.0, help="seconds between runs")
    parser.add_argument("--in-process", action="store_true", help="also time relabel_dataset")
    parser.add_argument("--tmp", default=None, help="where the data goes (default: $TMPDIR)")
    args = parser.parse_args()

    th.manual_seed(0)
    net = NormalizedRewardNet(
        BasicRewardNet(
            OBS, ACT, use_next_state=True, use_done=True, hid_sizes=(args.hidden, args.hidden)
        ),
        RunningNorm,
    )
    with tempfile.TemporaryDirectory(prefix="relabel_bench_", dir=args.tmp) as directory:
        source = os.path.join(directory, "input")
        os.makedirs(source)
        start = time.perf_counter()
        write_parquet(source, args.rows, args.files, args.packed)
        net_path = os.path.join(directory, "net.pt")
        serialize.save(net, net_path)
        fmt = "packed (RLlib default compression)" if args.packed else "tensor columns"
        print(
            f"{args.rows:,} rows in {args.files} Parquet files, obs as {fmt}; batch "
            f"{args.batch_size}; concurrency {args.concurrency}; torch threads {args.threads}; "
            f"net hidden ({args.hidden}, "
            f"{args.hidden}); written in {time.perf_counter() - start:.1f} s; "
            f"{os.cpu_count()} CPUs",
            flush=True,
        )
        whole_processes(directory, source, net_path, args)
        if args.in_process:
            in_process(source, net_path, args)


if __name__ == "__main__":
    main()
