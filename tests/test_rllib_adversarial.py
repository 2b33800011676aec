"""GAIL/AIRL on RLlib (with_adversarial_reward): formulas, the discriminator learning,
several learners in step, checkpoints, demonstrations, and bad input refused early."""

from __future__ import annotations

import math
import os

import gymnasium as gym
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch as th
import torch.nn.functional as F  # noqa: N812
from ray.rllib.algorithms.algorithm import Algorithm
from ray.rllib.algorithms.ppo import PPOConfig
from ray.rllib.algorithms.sac import SACConfig
from ray.rllib.core.columns import Columns

from ray_rewards import serialize
from ray_rewards.networks import RunningNorm
from ray_rewards.reward_nets import (
    BasicRewardNet,
    BasicShapedRewardNet,
    NormalizedRewardNet,
    RewardNetFromDiscriminatorLogit,
)
from ray_rewards.rllib import REWARD_NET_FILE, AdversarialRewards, with_adversarial_reward
from ray_rewards.rllib._compat import config_learner_connector, learner_pipeline
from ray_rewards.rllib.demonstrations import Demonstrations
from ray_rewards.rllib.relabel_connector import find_relabel_pieces
from ray_rewards.rllib.reward_state import OPTIMIZER_FILE
from ray_rewards.train.losses import discriminator_metrics

CARTPOLE = gym.make("CartPole-v1")
PENDULUM = gym.make("Pendulum-v1")


def expert_action(obs: np.ndarray) -> int:
    """A CartPole controller that balances for all 500 steps."""
    return int(obs[2] + 0.3 * obs[3] + 0.01 * obs[0] + 0.1 * obs[1] > 0)


def cartpole_demos(episodes: int = 4, max_steps: int = 500) -> dict[str, np.ndarray]:
    env = gym.make("CartPole-v1", max_episode_steps=max_steps)
    cols: dict[str, list] = {"obs": [], "actions": [], "new_obs": [], "terminateds": []}
    for seed in range(episodes):
        obs, _ = env.reset(seed=seed)
        done = False
        while not done:
            action = expert_action(obs)
            new_obs, _, terminated, truncated, _ = env.step(action)
            for key, value in zip(cols, (obs, action, new_obs, terminated)):
                cols[key].append(value)
            obs, done = new_obs, terminated or truncated
    return {k: np.array(v) for k, v in cols.items()}


DEMOS = cartpole_demos()


def ppo(**env_runners) -> PPOConfig:
    return (
        PPOConfig()
        .environment("CartPole-v1")
        .env_runners(**{"num_env_runners": 0, **env_runners})
        .training(train_batch_size_per_learner=500, minibatch_size=250, num_epochs=2)
        .rl_module(model_config={"fcnet_hiddens": [16]})
        .reporting(min_time_s_per_iteration=0)
        .debugging(seed=0)
    )


def pieces(algo: Algorithm) -> list[AdversarialRewards]:
    found = algo.learner_group.foreach_learner(
        lambda learner: find_relabel_pieces(learner_pipeline(learner))[0].get_state()
    )
    return [r.get() for r in found]


def assert_same_state(a: dict, b: dict) -> None:
    assert a["reward_net"].keys() == b["reward_net"].keys()
    for key in a["reward_net"]:
        np.testing.assert_array_equal(a["reward_net"][key], b["reward_net"][key], err_msg=key)
    flat_a = th.utils._pytree.tree_leaves(a["optimizer"])
    flat_b = th.utils._pytree.tree_leaves(b["optimizer"])
    assert len(flat_a) == len(flat_b) > 0
    for x, y in zip(flat_a, flat_b):
        if isinstance(x, th.Tensor):
            th.testing.assert_close(x, y, rtol=0, atol=0)
        else:
            assert x == y


# ---------------------------------------------------------------------------------------
# Formulas
# ---------------------------------------------------------------------------------------


def test_gail_reward_is_minus_log_one_minus_d():
    net = BasicRewardNet(CARTPOLE.observation_space, CARTPOLE.action_space)
    gail = RewardNetFromDiscriminatorLogit(net)
    obs, acts = DEMOS["obs"][:16], DEMOS["actions"][:16]
    logit = net.predict(obs, acts, None, None).astype(np.float64)
    d = 1 / (1 + np.exp(-logit))
    np.testing.assert_allclose(gail.predict(obs, acts, None, None), -np.log(1 - d), rtol=1e-5)


