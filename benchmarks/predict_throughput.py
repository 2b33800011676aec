"""Throughput of predict_processed vs a raw forward on ready tensors (issue 2 target).

For a NormalizedRewardNet(BasicRewardNet, RunningNorm) on Pendulum-sized inputs
(obs 3, action 1) it prints transitions/s of

- ``raw forward``: ``net(state, action, next_state, done)`` under ``no_grad`` on
  tensors prepared up front (no preprocessing, no numpy, no normalization);
- ``predict_processed``: numpy in, numpy out, with validation, preprocessing,
  output normalization and a statistics update (imitation's RL hot path),

and their ratio, at batch sizes 8, 64 and 4096. The two are timed in alternation
in one process and the best of several rounds is kept, so load from other
processes hurts both alike. Torch runs one intra-op thread, as in Ray workers
(``OMP_NUM_THREADS=1``); ``--clock cpu`` times with the process's CPU time, which a
busy shared machine disturbs much less than wall time. Targets: ratio >= 0.5 at 64
and >= 0.8 at 4096.

Run: ``python benchmarks/predict_throughput.py [--rounds 7] [--eval-mode] [--clock cpu]``.
"""

from __future__ import annotations

import argparse
import time

import gymnasium as gym
import numpy as np
import torch as th

from ray_rewards.networks import RunningNorm
from ray_rewards.reward_nets import BasicRewardNet, NormalizedRewardNet


def seconds_per_call(fn, calls: int, clock) -> float:
    start = clock()
    for _ in range(calls):
        fn()
    return (clock() - start) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--eval-mode", action="store_true", help="call net.eval() first")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    args = parser.parse_args()
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    th.set_num_threads(1)
    th.manual_seed(0)
    env = gym.make("Pendulum-v1")
    net = NormalizedRewardNet(BasicRewardNet(env.observation_space, env.action_space), RunningNorm)
    if args.eval_mode:
        net.eval()
    rng = np.random.default_rng(0)
    print(
        f"torch {th.__version__}, threads {th.get_num_threads()}, {args.clock} clock, "
        f"net in {'eval' if args.eval_mode else 'training'} mode"
    )
    print(f"{'batch':>6} {'raw forward/s':>15} {'predict_processed/s':>20} {'ratio':>7}")
    for batch in (8, 64, 4096):
        obs = rng.standard_normal((batch, 3), dtype=np.float32)
        act = rng.uniform(-2, 2, (batch, 1)).astype(np.float32)
        next_obs = rng.standard_normal((batch, 3), dtype=np.float32)
        done = np.zeros(batch, dtype=bool)
        tensors = tuple(th.as_tensor(x) for x in (obs, act, next_obs, done.astype(np.float32)))

        def raw(tensors=tensors) -> None:
            with th.no_grad():
                net(*tensors)

        def processed(obs=obs, act=act, next_obs=next_obs, done=done) -> None:
            net.predict_processed(obs, act, next_obs, done)

        calls = max(20, 200_000 // batch)
        raw_s, proc_s = float("inf"), float("inf")
        for _ in range(args.rounds):  # alternate so both see the same machine load
            raw_s = min(raw_s, seconds_per_call(raw, calls, clock))
            proc_s = min(proc_s, seconds_per_call(processed, calls, clock))
        print(f"{batch:>6} {batch / raw_s:>15,.0f} {batch / proc_s:>20,.0f} {raw_s / proc_s:>7.2f}")


if __name__ == "__main__":
    main()
