"""PPO runs both forms of the main job share (``ray-rewards pipeline``, offline and
``--online``): the PPO config, training to a step budget with progress lines,
greedy evaluation, learning curves and the printed summary table.
"""

from __future__ import annotations

import csv
import datetime
import json
import os
import time
from typing import Any

import numpy as np

# A reference "expert" return for Pendulum-v1 (about what a converged SAC or PPO policy
# gets); only used to put returns on a 0 (random) .. 1 (expert) scale.
EXPERT_RETURNS = {"Pendulum-v1": -150.0}


def ppo_config(env: str, seed: int, timesteps: int, num_env_runners: int = 0) -> Any:
    """The PPO config of every RL run: small and quick on a laptop CPU.

    Short horizon (γ=0.95, λ=0.1) and a small value-loss weight as in RLlib's
    Pendulum example; large minibatches keep the number of optimizer steps (the
    cost on a CPU) low; the learning rate decays linearly from 1e-3 to 1e-4 over
    ``timesteps`` env steps, which steadies the final policy (what is compared).
    Learning happens in the calling process; sampling too with
    ``num_env_runners=0``, else in that many env-runner actors of half a CPU each
    (PPO samples and learns in turn, so a run's learner and sampler share a CPU).
    """
    import torch
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig

    return (
        PPOConfig()
        .environment(env)
        .env_runners(
            num_env_runners=num_env_runners,
            num_envs_per_env_runner=8,
            num_cpus_per_env_runner=0.5,
        )
        .learners(num_learners=0)
        .training(
            train_batch_size_per_learner=1024,
            minibatch_size=256,
            num_epochs=20,
            lr=[[0, 1e-3], [timesteps, 1e-4]],
            gamma=0.95,
            lambda_=0.1,
            vf_loss_coeff=0.01,
            vf_clip_param=10.0,
        )
        .rl_module(
            model_config=DefaultModelConfig(
                fcnet_activation="relu",
                fcnet_kernel_initializer=torch.nn.init.xavier_uniform_,
                fcnet_bias_initializer=torch.nn.init.zeros_,
            )
        )
        .reporting(metrics_num_episodes_for_smoothing=8, min_time_s_per_iteration=0)
        .debugging(seed=seed)
    )