def test_discriminator_metrics_by_hand():
    logits = th.tensor([2.0, -1.0, 0.5, -3.0, 1.0])
    labels = th.tensor([1.0, 1.0, 0.0, 0.0, 0.0])
    m = discriminator_metrics(logits, labels)
    assert m["disc_accuracy"] == pytest.approx(2 / 5)
    assert m["disc_accuracy_expert"] == pytest.approx(1 / 2)
    assert m["disc_accuracy_policy"] == pytest.approx(1 / 3)
    assert m["expert_logit_mean"] == pytest.approx(0.5)
    assert m["policy_logit_mean"] == pytest.approx(-0.5)
    p = 1 / (1 + np.exp(-logits.numpy().astype(np.float64)))
    entropy = -(p * np.log(p) + (1 - p) * np.log(1 - p)).mean()
    assert m["disc_entropy"] == pytest.approx(entropy, rel=1e-5)


def test_airl_logit_is_f_minus_log_pi_of_the_rlmodule(ray_session):
    net = BasicShapedRewardNet(CARTPOLE.observation_space, CARTPOLE.action_space)
    config = with_adversarial_reward(ppo(), net, DEMOS, algo="airl")
    module = config.get_rl_module_spec(env=CARTPOLE).build()
    piece = config_learner_connector(config)(CARTPOLE.observation_space, CARTPOLE.action_space)[0]
    assert isinstance(piece, AdversarialRewards) and piece.algo == "airl"
    rows = tuple(DEMOS[c][:32] for c in ("obs", "actions", "new_obs", "terminateds"))
    got = piece.logits(rows, module).detach().numpy()
    f = piece.reward_net.predict(*rows)
    dist_inputs = module.forward_inference({Columns.OBS: th.as_tensor(rows[0])})[
        Columns.ACTION_DIST_INPUTS
    ].detach()
    log_pi = F.log_softmax(dist_inputs.double(), -1)[np.arange(32), rows[1]].numpy()
    np.testing.assert_allclose(got, f - log_pi, rtol=1e-5, atol=1e-6)


def test_airl_log_pi_of_box_actions_is_taken_in_rlmodule_units(ray_session):
    net = BasicShapedRewardNet(PENDULUM.observation_space, PENDULUM.action_space)
    rng = np.random.default_rng(0)
    obs = rng.uniform(-1, 1, (64, 3)).astype(np.float32)
    acts = rng.uniform(-2, 2, (64, 1)).astype(np.float32)
    acts[:2, 0] = [-2.0, 2.0]  # on the bounds: clipped inside the open interval
    demos = {"obs": obs, "actions": acts, "new_obs": obs, "terminateds": np.zeros(64, bool)}
    config = PPOConfig().environment("Pendulum-v1").rl_module(model_config={"fcnet_hiddens": [8]})
    config = with_adversarial_reward(config, net, demos, algo="airl")
    module = config.get_rl_module_spec(env=PENDULUM).build()
    piece = config_learner_connector(config)(PENDULUM.observation_space, PENDULUM.action_space)[0]
    got = piece.log_policy(obs, acts, module).numpy()
    inputs = module.forward_inference({Columns.OBS: th.as_tensor(obs)})[Columns.ACTION_DIST_INPUTS]
    mean, log_std = (t.detach().double().numpy()[:, 0] for t in inputs.chunk(2, dim=-1))
    a = np.clip(acts[:, 0] / 2.0, -1 + 1e-6, 1 - 1e-6)
    want = -0.5 * ((a - mean) / np.exp(log_std)) ** 2 - log_std - 0.5 * math.log(2 * math.pi)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------
# Training inside RLlib
# ---------------------------------------------------------------------------------------


