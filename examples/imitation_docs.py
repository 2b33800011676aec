"""imitation's "Reward Networks" documentation, end to end, on ray_rewards.

Every snippet of https://imitation.readthedocs.io/en/latest/main-concepts/reward_networks.html
runs here with only the import prefix changed (``imitation`` -> ``ray_rewards``);
the one addition is ``@register_safe_class`` on the custom net, which puts it on
the allowlist of torch's safe loader (``th.load`` never runs code from a file).
Between the snippets the script steps the wrapped environment and checks that
each reward function does what the docs say.

    python examples/imitation_docs.py --steps 200
"""

from __future__ import annotations

import argparse
import os
import tempfile
from functools import partial

import numpy as np
import torch as th

from ray_rewards.reward_nets import RewardNet
from ray_rewards.serialize import register_safe_class


# --- Reward Network Architecture: a custom reward net --------------------------------
@register_safe_class  # the only line the docs do not have: allow th.load to rebuild it
class MyRewardNet(RewardNet):
    def __init__(self, observation_space, action_space):
        super().__init__(observation_space, action_space)
        # initialize your custom reward network here

    def forward(
        self,
        state: th.Tensor,  # (batch_size, *obs_shape)
        action: th.Tensor,  # (batch_size, *action_shape)
        next_state: th.Tensor,  # (batch_size, *obs_shape)
        done: th.Tensor,  # (batch_size,)
    ) -> th.Tensor:
        # implement your custom reward network here
        return th.zeros_like(done)  # (batch_size,)


def run(venv, steps: int, seed: int) -> np.ndarray:
    """Step ``venv`` with random actions; return the rewards it gave, ``(steps, n_envs)``."""
    venv.reset(seed=seed)
    venv.action_space.seed(seed)
    rewards = []
    for _ in range(steps):
        _, rew, _, _, infos = venv.step(venv.action_space.sample())
        assert infos["original_env_rew"].shape == rew.shape
        rewards.append(rew)
    return np.stack(rewards)


def main(steps: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    th.manual_seed(seed)

    # --- Replace an Environment's Reward with a Reward Network ------------------------
    from ray_rewards import util
    from ray_rewards.reward_nets import BasicRewardNet
    from ray_rewards.reward_wrapper import RewardVecEnvWrapper

    base_venv = util.make_gym_vec_env("Pendulum-v1", n_envs=3, rng=rng)
    obs_space, action_space = base_venv.single_observation_space, base_venv.single_action_space
    reward_net = BasicRewardNet(obs_space, action_space)
    venv = RewardVecEnvWrapper(base_venv, reward_net.predict_processed)
    learned = run(venv, steps, seed)
    print(f"BasicRewardNet on Pendulum-v1 x3: {learned.size} rewards, mean {learned.mean():+.4f}")

    # --- Reward Network Wrappers: normalization -----------------------------------------
    from ray_rewards.networks import RunningNorm
    from ray_rewards.reward_nets import NormalizedRewardNet

    train_reward_net = NormalizedRewardNet(
        reward_net,
        normalize_output_layer=RunningNorm,
    )
    stats = train_reward_net.normalize_output_layer
    run(RewardVecEnvWrapper(base_venv, train_reward_net.predict_processed), steps, seed)
    fitted = int(stats.count)
    # Every transition's reward updated the statistics (a reset step is no transition).
    assert 0 < fitted <= steps * 3, fitted
    print(f"NormalizedRewardNet: statistics fitted on {fitted} rewards")

    # By default predict_processed updates the statistics; freeze them for evaluation.
    eval_rew_fn = partial(reward_net.predict_processed, update_stats=False)
    frozen_fn = partial(train_reward_net.predict_processed, update_stats=False)
    normalized = run(RewardVecEnvWrapper(base_venv, frozen_fn), steps, seed)
    assert int(stats.count) == fitted, "update_stats=False must leave the statistics alone"
    np.testing.assert_array_equal(
        run(RewardVecEnvWrapper(base_venv, eval_rew_fn), steps, seed), learned
    )
    print(f"frozen normalized rewards: mean {normalized.mean():+.4f} std {normalized.std():.4f}")

    # --- Serializing and Deserializing Reward Networks ----------------------------------
    from ray_rewards.serialize import load_reward

    with tempfile.TemporaryDirectory() as tempdir:
        path = os.path.join(tempdir, "reward_net.pt")

        th.save(train_reward_net, path)
        train_reward_net = th.load(path)
        # We can also load the reward network as a reward function for use in evaluation
        eval_rew_fn_normalized = load_reward(
            reward_type="RewardNet_normalized", reward_path=path, venv=venv
        )
        eval_rew_fn_unnormalized = load_reward(
            reward_type="RewardNet_unnormalized", reward_path=path, venv=venv
        )
        # If we want to continue to update the reward networks normalization by default
        # it is frozen for evaluation and retraining
        rew_fn_normalized = load_reward(
            reward_type="RewardNet_normalized", reward_path=path, venv=venv, update_stats=True
        )

        assert int(train_reward_net.normalize_output_layer.count) == fitted
        np.testing.assert_array_equal(
            run(RewardVecEnvWrapper(base_venv, eval_rew_fn_normalized), steps, seed), normalized
        )
        np.testing.assert_array_equal(
            run(RewardVecEnvWrapper(base_venv, eval_rew_fn_unnormalized), steps, seed), learned
        )
        assert int(eval_rew_fn_normalized.net.normalize_output_layer.count) == fitted
        run(RewardVecEnvWrapper(base_venv, rew_fn_normalized), steps, seed)
        updated = int(rew_fn_normalized.net.normalize_output_layer.count)
        assert updated == 2 * fitted, (updated, fitted)  # the same rollout once more
        print(
            "th.save/th.load and load_reward: normalized and unnormalized rewards match the "
            f"trained net; update_stats=True went on fitting ({fitted} -> {updated} rewards)"
        )

        # The custom net saves and loads like the library's (it is registered).
        my_path = os.path.join(tempdir, "my_reward_net.pt")
        th.save(MyRewardNet(obs_space, action_space), my_path)
        my_net = th.load(my_path)
        zeros = run(RewardVecEnvWrapper(base_venv, my_net.predict_processed), steps, seed)
        assert type(my_net) is MyRewardNet and not zeros.any()
        print("MyRewardNet: saved, loaded with th.load, all rewards zero")
    venv.close()
    print("imitation docs flow: OK")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="env steps per rollout")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    main(args.steps, args.seed)
