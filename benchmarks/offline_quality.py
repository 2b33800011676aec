"""Offline RL on learned rewards, Pendulum-v1: the same recorded data and budget, trained
on the recorded (true) rewards and on a learned reward.

1. **Data**: PPO (the pipeline's config, one env runner) trains ``--ppo-steps`` env
   steps; its greedy policy then records ``--policy-steps`` transitions and a
   uniformly random policy ``--random-steps``, in env units (``ray-rewards record``'s
   form: RLlib's flat columns plus ``rewards``, ``truncateds``, ``eps_id``).
2. **Reward**, the pipeline's way: oracle-labeled fragment pairs cut from those
   transitions (``pipeline.build_preferences``) and Ray Train reward training
   (``trainer.train``, ``NormalizedRewardNet(BasicRewardNet)``, the pipeline's settings).
3. **Relabel**: ``relabel_parquet(..., column="rewards")``, what ``ray-rewards relabel
   --as-rewards`` writes: the learned rewards as RLlib's ``rewards``.
4. **Offline RL**, for each seed: ``--algorithm`` on (a) the recorded data and (b) the
   relabeled data, the same ``--iterations`` x ``--updates`` learner updates,
   ``with_env_unit_actions`` for both; RLlib's greedy evaluation after the last
   iteration (``--eval-episodes``).

Why MARWIL by default: on this 2-core machine, with RLlib 2.60's settings, CQL
(0.4 s per update of 256; no better than random after 2,000 updates) and IQL
(beta 1, learning rates 1e-3, ReLU; no better than random after 3,000 updates) did
not learn Pendulum from such data within a budget a benchmark can spend; MARWIL
does (``--algorithm CQL`` or ``IQL`` runs them the same way, e.g. on a GPU).

Returns are normalized: the uniformly random policy's mean return 0, the
reference expert (``ppo_runs.EXPERT_RETURNS``) 1. Prints each run, the means, the
ratio (b) / (a) of the mean normalized returns (target >= 0.9) and the wall times;
writes ``offline_quality.json`` to ``--out``.

    python benchmarks/offline_quality.py [--seeds 3] [--algorithm MARWIL|CQL|IQL]
        [--iterations 100 --updates 50] [--policy-steps 80000 --random-steps 20000]
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import time
from typing import Any

import numpy as np

ENV = "Pendulum-v1"

# Each algorithm's settings: the same for (a) and (b). CQL's and IQL's learning rates
# are their own (actor/critic/...), so RLlib wants lr=None for them.
SETTINGS = {
    "CQL": {"lr": None, "twin_q": False, "bc_iters": 200},
    "IQL": {"lr": None, "beta": 1.0, "actor_lr": 1e-3, "critic_lr": 1e-3, "value_lr": 1e-3},
    "MARWIL": {"lr": 1e-3, "beta": 1.0},
}


def log(msg: str) -> None:
    print(f"[offline_quality {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def record(out_dir: str, seed: int, ppo_steps: int, policy_steps: int, random_steps: int) -> dict:
    """Stage 1: the transitions (columns and chunk lengths), written as Parquet."""
    import gymnasium as gym

    from ray_rewards.train import oracle, schemas, trainer
    from ray_rewards.train.ppo_runs import ppo_config, train_until

    algo = ppo_config(ENV, seed, max(ppo_steps, 1), num_env_runners=1).build_algo()
    try:
        if ppo_steps > 0:
            train_until(algo, ppo_steps, "behaviour PPO")

        def sample(runner: Any, steps: int, random_actions: bool) -> list:
            # Chunks of at most 20k steps: one 80k-step call failed inside RLlib 2.60's
            # sample() (an inhomogeneous array); episodes simply continue across calls.
            episodes, left = [], steps
            while left > 0:
                n = min(left, 20_000)
                episodes += runner.sample(
                    num_timesteps=n,
                    explore=False,
                    random_actions=random_actions,
                    force_reset=not episodes,
                )
                left -= n
            return episodes

        def on_runner(steps: int, random_actions: bool) -> list:
            return algo.env_runner_group.foreach_env_runner(
                lambda r: sample(r, steps, random_actions),
                local_env_runner=False,
                remote_worker_ids=[1],
            )[0]

        policy = on_runner(policy_steps, False)
        random_eps = on_runner(random_steps, True)
    finally:
        algo.stop()
    action_space = gym.make(ENV).action_space
    parts = [
        oracle.episodes_to_transitions(random_eps),
        oracle.episodes_to_transitions(
            policy, action_space=action_space, normalize_actions=True, clip_actions=False
        ),
    ]
    columns = {k: np.concatenate([p[0][k] for p in parts]) for k in parts[0][0]}
    lengths = np.concatenate([p[1] for p in parts])
    ends = np.cumsum(lengths)
    columns["truncateds"] = np.zeros(len(columns["obs"]), dtype=bool)
    columns["truncateds"][ends - 1] = ~columns["terminateds"][ends - 1]
    columns["eps_id"] = np.repeat(np.arange(len(lengths)), lengths).astype(np.int64)
    obs_space, act_space = trainer.env_spaces(ENV)
    path = schemas.write_parquet(
        columns,
        os.path.join(out_dir, "recorded"),
        schemas.transitions_schema(obs_space, act_space, extra=["rewards", "truncateds", "eps_id"]),
        overwrite=True,
    )
    returns = np.add.reduceat(columns["rewards"], ends - lengths)
    full = lengths == 200
    log(
        f"recorded {len(columns['obs'])} transitions: {random_steps} random, {policy_steps} "
        f"of PPO after {ppo_steps} steps (its complete episodes' mean return "
        f"{returns[len(parts[0][1]) :][full[len(parts[0][1]) :]].mean():.1f})"
    )
    return {"path": path, "columns": columns, "lengths": lengths}


def learn_reward(out_dir: str, data: dict, seed: int) -> tuple[str, float]:
    """Stage 2: the pipeline's preference pairs and reward training; the net's path and
    its Pearson r with the true reward on the held-out transitions.
    """
    from ray_rewards.train import pipeline

    cfg = pipeline.PipelineConfig(env=ENV, seed=seed, output_dir=out_dir, num_workers=1)
    columns = {k: v for k, v in data["columns"].items() if k not in ("truncateds", "eps_id")}
    paths = pipeline.build_preferences(
        cfg, columns, data["lengths"], os.path.join(out_dir, "preferences")
    )
    result = pipeline.train_reward(cfg, paths, out_dir)
    corr = pipeline.reward_correlation(result.net_path, paths["eval_transitions"])
    log(
        f"reward net: held-out preference accuracy {result.history[-1]['eval_accuracy']:.3f}, "
        f"Pearson r with the true reward {corr:.3f}"
    )
    return result.net_path, corr


def offline_run(
    algorithm: str, data: str, seed: int, iterations: int, updates: int, episodes: int
) -> dict:
    """Stage 4, one run: ``iterations`` x ``updates`` learner updates on ``data``, then
    RLlib's greedy evaluation; its return and wall time.
    """
    from ray_rewards.rllib import with_env_unit_actions
    from ray_rewards.rllib._compat import algorithm_class

    config = (
        algorithm_class(algorithm)
        .get_default_config()
        .environment(ENV)
        .offline_data(input_=[data], dataset_num_iters_per_learner=updates)
        .training(train_batch_size_per_learner=256, **SETTINGS[algorithm])
        # ReLU: with RLlib's default tanh, BC on PPO's own transitions needed several
        # times the updates to fit a policy that swings the pendulum up.
        .rl_module(model_config={"fcnet_activation": "relu"})
        .evaluation(
            evaluation_interval=iterations,
            evaluation_num_env_runners=1,
            evaluation_duration=episodes,
            evaluation_config={"explore": False},
        )
        .reporting(min_time_s_per_iteration=0)
        .debugging(seed=seed)
    )
    algo = with_env_unit_actions(config).build_algo()
    t0 = time.perf_counter()
    try:
        for _ in range(iterations):
            result = algo.train()
        ret = float(result["evaluation"]["env_runners"]["episode_return_mean"])
    finally:
        algo.stop()
        del algo
        gc.collect()  # the learner's Ray Data iterator ends while Ray is up
    return {"return": ret, "seconds": time.perf_counter() - t0}


def random_return(episodes: int, seed: int) -> float:
    """The uniformly random policy's mean return over ``episodes``."""
    import gymnasium as gym

    env = gym.make(ENV)
    env.action_space.seed(seed)
    total = []
    for i in range(episodes):
        env.reset(seed=seed + i)
        ret, done = 0.0, False
        while not done:
            _, r, terminated, truncated, _ = env.step(env.action_space.sample())
            ret += float(r)
            done = terminated or truncated
        total.append(ret)
    return float(np.mean(total))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--algorithm", choices=sorted(SETTINGS), default="MARWIL")
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--updates", type=int, default=50, help="learner updates per iteration")
    parser.add_argument("--eval-episodes", type=int, default=20)
    parser.add_argument("--ppo-steps", type=int, default=100_000)
    parser.add_argument("--policy-steps", type=int, default=80_000)
    parser.add_argument("--random-steps", type=int, default=20_000)
    parser.add_argument("--out", default="results/offline_quality")
    args = parser.parse_args()

    import ray
    import ray.data

    from ray_rewards.data import relabel_parquet
    from ray_rewards.train.ppo_runs import EXPERT_RETURNS, normalized_score

    t_start = time.perf_counter()
    out_dir = os.path.abspath(args.out)
    os.makedirs(out_dir, exist_ok=True)
    # Ray Data's offline pre-learner wants more logical CPUs than this 2-core box has.
    ray.init(num_cpus=4, include_dashboard=False, configure_logging=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)

    t0 = time.perf_counter()
    data = record(out_dir, 0, args.ppo_steps, args.policy_steps, args.random_steps)
    net_path, corr = learn_reward(out_dir, data, 0)
    relabeled = os.path.join(out_dir, "relabeled")
    if os.path.exists(relabeled):
        import shutil

        shutil.rmtree(relabeled)
    relabel_parquet(data["path"], relabeled, net_path, column="rewards", engine="local")
    t_prepare = time.perf_counter() - t0
    log(f"data, reward net and relabeling: {t_prepare:.0f}s")

    low = random_return(args.eval_episodes, 0)
    high = EXPERT_RETURNS[ENV]
    runs: dict[str, list[dict]] = {"true": [], "learned": []}
    for seed in range(args.seeds):
        for name, path in (("true", data["path"]), ("learned", relabeled)):
            run = offline_run(
                args.algorithm, path, seed, args.iterations, args.updates, args.eval_episodes
            )
            run["normalized"] = normalized_score(run["return"], low, high)
            runs[name].append(run)
            log(
                f"seed {seed}: {args.algorithm} on {name} rewards: return {run['return']:.1f} "
                f"(normalized {run['normalized']:.2f}), {run['seconds']:.0f}s"
            )
    mean = {k: float(np.mean([r["normalized"] for r in v])) for k, v in runs.items()}
    ratio = mean["learned"] / mean["true"] if mean["true"] > 0 else float("nan")
    total = time.perf_counter() - t_start
    print(
        f"\n{args.algorithm}, {args.iterations * args.updates} updates of 256, "
        f"{len(data['columns']['obs'])} transitions, {args.seeds} seeds "
        f"(normalized: random {low:.1f} = 0, expert {high:.1f} = 1)"
    )
    for name in runs:
        values = " ".join(f"{r['normalized']:.2f}" for r in runs[name])
        returns = " ".join(f"{r['return']:.1f}" for r in runs[name])
        print(f"  {name:8s} rewards: normalized {mean[name]:.2f} ({values}), returns {returns}")
    print(f"  learned / true: {ratio:.2f} (target >= 0.9); reward r {corr:.3f}")
    print(f"  wall: preparation {t_prepare:.0f}s, total {total:.0f}s")
    with open(os.path.join(out_dir, "offline_quality.json"), "w") as f:
        json.dump(
            {
                "args": vars(args),
                "random_return": low,
                "expert_return": high,
                "reward_correlation": corr,
                "runs": runs,
                "mean_normalized": mean,
                "ratio": ratio,
                "seconds": {"preparation": t_prepare, "total": total},
            },
            f,
            indent=2,
        )


if __name__ == "__main__":
    main()
