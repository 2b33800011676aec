"""Reward-learning losses: plain functions of a reward net and a numpy batch.

Each loss preprocesses the batch with the net's own ``preprocess`` (validation,
one-hot, device), calls the net once on every transition of the batch, and
returns ``(loss, metrics)``: a scalar tensor to minimize and per-example means
(floats under ``no_grad``) that the trainer averages over batches and workers.
``net`` may be a ``RewardNet`` or a ``DistributedDataParallel`` wrapping one;
calling the wrapper is what makes DDP average the gradients.

Batches use the column names of :mod:`ray_rewards.train.schemas`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch as th
import torch.nn.functional as F  # noqa: N812
from torch import nn

from ray_rewards import reward_nets
from ray_rewards.train import schemas

Batch = Mapping[str, np.ndarray]
LossOutput = tuple[th.Tensor, dict[str, th.Tensor]]
LossFn = Callable[..., LossOutput]


def unwrap(net: nn.Module) -> reward_nets.RewardNet:
    """The RewardNet inside a (possibly DDP-wrapped) module."""
    inner = net.module if isinstance(net, nn.parallel.DistributedDataParallel) else net
    if not isinstance(inner, reward_nets.RewardNet):
        raise TypeError(f"expected a RewardNet (or DDP of one), got {type(inner).__name__}")
    return inner


def transition_rewards(
    net: nn.Module, obs: Any, actions: Any, new_obs: Any, terminateds: Any
) -> th.Tensor:
    """Differentiable rewards ``(B,)`` of a batch of transitions: one forward call."""
    tensors = unwrap(net).preprocess(obs, actions, new_obs, terminateds)
    rew = net(*tensors)
    if rew.shape != (tensors[0].shape[0],):
        raise ValueError(
            f"reward net forward: expected shape ({tensors[0].shape[0]},), got {tuple(rew.shape)}"
        )
    return rew


def _column(batch: Batch, name: str, like: th.Tensor) -> th.Tensor:
    if name not in batch:
        raise KeyError(f"batch: expected a {name!r} column, got columns {sorted(batch)}")
    return th.as_tensor(np.asarray(batch[name]), device=like.device).to(like.dtype)


def preference_loss(net: nn.Module, batch: Batch, *, discount_factor: float = 1.0) -> LossOutput:
    """Bradley–Terry loss over pairs of fragments.

    ``P(fragment 1 preferred) = sigmoid(R_1 - R_2)`` with ``R_i = sum_t γ^t r(s_t, a_t,
    s_t+1, done_t)`` over the ``T`` steps of fragment ``i``; the loss is the binary
    cross-entropy against ``preference`` (a probability, so soft labels work).
    Both fragments of all ``N`` pairs go through the net in one ``(2·N·T)`` batch.
    Metrics: ``accuracy`` — fraction of pairs where the predicted preference
    ``R_1 > R_2`` agrees with ``preference > 0.5`` (imitation's definition).
    """
    if not 0.0 < discount_factor <= 1.0:
        raise ValueError(f"discount_factor must be in (0, 1], got {discount_factor}")
    n, length = np.shape(batch["obs_1"])[:2]

    def both(col: str) -> np.ndarray:
        stacked = np.concatenate([batch[f"{col}_1"], batch[f"{col}_2"]])
        return stacked.reshape(2 * n * length, *stacked.shape[2:])

    rew = transition_rewards(net, *(both(c) for c in schemas.FRAGMENT_COLUMNS))
    discounts = discount_factor ** th.arange(length, device=rew.device, dtype=rew.dtype)
    returns = (rew.reshape(2, n, length) * discounts).sum(-1)
    logits = returns[0] - returns[1]
    pref = _column(batch, "preference", logits)
    loss = F.binary_cross_entropy_with_logits(logits, pref)
    with th.no_grad():
        accuracy = ((logits > 0) == (pref > 0.5)).to(logits.dtype).mean()
    return loss, {"loss": loss.detach(), "accuracy": accuracy}


def _transitions(net: nn.Module, batch: Batch) -> th.Tensor:
    return transition_rewards(net, *(batch[c] for c in schemas.TRANSITION_COLUMNS))


def _discriminator(logits: th.Tensor, batch: Batch) -> LossOutput:
    """Binary cross-entropy of discriminator logits against ``is_expert`` (expert = 1)."""
    labels = _column(batch, "is_expert", logits)
    loss = F.binary_cross_entropy_with_logits(logits, labels)
    with th.no_grad():
        accuracy = ((logits > 0) == (labels > 0.5)).to(logits.dtype).mean()
    return loss, {"loss": loss.detach(), "accuracy": accuracy}


def discriminator_metrics(logits: th.Tensor, is_expert: th.Tensor) -> dict[str, float]:
    """What imitation logs of a discriminator step with rows of both kinds: accuracy
    overall, on expert rows and on policy rows, the mean entropy of the predicted
    label, and the mean logit of each kind.
    """
    with th.no_grad():
        expert = is_expert > 0.5
        correct = ((logits > 0) == expert).to(logits.dtype)
        entropy = th.distributions.Bernoulli(logits=logits).entropy().mean()
        return {
            "disc_accuracy": float(correct.mean()),
            "disc_accuracy_expert": float(correct[expert].mean()),
            "disc_accuracy_policy": float(correct[~expert].mean()),
            "disc_entropy": float(entropy),
            "expert_logit_mean": float(logits[expert].mean()),
            "policy_logit_mean": float(logits[~expert].mean()),
        }


def is_shaped(net: reward_nets.RewardNet) -> bool:
    """Whether ``net`` is a ShapedRewardNet, possibly under PredictProcessedWrappers."""
    while isinstance(net, reward_nets.PredictProcessedWrapper):
        net = net.base
    return isinstance(net, reward_nets.ShapedRewardNet)


def airl_discriminator_loss(net: nn.Module, batch: Batch) -> LossOutput:
    """AIRL discriminator loss (Fu et al., 2018).

    ``D = exp(f) / (exp(f) + π(a|s))``, so its logit is ``f(s, a, s') - log π(a|s)``
    with ``f`` a shaped reward net (reward plus potential shaping) and ``log π`` the
    current generator policy's log-probability of the action, column
    ``action_logp``, given for expert and generator rows alike. Raises TypeError
    unless the net is a ShapedRewardNet (possibly under a PredictProcessedWrapper):
    without shaping, ``f`` cannot absorb the advantage and the recovered reward is
    not disentangled from the dynamics.
    """
    if not is_shaped(unwrap(net)):
        raise TypeError(
            f"airl_discriminator_loss: expected a ShapedRewardNet (e.g. BasicShapedRewardNet), "
            f"got {type(unwrap(net)).__name__}"
        )
    f = _transitions(net, batch)
    return _discriminator(f - _column(batch, "action_logp", f), batch)


def gail_discriminator_loss(net: nn.Module, batch: Batch) -> LossOutput:
    """GAIL discriminator loss (Ho & Ermon, 2016): the net's output is the logit of
    "this transition is the expert's" (imitation's ``logits_expert_is_high``).
    """
    return _discriminator(_transitions(net, batch), batch)


def regression_loss(net: nn.Module, batch: Batch) -> LossOutput:
    """Mean squared error to known rewards (column ``rewards``)."""
    rew = _transitions(net, batch)
    loss = F.mse_loss(rew, _column(batch, "rewards", rew))
    return loss, {"loss": loss.detach()}


LOSSES: dict[str, LossFn] = {
    "preference": preference_loss,
    "airl": airl_discriminator_loss,
    "gail": gail_discriminator_loss,
    "regression": regression_loss,
}

LOSS_COLUMNS: dict[str, tuple[str, ...]] = {
    "preference": schemas.PREFERENCE_COLUMNS,
    "airl": (*schemas.TRANSITION_COLUMNS, "is_expert", "action_logp"),
    "gail": (*schemas.TRANSITION_COLUMNS, "is_expert"),
    "regression": (*schemas.TRANSITION_COLUMNS, "rewards"),
}
