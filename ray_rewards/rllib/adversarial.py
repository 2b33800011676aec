"""GAIL and AIRL inside RLlib's learners: relabel with the discriminator, then train it.

:class:`AdversarialRewards` is a :class:`~ray_rewards.rllib.RelabelRewards` that,
every time a learner's pipeline runs it (once per update), does one round of
imitation's ``AdversarialTrainer``:

1. Relabel the update's transitions with the policy's reward under the
   discriminator *as it stands*, before any step of this round (imitation's
   order: the generator trains on the reward of the previous discriminator):
   GAIL ``-logsigmoid(-logit)``; AIRL the logit ``f(s, a, s') - log pi(a|s)``
   (or ``f`` alone, imitation's choice: option ``airl_reward``).
2. Train the discriminator for ``n_disc_updates`` steps, each on
   ``disc_batch_size`` expert transitions (from
   :class:`~ray_rewards.rllib.demonstrations.Demonstrations`) against as many
   policy transitions drawn from this update's and the last ``replay_batches``
   updates' transitions, with its own Adam optimizer. The logit is the net's
   ``forward`` (GAIL) or ``f - log pi(a|s)`` (AIRL), where ``log pi`` is the
   learner's RLModule's, evaluated on expert and policy rows alike, with actions
   in the RLModule's units (normalized; clipped inside the open interval a
   squashed distribution needs).

Several learners: every learner runs the same number of steps and averages its
gradients with the others' (one ``all_reduce`` over the torch process group RLlib
already made for its own DDP) before stepping, so the copies stay identical.
This is done here rather than by registering the net as an RLModule so that the
number of discriminator steps does not depend on the algorithm's own
epochs/minibatches, and the RLModule's optimizer and checkpoints are untouched.
The discriminator's normalization statistics are per learner within an iteration
and merged after it (see :mod:`~ray_rewards.rllib.reward_state`).

Where this differs from imitation: ``log pi`` comes from the policy before this
update's policy step (imitation evaluates it after), since the discriminator
trains in the same learner update that the policy does; and AIRL's policy reward
is by default the whole logit, entropy included, not ``f`` alone: ``f`` is
negative on average, which on envs whose episodes end early (CartPole-v1) teaches
the policy to end them; imitation runs AIRL on fixed-horizon envs instead.
"""

from __future__ import annotations

import collections
from typing import Any

import numpy as np
import torch as th
import torch.nn.functional as F  # noqa: N812
from gymnasium import spaces
from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.multi_rl_module import MultiRLModule
from ray.rllib.core.rl_module.rl_module import RLModule
from ray.rllib.utils.metrics import ALL_MODULES
from ray.rllib.utils.metrics.metrics_logger import MetricsLogger
from ray.rllib.utils.spaces.space_utils import normalize_action

from ray_rewards import networks
from ray_rewards.reward_nets import RewardNet, RewardNetFromDiscriminatorLogit
from ray_rewards.rllib.demonstrations import Arrays, Demonstrations, DemonstrationSampler
from ray_rewards.rllib.relabel_connector import LEARNED_REWARD, RelabelRewards, _module_device
from ray_rewards.train.losses import discriminator_metrics

ALGOS = ("gail", "airl")
AIRL_REWARDS = ("logit", "f")

# Squashed action distributions (SAC's) take actions strictly inside (-1, 1).
_SQUASH_MARGIN = 1e-6


