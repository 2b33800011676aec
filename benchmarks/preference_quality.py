"""Preference comparisons in the RLlib loop on Pendulum-v1: quality per label, and cost.

Two measurements, each its own mode:

- ``--timing``: the whole online run against the same PPO run on a fixed reward
  (``with_learned_reward`` with the same net, untrained), same env steps, each as a
  whole process (``ray.init`` included); prints both and online / fixed (target
  <= 1.3: retraining must not dominate).
- quality (the default): for each seed, PPO on the true reward (normalized 1), the
  random policy (0), and PPO with :func:`~ray_rewards.rllib.with_preference_learning`
  and a synthetic gatherer, for each label budget and each selection (uniform;
  active: a 3-member ``RewardEnsemble``); prints the normalized greedy returns
  (target at 500 labels, uniform: mean >= 0.9, worst seed >= 0.8) and, with
  matplotlib, saves ``preference_quality.png`` (normalized return vs labels).

PPO is the pipeline's (``ray_rewards.train.pipeline.ppo_config``), with the same
budget as the offline pipeline (100k env steps) unless ``--timesteps`` says otherwise.

    python benchmarks/preference_quality.py --timing [--timesteps 40000]
    python benchmarks/preference_quality.py [--seeds 3] [--labels 100 200 500 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import gymnasium as gym
import numpy as np

ENV = "Pendulum-v1"


def make_net(active: bool):
    """The reward net learned from preferences (an ensemble for active selection)."""
    from ray_rewards.networks import RunningNorm
    from ray_rewards.reward_nets import BasicRewardNet, NormalizedRewardNet, RewardEnsemble

    env = gym.make(ENV)
    spaces = (env.observation_space, env.action_space)
    if active:
        base = RewardEnsemble(
            *spaces, [BasicRewardNet(*spaces, hid_sizes=(64, 64)) for _ in range(3)]
        )
    else:
        base = BasicRewardNet(*spaces, hid_sizes=(64, 64))
    return NormalizedRewardNet(base, RunningNorm)


def ppo_run(
    seed: int, timesteps: int, mode: str, labels: int = 500, selection: str = "uniform"
) -> dict:
    """One PPO run: ``mode`` is ``true``, ``fixed`` (an untrained net, frozen) or
    ``online`` (preference learning); returns its wall time and greedy return.
    """
    from ray_rewards.rllib import with_learned_reward, with_preference_learning
    from ray_rewards.train import pipeline

    # One env-runner actor beside the learner, as the pipeline's RL stage runs (with
    # the local env runner alone, true-reward PPO reached only -1040 in 100k steps).
    config = pipeline.ppo_config(ENV, seed, timesteps, num_env_runners=1)
    if mode == "fixed":
        config = with_learned_reward(config, make_net(False))
    elif mode == "online":
        iterations = max(2, timesteps // config.train_batch_size_per_learner)
        config = with_preference_learning(
            config,
            make_net(selection == "active"),
            total_labels=labels,
            num_rounds=max(1, iterations // 2 - 1),
            fragment_length=25,
            selection=selection,
            seed=seed,
        )
    algo = config.build_algo()
    try:
        t0 = time.perf_counter()
        pipeline._train_until(algo, timesteps, f"{mode} seed {seed}")
        seconds = time.perf_counter() - t0
        final = pipeline.evaluate(algo, 32)
        random_return = pipeline.evaluate(algo, 32, random_actions=True)
    finally:
        algo.stop()
    return {"seconds": seconds, "return": final, "random": random_return}


def whole_process(mode: str, timesteps: int) -> float:
    """Seconds of one run as a whole process, ``ray.init`` included."""
    code = (
        "import ray, sys; sys.path.insert(0, 'benchmarks');"
        "import preference_quality as b;"
        "ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False);"
        f"b.ppo_run(0, {timesteps}, {mode!r})"
    )
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    return time.perf_counter() - t0


def timing(timesteps: int) -> None:
    fixed = whole_process("fixed", timesteps)
    online = whole_process("online", timesteps)
    print(f"PPO {timesteps} env steps on a fixed reward, whole process: {fixed:6.1f} s")
    print(f"the same with preference learning (500 labels):            {online:6.1f} s")
    print(f"online / fixed = {online / fixed:.2f} (target <= 1.3)")


def quality(seeds: int, budgets: list[int], timesteps: int, out: str) -> None:
    import ray

    ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    task = ray.remote(num_cpus=0.5)(ppo_run)
    jobs = {}
    for seed in range(seeds):
        jobs[("true", 0, seed)] = task.remote(seed, timesteps, "true")
        for labels in budgets:
            for selection in ("uniform", "active"):
                jobs[(selection, labels, seed)] = task.remote(
                    seed, timesteps, "online", labels, selection
                )
    results = dict(zip(jobs, ray.get(list(jobs.values()))))
    for (kind, labels, seed), r in sorted(results.items()):
        print(
            f"{kind:<9} labels {labels:>5} seed {seed}: greedy return {r['return']:8.1f}, "
            f"random {r['random']:8.1f}, {r['seconds']:5.0f} s"
        )
    rows = {}
    for (kind, labels, seed), r in results.items():
        if kind == "true":
            continue
        true = results[("true", 0, seed)]
        score = (r["return"] - true["random"]) / (true["return"] - true["random"])
        rows.setdefault((kind, labels), []).append(score)
    print("selection  labels  normalized return per seed          mean")
    for (kind, labels), scores in sorted(rows.items()):
        shown = " ".join(f"{s:5.2f}" for s in scores)
        print(f"{kind:<9}  {labels:>6}  {shown:<35} {np.mean(scores):.2f}")
    target = rows.get(("uniform", 500))
    if target:
        print(
            f"500 labels, uniform: mean {np.mean(target):.2f} (>= 0.9), worst "
            f"{min(target):.2f} (>= 0.8)"
        )
    with open(os.path.join(out, "preference_quality.json"), "w") as f:
        json.dump({f"{k}_{n}": v for (k, n), v in rows.items()}, f)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(no matplotlib: no plot; pip install -e '.[plot]')")
        return
    for kind in ("uniform", "active"):
        xs = [n for (k, n) in sorted(rows) if k == kind]
        plt.plot(xs, [np.mean(rows[(kind, n)]) for n in xs], marker="o", label=kind)
    plt.xlabel("labels")
    plt.ylabel("normalized return")
    plt.legend()
    path = os.path.join(out, "preference_quality.png")
    plt.savefig(path)
    print(f"plot: {path}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--timing", action="store_true", help="online vs fixed-reward wall time")
    p.add_argument("--timesteps", type=int, default=100_000)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--labels", type=int, nargs="+", default=[100, 200, 500, 1000])
    p.add_argument("--output-dir", default=None)
    args = p.parse_args()
    if args.timing:
        timing(args.timesteps)
        return
    quality(args.seeds, args.labels, args.timesteps, args.output_dir or tempfile.mkdtemp())


if __name__ == "__main__":
    main()
