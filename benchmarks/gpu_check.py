"""What the library does on a GPU, in one run of a few minutes.

Prints, for a NormalizedRewardNet(BasicRewardNet 64x64, RunningNorm) on Pendulum-sized
transitions (obs 3, action 1) on CUDA:

1. ``predict_processed`` (numpy in and out, validation, normalization, statistics
   update) against a raw ``forward`` on tensors already on the GPU, at batch 4k,
   64k and 1M: transitions/s and their ratio;
2. relabel throughput through the RLlib connector piece (``RelabelRewards`` over a
   train batch, as off-policy learners use it) at the same batches;
3. relabel throughput through a ``RewardActor`` holding one GPU, at the same
   batches (one caller, then 4 concurrent callers);
4. a Ray Train reward-training job on the GPU (``use_gpu=True``): its wall time and
   its epochs' time, for 2,000 preference pairs.

Exits at once, saying so, on a machine without CUDA (``--device cpu`` runs the
same steps on the CPU, to check the script itself).

    python benchmarks/gpu_check.py [--max-batch 1048576] [--device cpu]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import gymnasium as gym
import numpy as np
import torch as th

from ray_rewards.networks import RunningNorm
from ray_rewards.reward_nets import BasicRewardNet, NormalizedRewardNet

ENV = gym.make("Pendulum-v1")
DEVICE = "cuda"


def batch(n: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    obs = rng.uniform(-1, 1, (n, 3)).astype(np.float32)
    act = rng.uniform(-2, 2, (n, 1)).astype(np.float32)
    return obs, act, obs, np.zeros(n, dtype=bool)


def best_rate(fn, n: int, rounds: int = 5) -> float:
    """Transitions/s of ``fn`` over ``n`` rows: the best of ``rounds`` timed calls."""
    fn()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        if DEVICE == "cuda":
            th.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return n / min(times)


def make_net() -> NormalizedRewardNet:
    th.manual_seed(0)
    base = BasicRewardNet(ENV.observation_space, ENV.action_space, hid_sizes=(64, 64))
    return NormalizedRewardNet(base, RunningNorm)


def predict_vs_forward(sizes: list[int], rng: np.random.Generator) -> None:
    net = make_net().to(DEVICE)
    print(f"1. predict_processed vs raw forward on {DEVICE} (transitions/s)")
    for n in sizes:
        arrays = batch(n, rng)
        tensors = net.preprocess(*arrays)

        def raw(t=tensors) -> None:
            with th.no_grad():
                net(*t)

        def processed(a=arrays) -> None:
            net.predict_processed(*a, update_stats=True)

        r_raw, r_proc = best_rate(raw, n), best_rate(processed, n)
        print(
            f"   batch {n:>8}: raw forward {r_raw:12,.0f}  predict_processed "
            f"{r_proc:12,.0f}  ratio {r_proc / r_raw:.2f}"
        )


def relabel_connector(sizes: list[int], rng: np.random.Generator) -> None:
    from ray.rllib.core.columns import Columns

    from ray_rewards.rllib import RelabelRewards

    piece = RelabelRewards(make_net().to(DEVICE), from_batch=True)
    print(f"2. RelabelRewards (from_batch) on {DEVICE} (transitions/s)")
    for n in sizes:
        obs, act, new_obs, done = batch(n, rng)

        def relabel(obs=obs, act=act, new_obs=new_obs, done=done, n=n) -> None:
            columns = {
                Columns.OBS: obs,
                Columns.ACTIONS: act,
                Columns.NEXT_OBS: new_obs,
                Columns.TERMINATEDS: done,
                Columns.REWARDS: np.zeros(n, np.float32),
            }
            piece(rl_module=None, batch={"default_policy": columns}, episodes=[])

        print(f"   batch {n:>8}: {best_rate(relabel, n):12,.0f}")


def reward_actor(sizes: list[int], rng: np.random.Generator) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from ray_rewards.actors import RewardActor

    actor = RewardActor(make_net(), num_gpus=int(DEVICE == "cuda"), max_batch_size=max(sizes))
    print(f"3. RewardActor on {DEVICE} (transitions/s)")
    with ThreadPoolExecutor(4) as pool:
        for n in sizes:
            arrays = batch(n, rng)
            quarter = batch(max(1, n // 4), rng)

            def one(a=arrays) -> None:
                actor.predict_processed(*a)

            def four(a=quarter) -> None:
                list(pool.map(lambda _: actor.predict_processed(*a), range(4)))

            print(
                f"   batch {n:>8}: one caller {best_rate(one, n, 3):12,.0f}  "
                f"4 callers of n/4 {best_rate(four, 4 * len(quarter[0]), 3):12,.0f}"
            )


def ray_train_on_gpu(root: str, rng: np.random.Generator) -> None:
    from ray_rewards.train import oracle, schemas, trainer

    obs_space, act_space = ENV.observation_space, ENV.action_space
    length, pairs = 25, 2000
    obs, act, new_obs, done = batch(2 * pairs * length, rng)
    cols = {"obs": obs, "actions": act, "new_obs": new_obs, "terminateds": done}
    cols["rewards"] = -(obs[:, 0] ** 2) - 0.1 * act[:, 0] ** 2
    data = oracle.preference_pairs(
        cols,
        np.full(2 * pairs, length),
        num_pairs=pairs,
        fragment_length=length,
        oracle=oracle.PreferenceOracle(),
        rng=rng,
    )
    path = schemas.write_parquet(
        data, f"{root}/pairs", schemas.preference_schema(obs_space, act_space, length)
    )
    cfg = trainer.TrainConfig(
        train_data=path,
        env="Pendulum-v1",
        net_kwargs={"hid_sizes": [64, 64]},
        normalize_output=True,
        epochs=5,
        batch_size=256,
        use_gpu=DEVICE == "cuda",
        engine="ray",
        output=f"{root}/reward_net.pt",
        storage_path=f"{root}/ray_train",
        verbose=False,
    )
    t0 = time.perf_counter()
    result = trainer.train(cfg)
    wall = time.perf_counter() - t0
    epochs = sum(h["time_s"] for h in result.history)
    print(
        f"4. Ray Train on {DEVICE}: {cfg.epochs} epochs of {pairs} pairs in {epochs:.2f} s "
        f"({wall:.1f} s with the job's start-up); final train_loss "
        f"{result.history[-1]['train_loss']:.4f}"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--max-batch", type=int, default=1 << 20)
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    args = p.parse_args()
    global DEVICE
    DEVICE = args.device
    if DEVICE == "cuda" and not th.cuda.is_available():
        print("gpu_check: no CUDA device here; nothing to measure")
        sys.exit(0)
    import ray

    name = th.cuda.get_device_name(0) if DEVICE == "cuda" else "cpu"
    print(f"device: {name}, torch {th.__version__}, ray {ray.__version__}")
    sizes = [n for n in (4096, 65536, 1 << 20) if n <= args.max_batch]
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    predict_vs_forward(sizes, rng)
    relabel_connector(sizes, rng)
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    reward_actor(sizes, rng)
    ray_train_on_gpu(tempfile.mkdtemp(prefix="gpu_check_"), rng)
    print(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
