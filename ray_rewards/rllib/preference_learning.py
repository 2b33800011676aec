"""Preference comparisons in the RLlib loop: query, label, retrain while the policy learns.

:func:`with_preference_learning` is :func:`~ray_rewards.rllib.with_learned_reward`
plus two callbacks:

- on every env runner, :class:`KeepEnvTransitions` (``on_sample_end``) keeps the
  transitions it just sampled, with the env's own rewards, in a bounded buffer: the
  learners relabel their copies, so this is the only place the env's rewards (what
  a synthetic gatherer labels from) survive;
- on the driver, :class:`PreferenceRounds` (``on_train_result``) runs one round every
  ``every`` iterations while the label budget lasts: it takes those transitions from
  the env runners, cuts fragments, selects pairs (uniformly, or where a
  ``RewardEnsemble`` disagrees most), hands them to the gatherer, stores every answer
  that has come (Parquet, the schema ``ray-rewards train`` reads), retrains the net on
  all labels so far from its current weights, and gives the new weights and
  statistics to every learner's relabeling piece for the next iteration.

Where retraining runs: in the driver's process, through
:func:`ray_rewards.train.trainer.train` with ``engine="local"`` (the same loss,
statistics fit and checkpoints as any reward training, without Ray Train's start-up),
because preference data sets are small: a few thousand pairs train in a second or
two, less than one PPO iteration, while a worker group would cost about 20 s a call.

A gatherer that has not answered yet does not hold training up: a round uses
whatever answers have arrived, and queries stay pending for later rounds.
"""

from __future__ import annotations

import collections
import collections.abc
import os
import shutil
import tempfile
from typing import Any

import numpy as np
from ray.rllib.algorithms.algorithm_config import AlgorithmConfig

from ray_rewards import file_format, storage
from ray_rewards.preferences import (
    PreferenceGatherer,
    PreferenceStore,
    QuerySchedule,
    SyntheticGatherer,
    active_pairs,
    uniform_pairs,
)
from ray_rewards.reward_nets import RewardEnsemble, RewardNet
from ray_rewards.rllib.config import LEARNED_REWARD, _as_list, _load, with_learned_reward
from ray_rewards.rllib.reward_state import state_of
from ray_rewards.train import oracle

_BUFFER_ATTR = "_ray_rewards_env_transitions"
LABELS_DIR = "preference_labels"
SELECTIONS = ("uniform", "active")


class KeepEnvTransitions:
    """``on_sample_end`` callback: keep the sampled transitions (env rewards, env-unit
    actions) on the env runner, at most ``max_transitions`` of the newest.
    """

    def __init__(self, max_transitions: int, normalize_actions: bool, clip_actions: bool):
        self.max_transitions = max_transitions
        self.normalize_actions = normalize_actions
        self.clip_actions = clip_actions

    def __call__(self, *, env_runner: Any, samples: list[Any], **kwargs: Any) -> None:
        """Convert this sample's chunks to transition columns and keep them."""
        chunks = [e for e in samples if len(e) > 0]
        if not chunks:
            return
        columns, lengths = oracle.episodes_to_transitions(
            chunks,
            action_space=env_runner.env.single_action_space,
            normalize_actions=self.normalize_actions,
            clip_actions=self.clip_actions,
        )
        buffer = getattr(env_runner, _BUFFER_ATTR, None)
        if buffer is None:
            buffer = collections.deque()
            setattr(env_runner, _BUFFER_ATTR, buffer)
        buffer.append((columns, lengths))
        while sum(int(b[1].sum()) for b in buffer) > self.max_transitions and len(buffer) > 1:
            buffer.popleft()


def _take_transitions(env_runner: Any) -> list[tuple[dict[str, np.ndarray], np.ndarray]]:
    """Empty an env runner's buffer and return what it held."""
    buffer = getattr(env_runner, _BUFFER_ATTR, None)
    if not buffer:
        return []
    taken = list(buffer)
    buffer.clear()
    return taken


