"""Reward training's overhead: the pipeline's training stage against the bare loop.

The pipeline's reward-training stage (``ray-rewards pipeline``: 2,000 preference
pairs of 25-step Pendulum fragments, a 64x64 SiLU net under a NormalizedRewardNet,
15 epochs of batch 64, held-out evaluation and a checkpoint every epoch) runs
through :func:`ray_rewards.train.trainer.train`. Side by side in this process:

- ``stage``: ``train(cfg)`` as the pipeline calls it (``engine="auto"``: one CPU
  worker, so in process);
- ``bare``: the same epochs written by hand: pyarrow read, ``preference_loss`` +
  Adam over the same batches, nothing else;
- ``ray``: ``train(cfg)`` forced through Ray Train (``engine="ray"``), for reference.

Prints the seconds of each (best of two, interleaved) and the ratio stage / bare
(target <= 1.5).

    python benchmarks/train_overhead.py [--pairs 2000] [--epochs 15] [--skip-ray]
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time

import numpy as np
import torch as th

from ray_rewards.train import losses, oracle, schemas, trainer

ENV = "Pendulum-v1"
LENGTH = 25


def make_pairs(root: str, num_pairs: int, rng: np.random.Generator) -> dict[str, str]:
    """Oracle-labeled train and eval pairs of random Pendulum transitions, as Parquet."""
    obs_space, act_space = trainer.env_spaces(ENV)
    schema = schemas.preference_schema(obs_space, act_space, LENGTH)
    paths = {}
    for name, n in (("train", num_pairs), ("eval", num_pairs // 5)):
        steps = 2 * n * LENGTH
        theta = rng.uniform(-np.pi, np.pi, steps)
        obs = np.stack([np.cos(theta), np.sin(theta), rng.uniform(-8, 8, steps)], 1)
        act = rng.uniform(-2, 2, (steps, 1))
        cols = {
            "obs": obs.astype(np.float32),
            "actions": act.astype(np.float32),
            "new_obs": obs.astype(np.float32),
            "terminateds": np.zeros(steps, bool),
            "rewards": -(theta**2 + 0.1 * obs[:, 2] ** 2 + 0.001 * act[:, 0] ** 2),
        }
        pairs = oracle.preference_pairs(
            cols,
            np.full(2 * n, LENGTH),
            num_pairs=n,
            fragment_length=LENGTH,
            oracle=oracle.PreferenceOracle(),
            rng=rng,
        )
        paths[name] = schemas.write_parquet(pairs, f"{root}/{name}", schema)
    return paths


def bare_loop(cfg: trainer.TrainConfig) -> float:
    """Seconds for the same epochs by hand: read, then loss + Adam over the batches."""
    t0 = time.perf_counter()
    data = schemas.read_numpy(cfg.train_data, losses.LOSS_COLUMNS["preference"])
    net = trainer.build_net(cfg, *trainer.env_spaces(ENV))
    opt = th.optim.Adam(net.parameters(), lr=cfg.lr)
    n = len(data["preference"])
    for epoch in range(cfg.epochs):
        order = np.random.default_rng([cfg.seed, epoch]).permutation(n)
        for begin in range(0, n, cfg.batch_size):
            rows = order[begin : begin + cfg.batch_size]
            loss, _ = losses.preference_loss(net, {k: v[rows] for k, v in data.items()})
            opt.zero_grad()
            loss.backward()
            opt.step()
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--skip-ray", action="store_true", help="do not time the Ray Train path")
    args = p.parse_args()
    th.set_num_threads(1)
    root = tempfile.mkdtemp(prefix="train_overhead_")
    import ray

    ray.init(include_dashboard=False, configure_logging=False, log_to_driver=False)
    paths = make_pairs(root, args.pairs, np.random.default_rng(0))
    cfg = trainer.TrainConfig(
        train_data=paths["train"],
        eval_data=paths["eval"],
        env=ENV,
        net_kwargs={"hid_sizes": [64, 64], "activation": "SiLU"},
        normalize_output=True,
        epochs=args.epochs,
        batch_size=64,
        output=f"{root}/stage/reward_net.pt",
        storage_path=f"{root}/stage",
        verbose=False,
    )
    bare, stage = [], []
    for attempt in range(2):  # interleaved, best of two: neither side gets a cold start
        bare.append(bare_loop(cfg))
        t0 = time.perf_counter()
        trainer.train(dataclasses.replace(cfg, name=f"stage{attempt}"))
        stage.append(time.perf_counter() - t0)
    bare, stage = min(bare), min(stage)
    print(f"bare loop (read + {args.epochs} epochs of loss + Adam): {bare:6.2f} s")
    print(f"pipeline stage, engine=auto (in process):       {stage:6.2f} s")
    if not args.skip_ray:
        forced = dataclasses.replace(
            cfg, engine="ray", storage_path=f"{root}/ray", output=f"{root}/ray/reward_net.pt"
        )
        t0 = time.perf_counter()
        trainer.train(forced)
        print(f"pipeline stage, engine=ray (Ray Train):         {time.perf_counter() - t0:6.2f} s")
    print(f"stage / bare = {stage / bare:.2f} (target <= 1.5)")


if __name__ == "__main__":
    main()