def test_the_discriminator_learns_to_tell_expert_from_policy(ray_session):
    net = BasicRewardNet(CARTPOLE.observation_space, CARTPOLE.action_space, hid_sizes=(32,))
    config = with_adversarial_reward(
        ppo(num_env_runners=2), net, DEMOS, n_disc_updates=16, disc_lr=3e-3
    )
    algo = config.build_algo()
    try:
        accuracies = [algo.train()["learned_reward"]["disc_accuracy"] for _ in range(4)]
        learned = algo.train()["learned_reward"]
    finally:
        algo.stop()
    # An untrained policy balances for a few dozen steps; the expert for 500.
    assert accuracies[-1] > 0.8, accuracies
    for key in ("disc_loss", "disc_entropy", "expert_logit_mean", "policy_logit_mean"):
        assert np.isfinite(learned[key]), key
    assert learned["expert_logit_mean"] > learned["policy_logit_mean"]
    assert learned["num_transitions"] >= 500 and learned["mean"] > 0  # -log(1 - D) > 0


def test_two_learners_hold_the_same_discriminator(ray_session):
    net = BasicRewardNet(
        CARTPOLE.observation_space, CARTPOLE.action_space, normalize_input_layer=RunningNorm
    )
    config = with_adversarial_reward(ppo().learners(num_learners=2), net, DEMOS)
    algo = config.build_algo()
    try:
        before = pieces(algo)[0]
        algo.train()
        first, second = pieces(algo)
    finally:
        algo.stop()
    assert_same_state(first, second)  # weights, merged statistics, optimizer
    moved = [
        k
        for k in first["reward_net"]
        if not np.array_equal(first["reward_net"][k], before["reward_net"][k])
    ]
    assert "_base.mlp.dense0.weight" in moved and "_base.mlp.normalize_input.running_mean" in moved


def test_checkpoint_restores_discriminator_weights_and_optimizer(ray_session, tmp_path):
    net = BasicShapedRewardNet(CARTPOLE.observation_space, CARTPOLE.action_space)
    algo = with_adversarial_reward(ppo(), net, DEMOS, algo="airl").build_algo()
    try:
        algo.train()
        saved = pieces(algo)[0]
        path = algo.save_to_path(str(tmp_path / "ckpt"))
    finally:
        algo.stop()
    assert os.path.exists(os.path.join(path, OPTIMIZER_FILE))
    restored = Algorithm.from_checkpoint(path)
    try:
        assert_same_state(pieces(restored)[0], saved)
        restored.train()  # and it goes on training
    finally:
        restored.stop()
    reward_file = os.path.join(path, REWARD_NET_FILE)
    unshaped = serialize.load_reward("RewardNet_unshaped", reward_file, None)
    base = serialize.load(reward_file).base
    rows = [DEMOS[c][:8] for c in ("obs", "actions", "new_obs", "terminateds")]
    np.testing.assert_allclose(unshaped(*rows), base.predict(*rows), rtol=1e-6)


def test_sac_relabels_replay_samples_and_trains_the_discriminator(ray_session):
    rng = np.random.default_rng(0)
    obs = rng.uniform(-1, 1, (300, 3)).astype(np.float32)
    demos = {
        "obs": obs,
        "actions": rng.uniform(-2, 2, (300, 1)).astype(np.float32),
        "new_obs": obs,
        "terminateds": np.zeros(300, bool),
    }
    net = BasicShapedRewardNet(PENDULUM.observation_space, PENDULUM.action_space)
    config = (
        SACConfig()
        .environment("Pendulum-v1")
        .env_runners(num_env_runners=0, rollout_fragment_length=50)
        .training(num_steps_sampled_before_learning_starts=100, train_batch_size_per_learner=64)
        .rl_module(model_config={"fcnet_hiddens": [16]})
        .reporting(min_time_s_per_iteration=0, min_sample_timesteps_per_iteration=200)
        .debugging(seed=0)
    )
    algo = with_adversarial_reward(config, net, demos, algo="airl", disc_batch_size=64).build_algo()
    try:
        learned = {}
        for _ in range(3):
            learned = algo.train().get("learned_reward", {})
    finally:
        algo.stop()
    assert learned["num_transitions"] > 0 and np.isfinite(learned["disc_loss"])


# ---------------------------------------------------------------------------------------
# Demonstrations
# ---------------------------------------------------------------------------------------