class PreferenceRounds:
    """``on_train_result`` callback on the driver: one query/label/retrain round every
    ``every`` iterations (see the module docstring).
    """

    def __init__(
        self,
        gatherer: PreferenceGatherer,
        schedule: QuerySchedule,
        data_dir: str,
        *,
        every: int,
        fragment_length: int,
        selection: str,
        oversampling: float,
        train_options: dict[str, Any],
        seed: int,
    ):
        self.gatherer = gatherer
        self.schedule = schedule
        self.data_dir = data_dir
        self.every = every
        self.fragment_length = fragment_length
        self.selection = selection
        self.oversampling = oversampling
        self.train_options = train_options
        self.rng = np.random.default_rng(seed)
        self.iteration = 0
        self.trained_on = 0
        self.last_training: dict[str, float] = {}
        self.store = PreferenceStore(os.path.join(data_dir, "labels"))

    def __call__(self, *, algorithm: Any, result: dict, **kwargs: Any) -> None:
        """Run a round when one is due; report the labels under ``learned_reward``."""
        self.iteration += 1
        if self.iteration % self.every == 0:
            self._round(algorithm)
        learned = result.setdefault(LEARNED_REWARD, {})
        learned["preferences"] = {
            "num_labels": len(self.store),
            "num_pending": self.gatherer.num_pending,
            "round": self.schedule.round,
            "labels_left": self.schedule.remaining,
            **self.last_training,
        }

    def save_checkpoint(self, path: str, filesystem: Any = None) -> None:
        """Put a copy of the labels in the checkpoint (``<path>/preference_labels``):
        the rest of this object's state (schedule, counters, generators) is saved
        with the config, which holds it.
        """
        self.store.copy_to(f"{path.rstrip('/')}/{LABELS_DIR}", filesystem)

    def restore_checkpoint(self, path: str, filesystem: Any = None) -> None:
        """Put the store back as it was at the checkpoint
        (:meth:`~ray_rewards.preferences.PreferenceStore.restore_from`).
        """
        self.store.restore_from(f"{path.rstrip('/')}/{LABELS_DIR}", filesystem)

    def _round(self, algorithm: Any) -> None:
        parts = [
            p
            for per_runner in algorithm.env_runner_group.foreach_env_runner(_take_transitions)
            for p in per_runner
        ]
        if parts and not self.schedule.done:
            columns = {k: np.concatenate([p[0][k] for p in parts]) for k in parts[0][0]}
            lengths = np.concatenate([p[1] for p in parts])
            self._query(columns, lengths, self.schedule.next(), state_of(algorithm).net)
        pairs, preferences = self.gatherer.collect()
        if len(preferences):
            self.store.append(pairs, preferences)
        if len(self.store) > self.trained_on:
            self._retrain(algorithm)

    def _query(
        self, columns: dict[str, np.ndarray], lengths: np.ndarray, n: int, net: RewardNet
    ) -> None:
        if n <= 0 or not np.any(lengths >= self.fragment_length):
            return
        candidates = oracle.sample_fragments(
            columns,
            lengths,
            self.fragment_length,
            max(2 * n, int(2 * n * self.oversampling)),
            self.rng,
        )
        if self.selection == "active":
            pairs = active_pairs(
                candidates, n, _ensemble(net), self.rng, oversampling=self.oversampling
            )
        else:
            pairs = uniform_pairs(candidates, n, self.rng)
        self.gatherer.submit(pairs)

    def _retrain(self, algorithm: Any) -> None:
        from ray_rewards.train import trainer

        reward_state = state_of(algorithm)
        work = tempfile.mkdtemp(prefix="retrain_", dir=self.data_dir)
        try:
            init = os.path.join(work, "init.pt")
            file_format.save(reward_state.net, init)
            result = trainer.train(
                trainer.TrainConfig(
                    train_data=self.store.path,
                    init_net=init,
                    loss="preference",
                    output=os.path.join(work, storage.NET_FILE),
                    storage_path=work,
                    engine="local",
                    verbose=False,
                    seed=int(self.rng.integers(2**31)),
                    **self.train_options,
                )
            )
            reward_state.net = file_format.load(result.net_path, device="cpu")
        finally:
            shutil.rmtree(work, ignore_errors=True)
        reward_state.push(algorithm)
        self.trained_on = len(self.store)
        last = result.history[-1]
        self.last_training = {
            "train_loss": float(last["train_loss"]),
            "train_accuracy": float(last["train_accuracy"]),
        }


def preference_rounds(algorithm: Any) -> PreferenceRounds:
    """The preference loop of an algorithm built from :func:`with_preference_learning`:
    its ``store`` (every label), ``gatherer``, ``schedule`` and ``last_training``.

    Raises:
        ValueError: the algorithm learns no reward from preferences.
    """
    for callback in _as_list(algorithm.config.callbacks_on_train_result):
        if isinstance(callback, PreferenceRounds):
            return callback
    raise ValueError(
        f"preference_rounds: {type(algorithm).__name__} was not configured with "
        "with_preference_learning"
    )


def _ensemble(net: RewardNet) -> RewardEnsemble:
    for module in net.modules():
        if isinstance(module, RewardEnsemble):
            return module
    raise ValueError(
        'with_preference_learning: selection="active" needs a RewardEnsemble in the net, got '
        f"{type(net).__name__}"
    )


