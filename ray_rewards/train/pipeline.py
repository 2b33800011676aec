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

With ``online`` (``ray-rewards pipeline --online``) stages 1-3 happen inside the RL
run instead: :mod:`ray_rewards.train.online_pipeline`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from ray_rewards import serialize, storage
from ray_rewards.train import oracle, schemas, trainer
from ray_rewards.train.ppo_runs import (
    evaluate,
    log,
    ppo_config,
    ppo_run,
    results_dir,
    summarize,
    train_until,
)


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
    # online (stages 1-3 inside the RL run): the label budget and pair selection
    online: bool = False
    num_labels: int = 500
    selection: str = "uniform"


def collect_rollouts(cfg: PipelineConfig) -> tuple[dict[str, np.ndarray], np.ndarray, float]:
    """Stage 1: transitions (with true rewards) and chunk lengths from a random and a
    briefly trained PPO policy; also the random policy's mean return.
    """
    algo = ppo_config(cfg.env, cfg.seed, cfg.ppo_timesteps).build_algo()
    try:
        train_until(algo, cfg.warmup_timesteps, "rollouts: warm-up PPO")
        policy_eps = algo.env_runner.sample(num_timesteps=cfg.policy_timesteps, explore=True)
        # New episodes: a policy's episode cannot go on with random actions (those
        # record no action log-probabilities).
        random_eps = algo.env_runner.sample(
            num_timesteps=cfg.random_timesteps, random_actions=True, force_reset=True
        )
        random_return = evaluate(algo, cfg.eval_episodes, random_actions=True)
        log(
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
    log(f"preferences: {cfg.num_pairs} train pairs, {num_pairs} held-out pairs -> {data_dir}")
    return paths


def train_reward(cfg: PipelineConfig, paths: dict[str, str], out_dir: str) -> Any:
    """Stage 3: ``NormalizedRewardNet(BasicRewardNet)`` trained with Ray Train on the
    pairs of :func:`build_preferences` (``paths``); saved as ``out_dir/reward_net.pt``.
    Returns the ``trainer.train`` result.
    """
    return trainer.train(
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


def reward_correlation(net_path: str, transitions_path: str) -> float:
    """Pearson correlation of the net's reward with the env's on held-out transitions."""
    data = schemas.collect_numpy(schemas.read_parquet(transitions_path))
    net = serialize.load(net_path, device="cpu")
    pred = net.predict(data["obs"], data["actions"], data["new_obs"], data["terminateds"])
    return float(np.corrcoef(pred, data["rewards"])[0, 1])


def run_rl(cfg: PipelineConfig, reward_path: str) -> dict[str, dict]:
    """Stage 4: both PPO runs side by side, one CPU each (learner + env runner)."""
    import ray

    task = ray.remote(num_cpus=0.5)(ppo_run)
    args = (cfg.env, cfg.seed, cfg.ppo_timesteps, cfg.eval_episodes)
    learned, true = ray.get([task.remote(*args, reward_path), task.remote(*args, None)])
    return {"learned": learned, "true": true}


def run(cfg: PipelineConfig) -> dict[str, Any]:
    """Run all four stages (or the online form); print and return the summary (also
    ``summary.json``).
    """
    if cfg.online:
        from ray_rewards.train import online_pipeline

        return online_pipeline.run(cfg)
    import ray
    import ray.data

    t_start = time.perf_counter()
    out_dir = results_dir(cfg.output_dir)
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
    result = train_reward(cfg, paths, out_dir)
    t_reward = time.perf_counter() - t0
    corr = reward_correlation(result.net_path, paths["eval_transitions"])
    log(
        f"reward net: held-out preference accuracy {result.history[-1]['eval_accuracy']:.3f}, "
        f"correlation with the true reward {corr:.3f}"
    )

    t0 = time.perf_counter()
    runs = run_rl(cfg, result.net_path)
    t_rl = time.perf_counter() - t0
    accuracy = result.history[-1]["eval_accuracy"]
    return summarize(
        dataclasses.asdict(cfg),
        runs,
        random_return,
        out_dir,
        reward={"reward_eval_accuracy": accuracy, "reward_correlation": corr},
        reward_line=f"reward net: held-out preference accuracy {accuracy:.3f}, "
        f"Pearson r with the true reward {corr:.3f}",
        seconds={
            "rollouts_and_preferences": t_data,
            "reward_training": t_reward,
            "rl": t_rl,
            "total": time.perf_counter() - t_start,
        },
        files={"reward_net": result.net_path, **paths},
    )
