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

PPO and the preference-learning settings are ``ray-rewards pipeline --online``'s
(``ray_rewards.train.online_pipeline.preference_ppo_config``), with the same budget as
the offline pipeline (100k env steps) unless ``--timesteps`` says otherwise.

    python benchmarks/preference_quality.py --timing [--timesteps 40000] [--pairs 2]
    python benchmarks/preference_quality.py [--seeds 3] [--labels 50 100 200 500]
    python benchmarks/preference_quality.py --replot DIR   # the plot again, from DIR's JSON
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

ENV = "Pendulum-v1"


def ppo_run(
    seed: int, timesteps: int, mode: str, labels: int = 500, selection: str = "uniform"
) -> dict:
    """One PPO run: ``mode`` is ``true``, ``fixed`` (an untrained net, frozen) or
    ``online`` (preference learning, as ``ray-rewards pipeline --online`` runs it);
    returns its wall time and greedy return.
    """
    from ray_rewards.rllib import with_learned_reward
    from ray_rewards.train import online_pipeline, ppo_runs

    # One env-runner actor beside the learner, as the pipeline's RL stage runs (with
    # the local env runner alone, true-reward PPO reached only -1040 in 100k steps).
    if mode == "online":
        config = online_pipeline.preference_ppo_config(ENV, seed, timesteps, labels, selection)
    else:
        config = ppo_runs.ppo_config(ENV, seed, timesteps, num_env_runners=1)
    if mode == "fixed":
        config = with_learned_reward(config, online_pipeline.preference_net(ENV))
    algo = config.build_algo()
    try:
        t0 = time.perf_counter()
        ppo_runs.train_until(algo, timesteps, f"{mode} seed {seed}")
        seconds = time.perf_counter() - t0
        final = ppo_runs.evaluate(algo, 32)
        random_return = ppo_runs.evaluate(algo, 32, random_actions=True)
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


def timing(timesteps: int, pairs: int) -> None:
    """``pairs`` interleaved pairs of whole runs (order alternating); the median ratio."""
    ratios = []
    for i in range(pairs):
        order = ("fixed", "online") if i % 2 == 0 else ("online", "fixed")
        seconds = {mode: whole_process(mode, timesteps) for mode in order}
        ratios.append(seconds["online"] / seconds["fixed"])
        print(
            f"pair {i + 1}: PPO {timesteps} env steps, whole process: fixed reward "
            f"{seconds['fixed']:6.1f} s, preference learning (500 labels) "
            f"{seconds['online']:6.1f} s, online / fixed {ratios[-1]:.2f}",
            flush=True,
        )
    print(f"online / fixed, median of {pairs}: {np.median(ratios):.2f} (target <= 1.3)")


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
    plot(rows, out, timesteps)


def plot(rows: dict[tuple[str, int], list[float]], out: str, timesteps: int) -> None:
    """``preference_quality.png``: normalized return vs labels, the mean of the seeds as
    a line and each seed as a dot, per selection (needs matplotlib).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(no matplotlib: no plot; pip install -e '.[plot]')")
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for kind, color in (("uniform", "tab:blue"), ("active", "tab:orange")):
        xs = [n for (k, n) in sorted(rows) if k == kind]
        ax.plot(xs, [np.mean(rows[(kind, n)]) for n in xs], "o-", color=color, label=kind)
        for n in xs:
            ax.scatter([n] * len(rows[(kind, n)]), rows[(kind, n)], color=color, alpha=0.3, s=15)
    seeds = max(len(v) for v in rows.values())
    ax.set_xscale("log")
    budgets = sorted({n for _, n in rows})
    ax.set_xticks(budgets, [str(n) for n in budgets])
    ax.minorticks_off()
    ax.set_xlabel("synthetic labels")
    ax.set_ylabel("normalized return (random 0, PPO on true reward 1)")
    ax.set_title(f"Pendulum-v1, PPO {timesteps} env steps: mean of {seeds} seeds (dots)")
    ax.grid(alpha=0.3)
    ax.legend()
    path = os.path.join(out, "preference_quality.png")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    print(f"plot: {path}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--timing", action="store_true", help="online vs fixed-reward wall time")
    p.add_argument("--timesteps", type=int, default=100_000)
    p.add_argument("--pairs", type=int, default=2, help="--timing: interleaved run pairs")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--labels", type=int, nargs="+", default=[50, 100, 200, 500])
    p.add_argument("--output-dir", default=None)
    p.add_argument(
        "--replot", metavar="DIR", help="redraw the plot from DIR/preference_quality.json"
    )
    args = p.parse_args()
    if args.replot:
        with open(os.path.join(args.replot, "preference_quality.json")) as f:
            saved = json.load(f)
        rows = {(k.rsplit("_", 1)[0], int(k.rsplit("_", 1)[1])): v for k, v in saved.items()}
        plot(rows, args.replot, args.timesteps)
        return
    if args.timing:
        timing(args.timesteps, args.pairs)
        return
    quality(args.seeds, args.labels, args.timesteps, args.output_dir or tempfile.mkdtemp())


if __name__ == "__main__":
    main()
