"""Env steps/s of Pendulum-v1 (8 sync envs) with and without RewardVecEnvWrapper.

The wrapped env's reward is ``NormalizedRewardNet(BasicRewardNet, RunningNorm)
.predict_processed`` (statistics updated every step, as during RL). Both envs are
measured in this process on the same pre-sampled random actions; each figure is
the best of ``--repeats`` runs of ``--steps`` vector steps, interleaved so that
load from other processes hits all alike. A third row, the wrapper around a
reward_fn that returns zeros, separates the wrapper's own cost from the net's.
Target: ratio >= 0.5.

    python benchmarks/env_wrapper_throughput.py [--steps 400] [--repeats 25] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time

import numpy as np
import torch as th

from ray_rewards.networks import RunningNorm
from ray_rewards.reward_nets import BasicRewardNet, NormalizedRewardNet
from ray_rewards.reward_wrapper import RewardVecEnvWrapper
from ray_rewards.util import make_gym_vec_env

ENV, N_ENVS, TARGET = "Pendulum-v1", 8, 0.5


def steps_per_second(venv, actions: np.ndarray) -> float:
    """Env steps (vector steps x sub-envs) per second over ``actions``."""
    venv.reset(seed=0)
    start = time.perf_counter()
    for a in actions:
        venv.step(a)
    return len(actions) * venv.num_envs / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400, help="vector steps per repeat")
    parser.add_argument("--repeats", type=int, default=25)
    parser.add_argument("--profile", action="store_true", help="cProfile one wrapped run")
    args = parser.parse_args()
    th.set_num_threads(1)  # a batch of 8 gains nothing from intra-op threads

    rng = np.random.default_rng(0)
    plain = make_gym_vec_env(ENV, n_envs=N_ENVS, rng=rng)
    net = NormalizedRewardNet(
        BasicRewardNet(plain.single_observation_space, plain.single_action_space), RunningNorm
    )
    wrapped = RewardVecEnvWrapper(
        make_gym_vec_env(ENV, n_envs=N_ENVS, rng=rng), net.predict_processed
    )
    zeros = RewardVecEnvWrapper(
        make_gym_vec_env(ENV, n_envs=N_ENVS, rng=rng), lambda obs, *_: np.zeros(len(obs))
    )
    actions = np.stack([plain.action_space.sample() for _ in range(args.steps)])

    steps_per_second(wrapped, actions[:100])  # warm-up (torch first-call costs)
    envs = {"unwrapped": plain, "wrapped": wrapped, "zero reward_fn": zeros}
    best = dict.fromkeys(envs, 0.0)
    for _ in range(args.repeats):
        for name, venv in envs.items():
            best[name] = max(best[name], steps_per_second(venv, actions))
    ratio = best["wrapped"] / best["unwrapped"]

    print(f"{ENV}, {N_ENVS} sync envs, {args.steps} vector steps, best of {args.repeats}")
    print(f"{'env':<16}{'env steps/s':>14}{'us/vector step':>16}{'vs unwrapped':>14}")
    for name, sps in best.items():
        print(f"{name:<16}{sps:>14,.0f}{N_ENVS / sps * 1e6:>16.1f}{sps / best['unwrapped']:>14.3f}")
    verdict = "meets" if ratio >= TARGET else "MISSES"
    print(f"ratio wrapped/unwrapped: {ratio:.3f} ({verdict} target {TARGET})")

    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        steps_per_second(wrapped, actions)
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
    for venv in envs.values():
        venv.close()


if __name__ == "__main__":
    main()
