"""Rows/s of relabel_dataset vs a single-process loop over the same Parquet files.

Writes ``--rows`` Pendulum-shaped transitions (RLlib's columns; obs as tensor
columns, or with ``--packed`` as RLlib's default LZ4-packed strings) to
``--files`` Parquet files, then relabels them

* in one process: pyarrow reads each file, the columns are decoded, and
  ``predict_processed`` runs per batch of ``--batch-size`` rows;
* with ``relabel_dataset`` (``--concurrency`` Ray Data actors), materialized.

Both include reading and decoding. Each ``relabel_dataset`` call starts its own
actor pool (new processes importing torch), a fixed cost that a large job
amortizes, so it is also run on a quarter of the files: the difference gives the
fixed cost and the marginal rows/s of the pipeline once running. Ray Data's
block size is set to 16 MiB so that the files make several blocks (one block
would keep all but one actor idle). Each figure is the best of ``--repeats``
rounds, interleaved.

    python benchmarks/relabel_dataset_throughput.py [--rows 1000000] [--concurrency 2]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import gymnasium as gym
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import torch as th

from ray_rewards import data
from ray_rewards.networks import RunningNorm
from ray_rewards.reward_nets import BasicRewardNet, NormalizedRewardNet

OBS = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
ACT = gym.spaces.Box(-2.0, 2.0, (1,), np.float32)


def write_parquet(directory: str, rows: int, files: int, packed: bool) -> None:
    from ray.data.extensions import ArrowTensorArray
    from ray.rllib.utils.compression import pack

    rng = np.random.default_rng(0)
    per_file = rows // files
    for i in range(files):
        obs = rng.uniform(-1, 1, (per_file, 3)).astype(np.float32)
        new_obs = rng.uniform(-1, 1, (per_file, 3)).astype(np.float32)

        def column(x: np.ndarray) -> pa.Array:
            if packed:
                return pa.array([pack(row) for row in x], pa.string())
            return ArrowTensorArray.from_numpy(x)

        table = pa.table(
            {
                "obs": column(obs),
                "actions": ArrowTensorArray.from_numpy(
                    rng.uniform(-2, 2, (per_file, 1)).astype(np.float32)
                ),
                "rewards": rng.normal(size=per_file),
                "new_obs": column(new_obs),
                "terminateds": np.zeros(per_file, bool),
                "truncateds": rng.random(per_file) < 0.005,
            }
        )
        pq.write_table(table, os.path.join(directory, f"part-{i:03d}.parquet"))


def single_process(directory: str, net, batch_size: int) -> float:
    """Rows/s of a plain loop: read, decode, predict, per batch."""
    start = time.perf_counter()
    rows = 0
    for name in sorted(os.listdir(directory)):
        for batch in pq.ParquetFile(os.path.join(directory, name)).iter_batches(batch_size):
            cols = {c: batch.column(c).to_numpy(zero_copy_only=False) for c in batch.schema.names}
            for c in ("obs", "actions", "new_obs"):
                if batch.schema.field(c).type != pa.string():
                    cols[c] = batch.column(c).to_numpy_ndarray()
            arrays = data.transition_arrays(cols, net)
            net.predict_processed(*arrays, update_stats=False)
            rows += batch.num_rows
    return rows / (time.perf_counter() - start)


def with_ray_data(path: str, net, args: argparse.Namespace) -> tuple[int, float]:
    """``(rows, seconds)`` of relabel_dataset over the Parquet files in ``path``."""
    start = time.perf_counter()
    ds = data.relabel_dataset(
        ray.data.read_parquet(path),
        net,
        batch_size=args.batch_size,
        concurrency=args.concurrency,
    ).materialize()
    return ds.count(), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--files", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--packed", action="store_true", help="RLlib's packed obs columns")
    args = parser.parse_args()

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(
        num_cpus=max(4, args.concurrency + 2),
        address="local",
        include_dashboard=False,
        log_to_driver=False,
        _node_ip_address="127.0.0.1",
    )
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.target_max_block_size = 16 * 2**20
    th.manual_seed(0)
    net = NormalizedRewardNet(
        BasicRewardNet(
            OBS, ACT, use_next_state=True, use_done=True, hid_sizes=(args.hidden, args.hidden)
        ),
        RunningNorm,
    )
    with tempfile.TemporaryDirectory(prefix="relabel_bench_") as directory:
        # Directories, not file lists: Ray 2.60 resolves a list of paths through
        # fsspec's HTTP filesystem, which fails here without aiohttp.
        full = os.path.join(directory, "full")
        quarter = os.path.join(directory, "quarter")
        os.makedirs(full)
        os.makedirs(quarter)
        write_parquet(full, args.rows, args.files, args.packed)
        for name in sorted(os.listdir(full))[: max(1, args.files // 4)]:
            os.link(os.path.join(full, name), os.path.join(quarter, name))
        best_loop = 0.0
        best_full = best_quarter = (0, float("inf"))
        for _ in range(args.repeats):
            best_loop = max(best_loop, single_process(full, net, args.batch_size))
            best_full = min(best_full, with_ray_data(full, net, args), key=lambda r: r[1])
            best_quarter = min(best_quarter, with_ray_data(quarter, net, args), key=lambda r: r[1])
    (rows, secs), (q_rows, q_secs) = best_full, best_quarter
    fmt = "packed (RLlib default compression)" if args.packed else "tensor columns"
    print(
        f"{args.rows:,} rows in {args.files} Parquet files, obs as {fmt}; batch "
        f"{args.batch_size}; net hidden ({args.hidden}, {args.hidden}); best of {args.repeats}"
    )
    print(f"  single-process loop                {best_loop:12,.0f} rows/s")
    print(
        f"  relabel_dataset (x{args.concurrency}), end to end   {rows / secs:12,.0f} rows/s "
        f"({secs:.1f} s; a quarter of the files: {q_secs:.1f} s)"
    )
    print(f"ratio relabel_dataset / single-process, end to end: {rows / secs / best_loop:.3f}")
    if secs - q_secs > 0.2 * secs:
        marginal = (rows - q_rows) / (secs - q_secs)
        print(
            f"  relabel_dataset, marginal          {marginal:12,.0f} rows/s (fixed cost about "
            f"{secs - rows / marginal:.1f} s per call: actor pool start, planning)"
        )
        print(f"ratio relabel_dataset / single-process, marginal:   {marginal / best_loop:.3f}")
    else:
        print("  marginal rate not measurable: the fixed cost dominates at this size (use --rows)")
    ray.shutdown()


if __name__ == "__main__":
    main()
