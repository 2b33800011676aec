"""PPO on Pendulum-v1 trained on a learned reward, with several env runners.

1. The reward: ``--reward PATH`` loads a net saved by ray_rewards (for example by
   ``ray-rewards train``). Without it, the script makes one first: a
   ``NormalizedRewardNet(BasicRewardNet)`` regressed on the env reward of random
   Pendulum transitions with the library's ``regression_loss``, its output
   statistics fitted to those transitions, saved with ``serialize.save``.
2. The algorithm: an ordinary PPO config, plus one line,
   ``with_learned_reward(config, path)``. Env runners collect episodes as usual;
   each learner relabels them with its copy of the net before advantages are
   computed.
3. Each iteration prints the env's own episode return (what the agent is really
   judged by) beside the learned reward the learner trained on. A checkpoint
   (``--checkpoint-dir``) carries the net as ``reward_net.pt``.

Run: ``python examples/rllib_pendulum_learned_reward.py --iterations 20``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Sequence

import gymnasium as gym
import numpy as np
import ray
import torch as th
from ray.rllib.algorithms.ppo import PPOConfig

from ray_rewards import networks, serialize
from ray_rewards.reward_nets import BasicRewardNet, NormalizedRewardNet
from ray_rewards.rllib import REWARD_NET_FILE, with_learned_reward
from ray_rewards.train import regression_loss

ENV = "Pendulum-v1"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--iterations", type=int, default=5, help="PPO training iterations")
    p.add_argument("--reward", default=None, help="saved reward net (default: fit one first)")
    p.add_argument("--num-env-runners", type=int, default=2)
    p.add_argument("--envs-per-runner", type=int, default=4)
    p.add_argument("--train-batch-size", type=int, default=2000, help="env steps per iteration")
    p.add_argument("--fit-steps", type=int, default=500, help="regression steps without --reward")
    p.add_argument("--checkpoint-dir", default=None, help="save a checkpoint here at the end")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def random_transitions(num_envs: int, rounds: int, steps: int, seed: int) -> dict[str, np.ndarray]:
    """Transitions of a uniformly random policy (``steps`` < the 200-step time limit,
    so no episode ends inside a round and no autoreset step is recorded)."""
    envs = gym.make_vec(ENV, num_envs=num_envs)
    envs.action_space.seed(seed)
    cols: dict[str, list[np.ndarray]] = {k: [] for k in ("obs", "actions", "new_obs", "rewards")}
    for r in range(rounds):
        obs, _ = envs.reset(seed=seed + r)
        for _ in range(steps):
            actions = envs.action_space.sample()
            new_obs, rewards, _, _, _ = envs.step(actions)
            for k, v in zip(cols, (obs, actions, new_obs, rewards)):
                cols[k].append(v)
            obs = new_obs
    envs.close()
    data = {k: np.concatenate(v) for k, v in cols.items()}
    data["terminateds"] = np.zeros(len(data["rewards"]), dtype=np.float32)
    return data


def fit_reward_net(path: str, steps: int, seed: int) -> None:
    """Regress a reward net on random transitions and save it (normalized) at ``path``."""
    th.manual_seed(seed)
    data = random_transitions(num_envs=8, rounds=4, steps=150, seed=seed)
    env = gym.make(ENV)
    net = BasicRewardNet(env.observation_space, env.action_space, hid_sizes=(64, 64))
    optimizer = th.optim.Adam(net.parameters(), lr=3e-3)
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        idx = rng.integers(len(data["rewards"]), size=256)
        loss, _ = regression_loss(net, {k: v[idx] for k, v in data.items()})
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    normalized = NormalizedRewardNet(net, networks.RunningNorm)
    transitions = (data["obs"], data["actions"], data["new_obs"], data["terminateds"])
    normalized.predict_processed(*transitions, update_stats=True)
    corr = np.corrcoef(net.predict(*transitions), data["rewards"])[0, 1]
    serialize.save(normalized, path)
    print(
        f"fitted a reward net on {len(data['rewards'])} random transitions "
        f"(correlation with the env reward {corr:.3f}); saved to {path}"
    )


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if not ray.is_initialized():
        ray.init(include_dashboard=False)
    with tempfile.TemporaryDirectory() as tmp:
        reward_path = args.reward
        if reward_path is None:
            reward_path = os.path.join(tmp, "pendulum_reward.pt")
            fit_reward_net(reward_path, args.fit_steps, args.seed)
        config = (
            PPOConfig()
            .environment(ENV)
            .env_runners(
                num_env_runners=args.num_env_runners, num_envs_per_env_runner=args.envs_per_runner
            )
            .training(
                train_batch_size_per_learner=args.train_batch_size,
                minibatch_size=min(256, args.train_batch_size),
                num_epochs=10,
                lr=1e-3,
                gamma=0.95,
                lambda_=0.1,
                vf_loss_coeff=0.01,
                vf_clip_param=10.0,
            )
            .debugging(seed=args.seed)
        )
        algo = with_learned_reward(config, reward_path).build_algo()
        try:
            for i in range(1, args.iterations + 1):
                result = algo.train()
                env_return = result["env_runners"].get("episode_return_mean", float("nan"))
                learned = result["learned_reward"]
                print(
                    f"iteration {i}: env return {env_return:8.1f} | learned reward "
                    f"mean {learned['mean']:+.3f} (min {learned['min']:+.2f}, max "
                    f"{learned['max']:+.2f}) on {learned['num_transitions']} transitions",
                    flush=True,
                )
            if args.checkpoint_dir:
                path = algo.save_to_path(args.checkpoint_dir)
                print(f"checkpoint: {path} (reward net: {os.path.join(path, REWARD_NET_FILE)})")
        finally:
            algo.stop()


if __name__ == "__main__":
    main()