def with_preference_learning(
    config: AlgorithmConfig,
    reward_net: RewardNet | str | os.PathLike,
    gatherer: PreferenceGatherer | None = None,
    *,
    total_labels: int = 500,
    num_rounds: int = 10,
    every: int = 1,
    fragment_length: int = 25,
    query_schedule: str = "hyperbolic",
    initial_fraction: float = 0.1,
    selection: str = "uniform",
    oversampling: float = 5.0,
    epochs: int = 5,
    batch_size: int = 64,
    lr: float = 1e-3,
    keep_transitions: int = 20_000,
    data_dir: str | os.PathLike | None = None,
    seed: int | None = None,
    **reward_options: Any,
) -> AlgorithmConfig:
    """A copy of ``config`` that learns its reward from preferences while the policy learns.

    imitation's ``PreferenceComparisons`` on RLlib (see the module docstring): every
    ``every`` iterations, ``num_rounds + 1`` times (a first round of
    ``initial_fraction`` of the budget, then ``query_schedule``'s shares), pairs of
    ``fragment_length``-step fragments of the newest samples go to ``gatherer``, and
    the net is retrained on every label so far (``epochs``, ``batch_size``, ``lr``).
    ``result["learned_reward"]["preferences"]`` reports the labels, the pending
    queries and the last retraining's loss and accuracy.

    Args:
        config: the algorithm config (new API stack, single agent); not modified.
        reward_net: the net to learn (a ``RewardEnsemble`` inside it for
            ``selection="active"``), or the path of one.
        gatherer: who labels; default :class:`~ray_rewards.preferences.SyntheticGatherer`
            (from the env's reward).
        total_labels: the label budget.
        num_rounds: rounds after the first (imitation's ``num_iterations``).
        every: iterations between rounds.
        query_schedule: ``"hyperbolic"``, ``"constant"`` or ``"inverse_quadratic"``.
        initial_fraction: share of the budget queried in the first round.
        fragment_length: steps per fragment (fragments never cross a sampled chunk).
        selection: ``"uniform"`` or ``"active"`` (ensemble disagreement).
        oversampling: candidate pairs per selected pair for ``"active"``.
        epochs: passes over all labels at each retraining.
        batch_size: pairs per retraining step.
        lr: the retraining's Adam learning rate.
        keep_transitions: newest transitions each env runner keeps for fragments.
        data_dir: where labels (Parquet) and retraining files go (default: a new
            temporary folder on the driver).
        seed: seeds fragment choice and retraining (default: the config's seed, else 0).
        **reward_options: options of :func:`with_learned_reward`.

    Raises:
        ValueError: a bad option, a multi-agent config, ``selection="active"`` without
            a RewardEnsemble; and what :func:`with_learned_reward` raises.
    """
    if selection not in SELECTIONS:
        raise ValueError(
            f"with_preference_learning: selection must be one of {SELECTIONS}, got {selection!r}"
        )
    for name, value in (
        ("total_labels", total_labels),
        ("num_rounds", num_rounds),
        ("every", every),
        ("fragment_length", fragment_length),
        ("epochs", epochs),
        ("batch_size", batch_size),
        ("keep_transitions", keep_transitions),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(
                f"with_preference_learning: {name} must be an integer >= 1, got {value!r}"
            )
    if (isinstance(config, AlgorithmConfig) and config.is_multi_agent) or isinstance(
        reward_net, collections.abc.Mapping
    ):
        raise ValueError(
            "with_preference_learning: single-agent configs and one net only (fragments "
            "and queries are one agent's trajectories); multi-agent configs and "
            "{module_id: net} mappings are refused"
        )
    net = _load(reward_net)
    if selection == "active":
        _ensemble(net)
    new = with_learned_reward(config, net, **reward_options)
    schedule = QuerySchedule(
        total_labels, num_rounds, kind=query_schedule, initial_fraction=initial_fraction
    )
    folder = os.fspath(data_dir) if data_dir else tempfile.mkdtemp(prefix="ray_rewards_prefs_")
    rounds = PreferenceRounds(
        gatherer if gatherer is not None else SyntheticGatherer(),
        schedule,
        folder,
        every=every,
        fragment_length=fragment_length,
        selection=selection,
        oversampling=oversampling,
        train_options={"epochs": epochs, "batch_size": batch_size, "lr": lr},
        seed=int(seed if seed is not None else (config.seed or 0)),
    )
    keep = KeepEnvTransitions(keep_transitions, bool(new.normalize_actions), bool(new.clip_actions))
    new.callbacks(
        on_sample_end=[*_as_list(new.callbacks_on_sample_end), keep],
        on_train_result=[*_as_list(new.callbacks_on_train_result), rounds],
    )
    return new


__all__ = [
    "KeepEnvTransitions",
    "PreferenceRounds",
    "preference_rounds",
    "with_preference_learning",
]