def write_demos(path, demos, rows_per_group: int) -> None:
    table = pa.table(
        {
            "obs": pa.array(list(demos["obs"]), pa.list_(pa.float32(), 4)),
            "actions": pa.array(demos["actions"], pa.int64()),
            "new_obs": pa.array(list(demos["new_obs"]), pa.list_(pa.float32(), 4)),
            "terminateds": pa.array(demos["terminateds"]),
        }
    )
    os.makedirs(path, exist_ok=True)
    pq.write_table(table, os.path.join(path, "part-0.parquet"), row_group_size=rows_per_group)


def test_parquet_demonstrations_are_read_in_shares_and_windows(tmp_path):
    net = BasicRewardNet(CARTPOLE.observation_space, CARTPOLE.action_space)
    n = len(DEMOS["obs"])
    ids = DEMOS["obs"].copy()
    ids[:, 0] = np.arange(n)  # row ids, to see which rows each learner draws
    write_demos(tmp_path / "demos", {**DEMOS, "obs": ids}, rows_per_group=100)
    demos = Demonstrations.from_source(str(tmp_path / "demos"), net)
    assert demos.arrays is None and demos.num_rows == n
    groups = -(-n // 100)
    seen = []
    for rank in range(2):
        sampler = demos.sampler(rank, 2, seed=0, buffer_rows=150)
        assert len(sampler.window) == 2  # two groups of 100 rows make the window
        drawn = np.concatenate([sampler.sample(64)[0][:, 0] for _ in range(60)]).astype(int)
        mine = {g for g in range(groups) if g % 2 == rank}
        assert {int(r) // 100 for r in drawn} == mine  # its share, every group of it in turn
        seen.append(set(drawn.tolist()))
    assert not seen[0] & seen[1]


def test_datasets_and_imitation_transitions_are_accepted(ray_session):
    import ray.data

    net = BasicRewardNet(CARTPOLE.observation_space, CARTPOLE.action_space)
    ds = ray.data.from_items([{k: v[i] for k, v in DEMOS.items()} for i in range(200)])
    demos = Demonstrations.from_source(ds, net)
    assert demos.num_rows == 200
    np.testing.assert_array_equal(np.sort(demos.arrays[1]), np.sort(DEMOS["actions"][:200]))

    class Transitions:  # imitation's field names
        obs, acts, next_obs = DEMOS["obs"], DEMOS["actions"], DEMOS["new_obs"]
        dones = DEMOS["terminateds"]

    assert Demonstrations.from_source(Transitions(), net).num_rows == len(DEMOS["obs"])


# ---------------------------------------------------------------------------------------
# Bad input: refused before anything runs
# ---------------------------------------------------------------------------------------


ROWS = np.arange(len(DEMOS["obs"]))


def _bad(**changes):
    return {**DEMOS, **changes}


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (
            lambda: with_adversarial_reward(
                ppo(),
                BasicRewardNet(CARTPOLE.observation_space, CARTPOLE.action_space),
                _bad(obs=DEMOS["obs"][:, :3], new_obs=DEMOS["new_obs"][:, :3]),
            ),
            ValueError,
            r"column 'obs': expected rows of shape \(4,\)",
        ),
        (
            lambda: with_adversarial_reward(
                ppo(),
                BasicRewardNet(CARTPOLE.observation_space, CARTPOLE.action_space),
                {k: v[:0] for k, v in DEMOS.items()},
            ),
            ValueError,
            "no transitions",
        ),
        (
            lambda: with_adversarial_reward(
                ppo(),
                BasicRewardNet(CARTPOLE.observation_space, CARTPOLE.action_space),
                _bad(
                    obs=np.where(np.arange(len(DEMOS["obs"]))[:, None] == 7, np.nan, DEMOS["obs"])
                ),
            ),
            ValueError,
            r"column 'obs' holds NaN or inf at rows 7 of",
        ),
        (
            lambda: with_adversarial_reward(
                ppo(),
                BasicRewardNet(CARTPOLE.observation_space, CARTPOLE.action_space),
                DEMOS,
                algo="airl",
            ),
            ValueError,
            "AIRL needs a shaped reward net",
        ),
        (
            lambda: with_adversarial_reward(
                ppo(),
                NormalizedRewardNet(
                    BasicRewardNet(CARTPOLE.observation_space, CARTPOLE.action_space), RunningNorm
                ),
                DEMOS,
            ),
            ValueError,
            "GAIL trains the net's forward as the logit",
        ),
        (
            lambda: with_adversarial_reward(
                SACConfig().environment("Pendulum-v1").training(n_step=3),
                BasicRewardNet(PENDULUM.observation_space, PENDULUM.action_space),
                {
                    "obs": np.zeros((4, 3), np.float32),
                    "actions": np.zeros((4, 1), np.float32),
                    "new_obs": np.zeros((4, 3), np.float32),
                    "terminateds": np.zeros(4, bool),
                },
            ),
            ValueError,
            "n_step=3",
        ),
        (
            lambda: with_adversarial_reward(
                ppo(),
                BasicRewardNet(CARTPOLE.observation_space, CARTPOLE.action_space),
                "/nonexistent/demos",
            ),
            FileNotFoundError,
            "demonstrations /nonexistent/demos: no such file",
        ),
        (
            lambda: with_adversarial_reward(
                ppo(),
                BasicRewardNet(CARTPOLE.observation_space, CARTPOLE.action_space),
                DEMOS,
                algo="gan",
            ),
            ValueError,
            r"algo must be one of \('gail', 'airl'\), got 'gan'",
        ),
        (
            lambda: with_adversarial_reward(
                ppo(),
                BasicRewardNet(CARTPOLE.observation_space, CARTPOLE.action_space),
                DEMOS,
                n_disc_updates=0,
            ),
            ValueError,
            "n_disc_updates must be an integer >= 1, got 0",
        ),
    ],
)
def test_bad_input_is_refused_before_anything_runs(make, error, message):
    with pytest.raises(error, match=message):
        make()


