"""Reward-learning losses: correct values, and they learn where the answer is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch as th
from gymnasium import spaces

from ray_rewards import reward_nets as rn
from ray_rewards.train import losses
from ray_rewards.train.oracle import PreferenceOracle

OBS = spaces.Box(-1.0, 1.0, (2,), dtype=np.float32)
ACT = spaces.Box(-1.0, 1.0, (1,), dtype=np.float32)


def true_reward(obs: np.ndarray, act: np.ndarray) -> np.ndarray:
    return obs[..., 0] - 0.5 * obs[..., 1] ** 2 - act[..., 0] ** 2


def transitions(n: int, rng: np.random.Generator, shift: float = 0.0) -> dict[str, np.ndarray]:
    obs = np.clip(rng.normal(shift, 0.5, (n, 2)), -1, 1).astype(np.float32)
    act = rng.uniform(-1, 1, (n, 1)).astype(np.float32)
    new_obs = np.clip(obs + rng.normal(0, 0.1, (n, 2)), -1, 1).astype(np.float32)
    return {
        "obs": obs,
        "actions": act,
        "new_obs": new_obs,
        "terminateds": np.zeros(n, bool),
        "rewards": true_reward(obs, act).astype(np.float32),
    }


def pairs(n: int, length: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    out = {}
    for i in (1, 2):
        t = transitions(n * length, rng)
        for k, v in t.items():
            out[f"{k}_{i}"] = v.reshape(n, length, *v.shape[1:])
    out["preference"] = PreferenceOracle()(out.pop("rewards_1"), out.pop("rewards_2"), rng)
    return out


def fit(net: rn.RewardNet, loss_fn, batch, steps: int = 150, **kw) -> tuple[float, float, dict]:
    opt = th.optim.Adam(net.parameters(), lr=1e-2)
    first, _ = loss_fn(net, batch, **kw)
    for _ in range(steps):
        loss, _ = loss_fn(net, batch, **kw)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with th.no_grad():
        last, metrics = loss_fn(net, batch, **kw)
    return float(first.detach()), float(last.detach()), metrics


def test_preference_loss_is_bradley_terry_over_discounted_sums():
    th.manual_seed(0)
    net = rn.BasicRewardNet(OBS, ACT, hid_sizes=())  # linear: r = w·[s, a] + b
    batch = pairs(8, 3, np.random.default_rng(0))
    batch["preference"] = np.linspace(0, 1, 8)  # soft labels
    gamma = 0.9
    loss, metrics = losses.preference_loss(net, batch, discount_factor=gamma)

    w = net.mlp.dense_final.weight.detach().numpy()[0]
    b = net.mlp.dense_final.bias.detach().item()

    def ret(i):
        r = np.concatenate([batch[f"obs_{i}"], batch[f"actions_{i}"]], -1) @ w + b
        return r @ gamma ** np.arange(3)

    logit = ret(1) - ret(2)
    p = batch["preference"]
    expected = np.mean(np.logaddexp(0, logit) - p * logit)  # BCE with logits
    assert loss.detach().item() == pytest.approx(expected, rel=1e-5)
    assert float(metrics["accuracy"]) == pytest.approx(np.mean((logit > 0) == (p > 0.5)))


def test_preference_loss_learns_the_true_reward():
    rng = np.random.default_rng(1)
    th.manual_seed(1)
    net = rn.BasicRewardNet(OBS, ACT, hid_sizes=(16,))
    first, last, metrics = fit(net, losses.preference_loss, pairs(256, 4, rng))
    assert last < 0.5 * first
    assert float(metrics["accuracy"]) > 0.9
    held_out = transitions(500, rng)
    pred = net.predict(held_out["obs"], held_out["actions"])
    assert np.corrcoef(pred, held_out["rewards"])[0, 1] > 0.9


def test_regression_loss_learns_the_true_reward():
    th.manual_seed(2)
    net = rn.BasicRewardNet(OBS, ACT, hid_sizes=(16,))
    first, last, _ = fit(net, losses.regression_loss, transitions(512, np.random.default_rng(2)))
    assert last < 0.1 * first


def expert_vs_generator(rng: np.random.Generator, n: int = 256) -> dict[str, np.ndarray]:
    """Expert states around +0.5, generator states around -0.5: separable."""
    expert, gen = transitions(n, rng, shift=0.5), transitions(n, rng, shift=-0.5)
    batch = {k: np.concatenate([expert[k], gen[k]]) for k in expert}
    batch["is_expert"] = np.repeat([True, False], n)
    batch["action_logp"] = rng.normal(-1.0, 0.1, 2 * n).astype(np.float32)
    return batch


def test_gail_discriminator_loss_separates_expert_from_generator():
    th.manual_seed(3)
    net = rn.BasicRewardNet(OBS, ACT, hid_sizes=(16,))
    first, last, metrics = fit(
        net, losses.gail_discriminator_loss, expert_vs_generator(np.random.default_rng(3))
    )
    assert last < 0.6 * first
    assert float(metrics["accuracy"]) > 0.8


def test_airl_discriminator_loss_uses_logp_and_learns():
    th.manual_seed(4)
    net = rn.BasicShapedRewardNet(OBS, ACT, reward_hid_sizes=(16,), potential_hid_sizes=(16,))
    batch = expert_vs_generator(np.random.default_rng(4))
    # The logit is f - log π: shifting log π by c shifts the logits by -c.
    loss_a, _ = losses.airl_discriminator_loss(net, batch)
    shifted = dict(batch, action_logp=batch["action_logp"] + 100.0)
    _, metrics_b = losses.airl_discriminator_loss(net, shifted)
    assert float(metrics_b["accuracy"]) == pytest.approx(0.5)  # all logits < 0: says generator
    first, last, metrics = fit(net, losses.airl_discriminator_loss, batch)
    assert first == pytest.approx(float(loss_a.detach()))
    assert last < 0.6 * first
    assert float(metrics["accuracy"]) > 0.8


def test_airl_needs_a_shaped_net():
    net = rn.BasicRewardNet(OBS, ACT)
    with pytest.raises(TypeError, match="ShapedRewardNet"):
        losses.airl_discriminator_loss(net, expert_vs_generator(np.random.default_rng(0), 4))
    # A PredictProcessedWrapper around a shaped net is fine: forward is the shaped net's.
    shaped = rn.BasicShapedRewardNet(OBS, ACT)
    normalized = rn.NormalizedRewardNet(shaped, rn.networks.RunningNorm)
    losses.airl_discriminator_loss(normalized, expert_vs_generator(np.random.default_rng(0), 4))


def test_bad_batches_fail_with_clear_errors():
    net = rn.BasicRewardNet(OBS, ACT)
    batch = transitions(4, np.random.default_rng(0))
    with pytest.raises(KeyError, match="is_expert"):
        losses.gail_discriminator_loss(net, batch)
    with pytest.raises(ValueError, match="state: expected shape"):
        losses.regression_loss(net, dict(batch, obs=batch["obs"][:, :1]))
    with pytest.raises(ValueError, match="discount_factor"):
        losses.preference_loss(net, pairs(2, 2, np.random.default_rng(0)), discount_factor=0.0)
