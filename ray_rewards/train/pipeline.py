"""The main job: preference-based reward learning end to end, on Ray.

1. **Rollouts** (RLlib): a uniformly random policy, and a PPO policy trained briefly
   on the env's reward, give diverse episodes (the random policy covers the state
   space, the trained one the states a learning agent reaches).
2. **Preferences**: fragments cut from those episodes are paired and labeled by
   :class:`~ray_rewards.train.oracle.PreferenceOracle` from the env's true reward;
   train/held-out pairs are split by episode and written as Parquet.
3. **Reward training** (Ray Train): :func:`ray_rewards.train.trainer.train`
   fits a ``NormalizedRewardNet(BasicRewardNet)`` with the Bradley–Terry loss.
4. **RL** (RLlib): PPO on the learned reward
   (:func:`ray_rewards.rllib.with_learned_reward`) and PPO on the true reward, same
   config, seed and step budget, run side by side as two Ray tasks. Both are judged
   by the env's true return: the learning curves (what their env runners saw) and
   a final evaluation of each greedy policy.

Run ``ray-rewards pipeline`` (or call :func:`run`). Results go
to ``./results/<timestamp>/``: ``summary.json``, ``curves.csv``,
``learning_curves.png`` (with matplotlib, the ``plot`` extra), ``reward_net.pt`` and
the Parquet data.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from ray_rewards import serialize, storage
from ray_rewards.train import oracle, schemas, trainer

# A reference "expert" return for Pendulum-v1 (about what a converged SAC or PPO policy
# gets); only used to put returns on a 0 (random) .. 1 (expert) scale.
EXPERT_RETURNS = {"Pendulum-v1": -150.0}


@dataclass
class PipelineConfig:
    """Sizes of every stage; the defaults finish in a few minutes on 2 CPU cores."""

    env: str = "Pendulum-v1"
    output_dir: str | None = None
    seed: int = 0
    # 1. rollouts
    random_timesteps: int = 4000
    warmup_timesteps: int = 8000
    policy_timesteps: int = 4000
    # 2. preferences
    fragment_length: int = 25
    num_pairs: int = 2000
    eval_fraction: float = 0.2
    oracle_temperature: float = 0.0
    # 3. reward training
    hid_sizes: tuple[int, ...] = (64, 64)
    # Smooth units extrapolate better than ReLU to states the rollouts rarely visit
    # (for Pendulum: upright and slow, where a good policy spends its time).
    activation: str = "SiLU"
    epochs: int = 15
    batch_size: int = 64
    lr: float = 1e-3
    num_workers: int = 1
    # 4. RL
    ppo_timesteps: int = 100_000
    eval_episodes: int = 32


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


def _log(msg: str) -> None:
    print(f"[pipeline {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _train_until(algo: Any, timesteps: int, label: str) -> list[tuple[int, float]]:
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
            _log(f"{label}: {steps}/{timesteps} env steps, {shown}")
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


def collect_rollouts(cfg: PipelineConfig) -> tuple[dict[str, np.ndarray], np.ndarray, float]:
    """Stage 1: transitions (with true rewards) and chunk lengths from a random and a
    briefly trained PPO policy; also the random policy's mean return.
    """
    algo = ppo_config(cfg.env, cfg.seed, cfg.ppo_timesteps).build_algo()
    try:
        _train_until(algo, cfg.warmup_timesteps, "rollouts: warm-up PPO")
        policy_eps = algo.env_runner.sample(num_timesteps=cfg.policy_timesteps, explore=True)
        # New episodes: a policy's episode cannot go on with random actions (those
        # record no action log-probabilities).
        random_eps = algo.env_runner.sample(
            num_timesteps=cfg.random_timesteps, random_actions=True, force_reset=True
        )
        random_return = evaluate(algo, cfg.eval_episodes, random_actions=True)
        _log(
            f"rollouts: {cfg.policy_timesteps} steps of the warm-up policy, "
            f"{cfg.random_timesteps} random steps (random return {random_return:.1f})"
        )
        # Random-action episodes hold env actions, policy episodes the RLModule's:
        # the latter are unsquashed as RLlib (and the learned-reward connector) does.
        parts = [
            oracle.episodes_to_transitions(random_eps),
            oracle.episodes_to_transitions(
                policy_eps,
                action_space=algo.env_runner.env.single_action_space,
                normalize_actions=algo.config.normalize_actions,
                clip_actions=algo.config.clip_actions,
            ),
        ]
    finally:
        algo.stop()
    transitions = {k: np.concatenate([p[0][k] for p in parts]) for k in parts[0][0]}
    lengths = np.concatenate([p[1] for p in parts])
    return transitions, lengths, random_return


def _split_chunks(
    transitions: dict[str, np.ndarray], lengths: np.ndarray, chunks: np.ndarray
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    starts = np.cumsum(lengths) - lengths
    rows = np.concatenate([np.arange(starts[c], starts[c] + lengths[c]) for c in chunks])
    return {k: v[rows] for k, v in transitions.items()}, lengths[chunks]


def build_preferences(
    cfg: PipelineConfig,
    transitions: dict[str, np.ndarray],
    lengths: np.ndarray,
    data_dir: str,
) -> dict[str, str]:
    """Stage 2: oracle-labeled train/eval pairs and held-out transitions, as Parquet."""
    rng = np.random.default_rng(cfg.seed)
    obs_space, act_space = trainer.env_spaces(cfg.env)
    chunks = rng.permutation(len(lengths))
    num_eval = max(1, int(round(cfg.eval_fraction * len(lengths))))
    label = oracle.PreferenceOracle(temperature=cfg.oracle_temperature)
    pair_schema = schemas.preference_schema(obs_space, act_space, cfg.fragment_length)
    paths = {}
    for name, part, num_pairs in (
        ("train", chunks[num_eval:], cfg.num_pairs),
        ("eval", chunks[:num_eval], max(1, int(cfg.num_pairs * cfg.eval_fraction))),
    ):
        split, split_lengths = _split_chunks(transitions, lengths, part)
        pairs = oracle.preference_pairs(
            split,
            split_lengths,
            num_pairs=num_pairs,
            fragment_length=cfg.fragment_length,
            oracle=label,
            rng=rng,
        )
        paths[f"{name}_pairs"] = schemas.write_parquet(
            pairs, os.path.join(data_dir, f"{name}_pairs"), pair_schema, overwrite=True
        )
        if name == "eval":
            paths["eval_transitions"] = schemas.write_parquet(
                split,
                os.path.join(data_dir, "eval_transitions"),
                schemas.transitions_schema(obs_space, act_space, extra=["rewards"]),
                overwrite=True,
            )
    _log(f"preferences: {cfg.num_pairs} train pairs, {num_pairs} held-out pairs -> {data_dir}")
    return paths


def reward_correlation(net_path: str, transitions_path: str) -> float:
    """Pearson correlation of the net's reward with the env's on held-out transitions."""
    data = schemas.collect_numpy(schemas.read_parquet(transitions_path))
    net = serialize.load(net_path, device="cpu")
    pred = net.predict(data["obs"], data["actions"], data["new_obs"], data["terminateds"])
    return float(np.corrcoef(pred, data["rewards"])[0, 1])


def _ppo_run(env: str, seed: int, timesteps: int, episodes: int, reward_path: str | None) -> dict:
    """Stage 4, one run (a Ray task): PPO on the learned or the true reward.

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
        curve = _train_until(algo, timesteps, label)
        seconds = time.perf_counter() - t0
        final = evaluate(algo, episodes)
    finally:
        algo.stop()
    _log(f"{label}: final greedy return {final:.1f} ({seconds:.0f}s)")
    return {"curve": curve, "final_return": final, "train_seconds": seconds}