def test_a_net_for_other_spaces_is_refused_at_build(ray_session):
    net = BasicRewardNet(PENDULUM.observation_space, PENDULUM.action_space)
    demos = {
        "obs": np.zeros((4, 3), np.float32),
        "actions": np.zeros((4, 1), np.float32),
        "new_obs": np.zeros((4, 3), np.float32),
        "terminateds": np.zeros(4, bool),
    }
    with pytest.raises(ValueError, match="observation space .* does not match the environment"):
        with_adversarial_reward(ppo(), net, demos).build_algo()


@pytest.mark.skipif(not th.cuda.is_available(), reason="needs a CUDA device")
def test_the_discriminator_trains_on_the_learners_gpu(ray_session):
    net = BasicShapedRewardNet(CARTPOLE.observation_space, CARTPOLE.action_space)
    config = ppo().learners(num_learners=0, num_gpus_per_learner=1)
    algo = with_adversarial_reward(config, net, DEMOS, algo="airl").build_algo()
    try:
        learned = algo.train()["learned_reward"]
        devices = algo.learner_group.foreach_learner(
            lambda learner: str(
                find_relabel_pieces(learner_pipeline(learner))[0].discriminator.device
            )
        )
    finally:
        algo.stop()
    assert [d.get() for d in devices] == ["cuda:0"]
    assert np.isfinite(learned["disc_loss"]) and learned["num_transitions"] >= 500


@pytest.mark.slow
def test_gail_learns_cartpole_from_twenty_perfect_episodes(ray_session):
    """Default options, 2,000-step batches: an env return >= 200 within 120k env steps."""
    net = BasicRewardNet(CARTPOLE.observation_space, CARTPOLE.action_space)
    config = (
        PPOConfig()
        .environment("CartPole-v1")
        .env_runners(num_env_runners=2, num_envs_per_env_runner=4)
        .training(train_batch_size_per_learner=2000, minibatch_size=500, num_epochs=10, lr=3e-4)
        .reporting(min_time_s_per_iteration=0)
        .debugging(seed=0)
    )
    algo = with_adversarial_reward(config, net, cartpole_demos(episodes=20)).build_algo()
    best, steps = 0.0, 0
    try:
        while steps < 120_000 and best < 200:
            runners = algo.train()["env_runners"]
            steps = runners["num_env_steps_sampled_lifetime"]
            best = max(best, runners.get("episode_return_mean", 0.0))
    finally:
        algo.stop()
    assert best >= 200, f"best return {best} after {steps} env steps"