class AdversarialRewards(RelabelRewards):
    """Learner-connector piece: GAIL/AIRL rewards for the policy, and discriminator steps.

    Args:
        reward_net: the policy's reward: ``RewardNetFromDiscriminatorLogit(disc)`` for
            GAIL, the shaped net (optionally under a PredictProcessedWrapper) for AIRL.
        algo: ``"gail"`` or ``"airl"``.
        demonstrations: the expert transitions.
        n_disc_updates: discriminator steps per learner update.
        disc_batch_size: expert rows per step on each learner (and as many policy rows).
        disc_lr: Adam's learning rate.
        replay_batches: earlier updates whose policy transitions stay drawable.
        buffer_rows: rows of a Parquet source each learner keeps in memory at a time.
        seed: seeds the draws (each learner its own stream).
        airl_reward: ``"logit"`` (``f - log pi``) or ``"f"``: AIRL's policy reward.
        **options: those of :class:`RelabelRewards`.
    """

    def __init__(
        self,
        reward_net: RewardNet,
        *,
        algo: str,
        demonstrations: Demonstrations,
        n_disc_updates: int,
        disc_batch_size: int,
        disc_lr: float,
        replay_batches: int,
        buffer_rows: int,
        seed: int,
        airl_reward: str = "logit",
        **options: Any,
    ):
        super().__init__(reward_net, **options)
        self.algo = algo
        self.airl_reward = airl_reward
        self._rl_module: Any = None
        gail = isinstance(reward_net, RewardNetFromDiscriminatorLogit)
        self.discriminator = reward_net.base if gail else reward_net
        self.optimizer = th.optim.Adam(self.discriminator.parameters(), lr=disc_lr)
        self.demonstrations = demonstrations
        self.n_disc_updates = n_disc_updates
        self.disc_batch_size = disc_batch_size
        self.buffer_rows = buffer_rows
        self.seed = seed
        self.replay: collections.deque[Arrays] = collections.deque(maxlen=replay_batches + 1)
        self._sampler: DemonstrationSampler | None = None
        self._rng = np.random.default_rng(seed)
        self._fresh: list[Arrays] = []

    def _predict_rows(
        self, state: np.ndarray, action: np.ndarray, next_state: np.ndarray, done: np.ndarray
    ) -> np.ndarray:
        self._fresh.append((state, action, next_state, done))
        reward = super()._predict_rows(state, action, next_state, done)
        if self.algo == "airl" and self.airl_reward == "logit":
            logp = self.log_policy(state, action, self._rl_module).cpu().numpy()
            reward = (reward - logp).astype(reward.dtype)
        return reward

    def __call__(
        self,
        *,
        rl_module: RLModule | None,
        batch: dict[str, Any],
        episodes: list[Any],
        metrics: MetricsLogger | None = None,
        **kwargs: Any,
    ) -> Any:
        """Relabel (as RelabelRewards), then train the discriminator; returns the batch."""
        self._fresh = []
        self._rl_module = rl_module
        batch = super().__call__(
            rl_module=rl_module, batch=batch, episodes=episodes, metrics=metrics, **kwargs
        )
        if self._fresh:
            self.replay.append(tuple(np.concatenate(c) for c in zip(*self._fresh)))
        self._fresh = []
        self._train(rl_module, metrics)
        return batch

    # ----------------------------------------------------------------------------------
    # The discriminator's steps
    # ----------------------------------------------------------------------------------

    def _train(self, rl_module: RLModule | None, metrics: MetricsLogger | None) -> None:
        if self._sampler is None:
            rank, world = _rank_and_world()
            self._sampler = self.demonstrations.sampler(rank, world, self.seed, self.buffer_rows)
            self._rng = np.random.default_rng([self.seed, rank, 1])
        self._move_to(_module_device(rl_module))
        policy_rows = sum(len(r[0]) for r in self.replay)
        for _ in range(self.n_disc_updates):
            expert = self._sampler.sample(self.disc_batch_size)
            # A learner that has seen no policy rows yet still steps (with expert rows
            # alone), so that every learner joins every all_reduce.
            policy = self._policy_rows(self.disc_batch_size) if policy_rows else None
            rows = expert if policy is None else tuple(map(np.concatenate, zip(expert, policy)))
            is_expert = np.zeros(len(rows[0]), dtype=np.float32)
            is_expert[: len(expert[0])] = 1.0
            with networks.training(self.discriminator):
                logits = self.logits(rows, rl_module)
                labels = th.as_tensor(is_expert, device=logits.device, dtype=logits.dtype)
                loss = F.binary_cross_entropy_with_logits(logits, labels)
                self.optimizer.zero_grad()
                loss.backward()
                _average_gradients(self.discriminator)
                self.optimizer.step()
        if metrics is not None and policy_rows:
            key = (ALL_MODULES, LEARNED_REWARD)
            metrics.log_value((*key, "disc_loss"), float(loss.detach()), reduce="mean")
            for name, value in discriminator_metrics(logits.detach(), labels).items():
                metrics.log_value((*key, name), value, reduce="mean")

    def _policy_rows(self, n: int) -> Arrays:
        """``n`` policy transitions drawn uniformly from the replay (this update's and the
        last ``replay_batches`` updates').
        """
        rows = [r for r in self.replay if len(r[0])]
        sizes = np.array([len(r[0]) for r in rows])
        flat = self._rng.integers(0, sizes.sum(), n)
        which = np.searchsorted(np.cumsum(sizes), flat, side="right")
        offsets = flat - (np.cumsum(sizes) - sizes)[which]
        return tuple(
            np.concatenate([rows[b][i][offsets[which == b]] for b in range(len(rows))])
            for i in range(4)
        )

    def logits(self, rows: Arrays, rl_module: RLModule | None) -> th.Tensor:
        """Differentiable discriminator logits ``(B,)``: the net's output (GAIL) or
        ``f - log pi(a|s)`` (AIRL).
        """
        tensors = self.discriminator.preprocess(*rows)
        out = self.discriminator(*tensors)
        if self.algo == "gail":
            return out
        return out - self.log_policy(rows[0], rows[1], rl_module).to(out.dtype)

    def log_policy(self, obs: np.ndarray, actions: np.ndarray, rl_module: Any) -> th.Tensor:
        """``log pi(a|s)`` of env-unit ``actions`` under the RLModule's current policy."""
        module = _policy_module(rl_module)
        device = _module_device(module) or th.device("cpu")
        acts = th.as_tensor(actions, device=device)
        if isinstance(self.reward_net.action_space, spaces.Box):
            if self.normalize_actions:
                acts = th.as_tensor(normalize_action(actions, self._action_struct), device=device)
                acts = acts.clamp(-1 + _SQUASH_MARGIN, 1 - _SQUASH_MARGIN)
            acts = acts.float()
        with th.no_grad():
            out = module.forward_inference(
                {Columns.OBS: th.as_tensor(obs, dtype=th.float32, device=device)}
            )
            dist = module.get_train_action_dist_cls().from_logits(out[Columns.ACTION_DIST_INPUTS])
            return dist.logp(acts)

    # ----------------------------------------------------------------------------------
    # State: what checkpoints and the driver's copy need
    # ----------------------------------------------------------------------------------

    def get_state(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """The net's parameters and buffers, and the optimizer's state (CPU tensors)."""
        state = super().get_state()
        state["optimizer"] = _to_cpu(self.optimizer.state_dict())
        return state

    def set_state(self, state: dict[str, Any]) -> None:
        """Load :meth:`get_state`'s output (the optimizer's only where it is given)."""
        super().set_state(state)
        if "optimizer" in state:
            self.optimizer.load_state_dict(state["optimizer"])


def _policy_module(rl_module: Any) -> Any:
    module = rl_module[DEFAULT_MODULE_ID] if isinstance(rl_module, MultiRLModule) else rl_module
    if module is None:
        raise ValueError("AIRL needs the learner's RLModule to compute log pi(a|s); got None")
    return module.unwrapped() if hasattr(module, "unwrapped") else module


def _rank_and_world() -> tuple[int, int]:
    if th.distributed.is_available() and th.distributed.is_initialized():
        return th.distributed.get_rank(), th.distributed.get_world_size()
    return 0, 1


def _average_gradients(net: th.nn.Module) -> None:
    """Average the gradients over all learners (no-op with one)."""
    rank_world = _rank_and_world()
    if rank_world[1] == 1:
        return
    params = [p for p in net.parameters() if p.requires_grad]
    grads = [p.grad if p.grad is not None else th.zeros_like(p) for p in params]
    flat = th.cat([g.reshape(-1) for g in grads])
    th.distributed.all_reduce(flat)
    flat /= rank_world[1]
    begin = 0
    for p in params:
        n = p.numel()
        p.grad = flat[begin : begin + n].view_as(p).clone()
        begin += n


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, th.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    return obj


__all__ = ["AIRL_REWARDS", "ALGOS", "AdversarialRewards"]