def run_rl(cfg: PipelineConfig, reward_path: str) -> dict[str, dict]:
    """Stage 4: both PPO runs side by side, one CPU each (learner + env runner)."""
    import ray

    task = ray.remote(num_cpus=0.5)(_ppo_run)
    args = (cfg.env, cfg.seed, cfg.ppo_timesteps, cfg.eval_episodes)
    learned, true = ray.get([task.remote(*args, reward_path), task.remote(*args, None)])
    return {"learned": learned, "true": true}


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


def run(cfg: PipelineConfig) -> dict[str, Any]:
    """Run all four stages; print and return the summary (also ``summary.json``)."""
    import ray
    import ray.data

    t_start = time.perf_counter()
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out_dir = os.path.abspath(cfg.output_dir or os.path.join("results", stamp))
    os.makedirs(out_dir, exist_ok=True)
    _log(f"results -> {out_dir}")
    if not ray.is_initialized():
        ray.init(include_dashboard=False, configure_logging=False)
    # The pipeline prints its own progress; Ray Data's per-dataset lines are noise here.
    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)

    t0 = time.perf_counter()
    transitions, lengths, random_return = collect_rollouts(cfg)
    paths = build_preferences(cfg, transitions, lengths, os.path.join(out_dir, "data"))
    t_data = time.perf_counter() - t0

    t0 = time.perf_counter()
    result = trainer.train(
        trainer.TrainConfig(
            train_data=paths["train_pairs"],
            eval_data=paths["eval_pairs"],
            loss="preference",
            env=cfg.env,
            net="BasicRewardNet",
            net_kwargs={"hid_sizes": list(cfg.hid_sizes), "activation": cfg.activation},
            normalize_output=True,
            epochs=cfg.epochs,
            batch_size=cfg.batch_size,
            lr=cfg.lr,
            num_workers=cfg.num_workers,
            seed=cfg.seed,
            output=os.path.join(out_dir, storage.NET_FILE),
            storage_path=os.path.join(out_dir, "ray_train"),
        )
    )
    t_reward = time.perf_counter() - t0
    corr = reward_correlation(result.net_path, paths["eval_transitions"])
    _log(
        f"reward net: held-out preference accuracy {result.history[-1]['eval_accuracy']:.3f}, "
        f"correlation with the true reward {corr:.3f}"
    )

    t0 = time.perf_counter()
    runs = run_rl(cfg, result.net_path)
    t_rl = time.perf_counter() - t0
    csv_path, png_path = write_curves(runs, out_dir)

    expert = EXPERT_RETURNS.get(cfg.env)
    summary: dict[str, Any] = {
        "config": dataclasses.asdict(cfg),
        "random_return": random_return,
        "expert_return": expert,
        "reward_eval_accuracy": result.history[-1]["eval_accuracy"],
        "reward_correlation": corr,
        "learned_final_return": runs["learned"]["final_return"],
        "true_final_return": runs["true"]["final_return"],
        # (learned - random) / (true - random): the expert return cancels out.
        "normalized_ratio": (runs["learned"]["final_return"] - random_return)
        / (runs["true"]["final_return"] - random_return),
        "seconds": {
            "rollouts_and_preferences": t_data,
            "reward_training": t_reward,
            "rl": t_rl,
            "total": time.perf_counter() - t_start,
        },
        "files": {"reward_net": result.net_path, "curves_csv": csv_path, "plot": png_path, **paths},
    }
    if expert is not None:
        for name in ("learned", "true"):
            summary[f"{name}_normalized"] = normalized_score(
                runs[name]["final_return"], random_return, expert
            )
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(format_summary(summary))
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """The summary table printed at the end of the pipeline."""
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
        f"reward net: held-out preference accuracy {summary['reward_eval_accuracy']:.3f}, "
        f"Pearson r with the true reward {summary['reward_correlation']:.3f}",
        "time: "
        + ", ".join(f"{k.replace('_', ' ')} {v:.0f}s" for k, v in summary["seconds"].items()),
        f"reward net: {files['reward_net']}",
        f"curves: {files['curves_csv']}",
        f"plot: {files['plot']}"
        if files["plot"]
        else "plot: not written (matplotlib is not installed: pip install 'ray_rewards[plot]')",
    ]
    return "\n".join(lines)