def log(msg: str) -> None:
    """One progress line of the main job, time-stamped."""
    print(f"[pipeline {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def results_dir(output_dir: str | None) -> str:
    """``output_dir``, else ``./results/<timestamp>``: made, absolute, announced."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out_dir = os.path.abspath(output_dir or os.path.join("results", stamp))
    os.makedirs(out_dir, exist_ok=True)
    log(f"results -> {out_dir}")
    return out_dir


def train_until(algo: Any, timesteps: int, label: str) -> list[tuple[int, float]]:
    """Train until ``timesteps`` env steps; the curve of (steps, true episode return)."""
    curve: list[tuple[int, float]] = []
    steps, last = 0, None
    while steps < timesteps:
        result = algo.train()
        runners = result["env_runners"]
        steps = int(runners["num_env_steps_sampled_lifetime"])
        ret = float(runners.get("episode_return_mean", np.nan))
        curve.append((steps, ret))
        # An iteration in which no episode ended has no return: show the last one.
        last = last if np.isnan(ret) else ret
        if len(curve) % 5 == 0 or steps >= timesteps:
            shown = "no episode ended yet" if last is None else f"episode return {last:.1f}"
            log(f"{label}: {steps}/{timesteps} env steps, {shown}")
    return curve


def evaluate(algo: Any, episodes: int, random_actions: bool = False) -> float:
    """Mean true return of ``episodes`` new episodes (greedy policy, or random actions),
    sampled by the algorithm's first env runner (the local one if it has no others).
    """

    def returns(runner: Any) -> list[float]:
        done = runner.sample(num_episodes=episodes, explore=False, random_actions=random_actions)
        return [e.get_return() for e in done if e.is_done]

    group = algo.env_runner_group
    remote = group.num_remote_env_runners() > 0
    per_runner = group.foreach_env_runner(
        returns, local_env_runner=not remote, remote_worker_ids=[1] if remote else None
    )
    return float(np.mean(per_runner[0][:episodes]))


def ppo_run(
    env: str,
    seed: int,
    timesteps: int,
    episodes: int,
    reward_path: str | None,
    random_baseline: bool = False,
) -> dict[str, Any]:
    """One PPO run (a Ray task): on the reward net saved at ``reward_path``, or on the
    env's reward (None); its curve, final greedy return and training time, and with
    ``random_baseline`` the random policy's return (``random_return``).

    Learns in this task's process and samples in one env-runner actor beside it,
    the setup ``benchmarks/reward_quality.py`` measured over several seeds.
    """
    from ray_rewards.rllib import with_learned_reward

    config = ppo_config(env, seed, timesteps, num_env_runners=1)
    label = "PPO on true reward"
    if reward_path is not None:
        config = with_learned_reward(config, reward_path)
        label = "PPO on learned reward"
    algo = config.build_algo()
    try:
        t0 = time.perf_counter()
        curve = train_until(algo, timesteps, label)
        seconds = time.perf_counter() - t0
        final = evaluate(algo, episodes)
        random_return = evaluate(algo, episodes, random_actions=True) if random_baseline else None
    finally:
        algo.stop()
    log(f"{label}: final greedy return {final:.1f} ({seconds:.0f}s)")
    out = {"curve": curve, "final_return": final, "train_seconds": seconds}
    if random_baseline:
        out["random_return"] = random_return
    return out


def normalized_score(ret: float, random_return: float, expert_return: float) -> float:
    """0 for the random policy's return, 1 for the expert's."""
    return (ret - random_return) / (expert_return - random_return)


def write_curves(runs: dict[str, dict], out_dir: str) -> tuple[str, str | None]:
    """``curves.csv`` and, with matplotlib, ``learning_curves.png``; returns their paths."""
    csv_path = os.path.join(out_dir, "curves.csv")
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["reward", "env_steps", "episode_return_mean"])
        for name, run in runs.items():
            writer.writerows((name, steps, ret) for steps, ret in run["curve"])
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return csv_path, None
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, run in runs.items():
        curve = np.array(run["curve"], dtype=np.float64)
        curve = curve[np.isfinite(curve[:, 1])]  # iterations in which no episode ended
        ax.plot(curve[:, 0], curve[:, 1], label=f"PPO on {name} reward")
    ax.set_xlabel("env steps")
    ax.set_ylabel("true episode return")
    ax.legend()
    ax.grid(alpha=0.3)
    png_path = os.path.join(out_dir, "learning_curves.png")
    fig.savefig(png_path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return csv_path, png_path


def summarize(
    config: dict[str, Any],
    runs: dict[str, dict],
    random_return: float,
    out_dir: str,
    *,
    reward: dict[str, Any],
    reward_line: str,
    seconds: dict[str, float],
    files: dict[str, Any],
) -> dict[str, Any]:
    """The main job's summary of its ``learned`` and ``true`` PPO runs: final returns,
    their ratio normalized by the random policy's (and by :data:`EXPERT_RETURNS` where
    known), ``reward`` (what the form of the job knows of its net), times, files and
    the curves; written to ``summary.json`` and printed with ``reward_line``.
    """
    csv_path, png_path = write_curves(runs, out_dir)
    learned, true = runs["learned"]["final_return"], runs["true"]["final_return"]
    expert = EXPERT_RETURNS.get(config["env"])
    summary: dict[str, Any] = {
        "config": config,
        "random_return": random_return,
        "expert_return": expert,
        **reward,
        "learned_final_return": learned,
        "true_final_return": true,
        # (learned - random) / (true - random): the expert return cancels out.
        "normalized_ratio": (learned - random_return) / (true - random_return),
        "seconds": seconds,
        "files": {**files, "curves_csv": csv_path, "plot": png_path},
    }
    if expert is not None:
        for name, run in runs.items():
            summary[f"{name}_normalized"] = normalized_score(
                run["final_return"], random_return, expert
            )
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(format_summary(summary, reward_line))
    return summary


def format_summary(summary: dict[str, Any], reward_line: str) -> str:
    """The summary table printed at the end of the pipeline; ``reward_line`` says how
    good the learned reward net is.
    """
    cfg = summary["config"]
    rows = [
        ("policy", "final true return", "normalized (0 random, 1 expert)"),
        ("random", f"{summary['random_return']:.1f}", "0.00"),
    ]
    for name in ("true", "learned"):
        norm = summary.get(f"{name}_normalized")
        rows.append(
            (
                f"PPO on {name} reward",
                f"{summary[f'{name}_final_return']:.1f}",
                "-" if norm is None else f"{norm:.2f}",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [
        "",
        f"== {cfg['env']}: PPO, {cfg['ppo_timesteps']} env steps each, "
        f"{cfg['eval_episodes']} greedy evaluation episodes ==",
    ]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    files = summary["files"]
    lines += [
        "",
        f"learned / true (normalized by random): {summary['normalized_ratio']:.2f}",
        reward_line,
        "time: "
        + ", ".join(f"{k.replace('_', ' ')} {v:.0f}s" for k, v in summary["seconds"].items()),
        f"reward net: {files['reward_net']}",
        f"curves: {files['curves_csv']}",
        f"plot: {files['plot']}"
        if files["plot"]
        else "plot: not written (matplotlib is not installed: pip install 'ray_rewards[plot]')",
    ]
    return "\n".join(lines)
