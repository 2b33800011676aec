"""The main job, online (``ray-rewards pipeline --online``): PPO learns its reward from
preferences while it trains, against PPO on the true reward with the same budget.

One Ray task runs PPO with :func:`~ray_rewards.rllib.with_preference_learning`: the
env runners' own fragments are labeled by a synthetic oracle
(:class:`~ray_rewards.preferences.SyntheticGatherer`) a few at a time over the first
half of the run, and the net is retrained after every round. Beside it, PPO on the
env's reward, the same config and seed. Both are judged by the true return of their
greedy policies, normalized by the random policy's.

The settings are the ones ``benchmarks/preference_quality.py`` measured (README,
"Preference comparisons on RLlib"): :func:`preference_ppo_config`.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import TYPE_CHECKING, Any

from ray_rewards import serialize, storage
from ray_rewards.train import trainer
from ray_rewards.train.ppo_runs import (
    evaluate,
    log,
    ppo_config,
    ppo_run,
    results_dir,
    summarize,
    train_until,
)

if TYPE_CHECKING:  # the config is the main job's: pipeline.run hands it over
    from ray_rewards.train.pipeline import PipelineConfig

FRAGMENT_LENGTH = 25
ENSEMBLE_SIZE = 3


def preference_net(env: str, selection: str = "uniform") -> Any:
    """The net learned online: ``NormalizedRewardNet(BasicRewardNet(64, 64))``, its
    base a 3-member ``RewardEnsemble`` for ``selection="active"``.
    """
    from ray_rewards.networks import RunningNorm
    from ray_rewards.reward_nets import BasicRewardNet, NormalizedRewardNet, RewardEnsemble

    obs_space, act_space = trainer.env_spaces(env)
    if selection == "active":
        members = [
            BasicRewardNet(obs_space, act_space, hid_sizes=(64, 64)) for _ in range(ENSEMBLE_SIZE)
        ]
        base: Any = RewardEnsemble(obs_space, act_space, members)
    else:
        base = BasicRewardNet(obs_space, act_space, hid_sizes=(64, 64))
    return NormalizedRewardNet(base, RunningNorm)


def preference_ppo_config(
    env: str,
    seed: int,
    timesteps: int,
    labels: int,
    selection: str = "uniform",
    data_dir: str | None = None,
) -> Any:
    """The pipeline's PPO (one env runner) learning its reward from ``labels``
    synthetic preferences: rounds every other iteration over the first half of the
    run (hyperbolic schedule, 10% first), fragments of 25 steps.
    """
    from ray_rewards.rllib import with_preference_learning

    config = ppo_config(env, seed, timesteps, num_env_runners=1)
    iterations = max(2, timesteps // config.train_batch_size_per_learner)
    return with_preference_learning(
        config,
        preference_net(env, selection),
        total_labels=labels,
        num_rounds=max(1, iterations // 2 - 1),
        fragment_length=FRAGMENT_LENGTH,
        selection=selection,
        seed=seed,
        data_dir=data_dir,
    )


def _online_run(cfg: PipelineConfig, out_dir: str) -> dict[str, Any]:
    """PPO learning its reward online (a Ray task); saves the final net and labels."""
    from ray_rewards.rllib import preference_rounds, state_of

    data_dir = os.path.join(out_dir, "preferences")
    config = preference_ppo_config(
        cfg.env, cfg.seed, cfg.ppo_timesteps, cfg.num_labels, cfg.selection, data_dir
    )
    label = f"PPO learning its reward ({cfg.num_labels} labels)"
    algo = config.build_algo()
    try:
        t0 = time.perf_counter()
        curve = train_until(algo, cfg.ppo_timesteps, label)
        seconds = time.perf_counter() - t0
        final = evaluate(algo, cfg.eval_episodes)
        rounds = preference_rounds(algo)
        net_path = os.path.join(out_dir, storage.NET_FILE)
        serialize.save(state_of(algo).net, net_path)
    finally:
        algo.stop()
    log(f"{label}: final greedy return {final:.1f} ({seconds:.0f}s)")
    return {
        "curve": curve,
        "final_return": final,
        "train_seconds": seconds,
        "num_labels": len(rounds.store),
        "train_accuracy": rounds.last_training.get("train_accuracy"),
        "files": {"reward_net": net_path, "labels": rounds.store.path},
    }


def run(cfg: PipelineConfig) -> dict[str, Any]:
    """Run both PPO runs side by side; print and return the summary (``summary.json``)."""
    import ray

    t_start = time.perf_counter()
    out_dir = results_dir(cfg.output_dir)
    if not ray.is_initialized():
        ray.init(include_dashboard=False, configure_logging=False)
    log(
        f"PPO learning its reward from {cfg.num_labels} synthetic preferences "
        f"({cfg.selection} pairs) beside PPO on the true reward, "
        f"{cfg.ppo_timesteps} env steps each"
    )
    online_task = ray.remote(num_cpus=0.5)(_online_run)
    true_task = ray.remote(num_cpus=0.5)(ppo_run)
    online, true = ray.get(
        [
            online_task.remote(cfg, out_dir),
            true_task.remote(
                cfg.env, cfg.seed, cfg.ppo_timesteps, cfg.eval_episodes, None, random_baseline=True
            ),
        ]
    )
    accuracy = online["train_accuracy"]
    return summarize(
        dataclasses.asdict(cfg),
        {"learned": online, "true": true},
        true["random_return"],
        out_dir,
        reward={"num_labels": online["num_labels"], "last_train_accuracy": accuracy},
        reward_line=f"reward net: learned from {online['num_labels']} synthetic labels "
        f"({cfg.selection} pairs) during the run; last retraining's accuracy "
        + ("-" if accuracy is None else f"{accuracy:.3f}"),
        seconds={"total": time.perf_counter() - t_start},
        files=online["files"],
    )
