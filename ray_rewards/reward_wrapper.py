"""A vector-env wrapper that replaces the environment's reward with a learned one."""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any

import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv, VectorWrapper

from ray_rewards import preprocessing, reward_nets, util

RewardFn = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], np.ndarray]
"""``reward_fn(obs, actions, next_obs, dones) -> rewards``: batches of ``k`` transitions
in, ``(k,)`` rewards out (what ``load_reward`` returns)."""


def get_autoreset_mode(venv: VectorEnv) -> AutoresetMode:
    """The autoreset mode ``venv`` steps with; ValueError if it does not say.

    gymnasium 1.2's Sync/AsyncVectorEnv write their mode into the metadata dict of
    the sub-env *class*, which every vector env of that class shares: a second
    vector env built with another mode rewrites the first one's
    ``metadata["autoreset_mode"]``. When no wrapper replaced the metadata (it is
    still the unwrapped env's dict), the unwrapped env's own ``autoreset_mode``
    attribute, which its ``step`` obeys, is read instead.
    """
    base = venv.unwrapped
    mode: Any = venv.metadata.get("autoreset_mode")
    if venv.metadata is base.metadata and isinstance(
        getattr(base, "autoreset_mode", None), AutoresetMode
    ):
        mode = base.autoreset_mode
    if mode is None:
        raise ValueError(
            f"{venv}: metadata has no 'autoreset_mode'; expected one of "
            f"{[m.value for m in AutoresetMode]} (set venv.metadata['autoreset_mode'] to the "
            "gymnasium.vector.AutoresetMode the env implements)"
        )
    try:
        return AutoresetMode(mode)
    except ValueError:
        raise ValueError(
            f"{venv}: unknown autoreset mode {mode!r}; expected a gymnasium.vector.AutoresetMode "
            f"({[m.value for m in AutoresetMode]})"
        ) from None


class RewardVecEnvWrapper(VectorWrapper):
    """Replace a vector env's rewards with ``reward_fn``'s, one batched call per step.

    Each step forms the transitions ``(obs, action, next_obs, terminated)`` of the
    sub-envs that actually moved and asks ``reward_fn`` for their rewards in one call:

    - the observation before the step is the one the last ``reset()``/``step()``
      returned (kept by the wrapper);
    - the transition into the last state of an episode uses the true final
      observation: the returned one under NEXT_STEP and DISABLED autoreset, and
      ``infos["final_obs"]`` under SAME_STEP (where the returned one is already the
      next episode's first);
    - under NEXT_STEP, a sub-env that ended on the previous step spends this step
      resetting (its action is ignored, its observation is the reset one): that is
      no transition, so it is left out of the call and its reward is 0.
      ``reward_fn`` is not called at all when no sub-env moved.

    ``dones`` passed to ``reward_fn`` are the ``terminated`` flags: a time-limit
    truncation does not end the MDP, so e.g. a shaped reward keeps the potential of
    the next state there. This is also what the RLlib connector passes.

    The env's own reward goes to ``infos["original_env_rew"]`` (with the gymnasium
    mask ``infos["_original_env_rew"]``), and the returns under it of the last
    ``ep_history`` finished episodes to ``original_episode_returns``. Returned
    rewards are float64, as gymnasium's vector envs give them.

    Under DISABLED autoreset, a sub-env that ended must be reset with
    ``reset(options={"reset_mask": mask})`` before the next step (RuntimeError
    otherwise); a reset sub-env's unfinished episode return is discarded.

    Args:
        venv: the vector env; its observations and actions must be arrays (Box,
            Discrete, MultiDiscrete or MultiBinary single spaces) and its
            ``metadata["autoreset_mode"]`` one of gymnasium's modes.
        reward_fn: ``(obs, actions, next_obs, dones) -> (k,)`` rewards for a batch of
            ``k`` transitions, e.g. ``reward_net.predict_processed`` (not the net
            itself: its ``__call__`` is ``forward`` on tensors).
        ep_history: how many finished episodes' returns to keep (>= 1).

    Example:
        >>> import numpy as np
        >>> from ray_rewards.reward_nets import BasicRewardNet
        >>> from ray_rewards.util import make_vec_env
        >>> venv = make_vec_env("Pendulum-v1", n_envs=3, rng=np.random.default_rng(0))
        >>> net = BasicRewardNet(venv.single_observation_space, venv.single_action_space)
        >>> venv = RewardVecEnvWrapper(venv, net.predict_processed)
        >>> obs, _ = venv.reset()
        >>> obs, rew, terminated, truncated, infos = venv.step(venv.action_space.sample())
        >>> rew.shape, infos["original_env_rew"].shape
        ((3,), (3,))
    """

    def __init__(self, venv: VectorEnv, reward_fn: RewardFn, ep_history: int = 100):
        if not isinstance(venv, VectorEnv):
            raise TypeError(
                f"venv: expected a gymnasium.vector.VectorEnv, got {type(venv).__name__}"
            )
        if isinstance(reward_fn, reward_nets.RewardNet):
            raise TypeError(
                f"reward_fn: got the reward net {type(reward_fn).__name__} itself, whose "
                "__call__ is forward() on preprocessed tensors; pass its "
                "predict_processed (or functools.partial(net.predict_processed, ...))"
            )
        if not callable(reward_fn):
            raise TypeError(
                "reward_fn: expected a callable (obs, actions, next_obs, dones) -> rewards, "
                f"got {type(reward_fn).__name__}"
            )
        ep_history = util.check_positive_int(ep_history, "ep_history")
        preprocessing.check_supported(venv.single_observation_space, "venv.observation_space")
        preprocessing.check_supported(venv.single_action_space, "venv.action_space")
        self.autoreset_mode = get_autoreset_mode(venv)
        super().__init__(venv)
        self.reward_fn = reward_fn
        self.original_episode_returns: collections.deque[float] = collections.deque(
            maxlen=ep_history
        )
        n = venv.num_envs
        self._episode_returns = np.zeros(n, dtype=np.float64)
        # Sub-envs whose episode ended on the last step: NEXT_STEP resets them on the
        # next step; DISABLED needs the user to reset them first.
        self._ended = np.zeros(n, dtype=bool)
        self._last_obs: np.ndarray | None = None

    def reset(
        self,
        *,
        seed: int | list[int | None] | None = None,
        options: dict[str, Any] | None = None,
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Reset (all sub-envs, or those in ``options["reset_mask"]``) and keep the obs."""
        # Read the mask first: gymnasium's vector envs pop it from ``options``.
        mask = None if options is None else options.get("reset_mask")
        obs, infos = self.env.reset(seed=seed, options=options)
        if mask is None:
            self._episode_returns[:] = 0.0
            self._ended[:] = False
        else:
            self._episode_returns[mask] = 0.0
            self._ended[mask] = False
        self._last_obs = np.array(obs, copy=True)
        return obs, infos

    def step(
        self, actions: Any
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Step the env; rewards from ``reward_fn`` over this step's real transitions."""
        if self._last_obs is None:
            raise RuntimeError("RewardVecEnvWrapper: call reset() before step()")
        if self.autoreset_mode is AutoresetMode.DISABLED and np.count_nonzero(self._ended):
            raise RuntimeError(
                f"RewardVecEnvWrapper: sub-envs {np.flatnonzero(self._ended).tolist()} ended "
                "and autoreset is DISABLED; reset them with "
                "reset(options={'reset_mask': mask}) before stepping"
            )
        obs, env_rew, terminated, truncated, infos = self.env.step(actions)
        done = np.logical_or(terminated, truncated)
        any_done = bool(np.count_nonzero(done))  # cheaper than .any() on a few envs
        next_obs = obs
        if any_done and self.autoreset_mode is AutoresetMode.SAME_STEP:
            next_obs = self._final_obs(obs, done, infos)
        # NEXT_STEP: the sub-envs that ended last step only reset now.
        moved = None
        if self.autoreset_mode is AutoresetMode.NEXT_STEP and np.count_nonzero(self._ended):
            moved = ~self._ended

        # Book-keeping before reward_fn runs, so an exception there leaves the wrapper
        # in step with the env.
        prev_obs = self._last_obs
        self._last_obs = np.array(obs, copy=True)
        self._ended = done
        self._episode_returns += env_rew
        if any_done:
            self.original_episode_returns.extend(self._episode_returns[done].tolist())
            self._episode_returns[done] = 0.0
        infos["original_env_rew"] = env_rew
        infos["_original_env_rew"] = np.ones(len(env_rew), dtype=bool)

        actions = np.asarray(actions)
        if moved is None:
            rew = self._call_reward_fn(prev_obs, actions, next_obs, terminated)
        else:
            rew = np.zeros(len(env_rew), dtype=np.float64)
            if moved.any():
                rew[moved] = self._call_reward_fn(
                    prev_obs[moved], actions[moved], next_obs[moved], terminated[moved]
                )
        return obs, rew, terminated, truncated, infos

    def _final_obs(self, obs: np.ndarray, done: np.ndarray, infos: dict[str, Any]) -> np.ndarray:
        """SAME_STEP: ``obs`` with the ended sub-envs' rows set to their final obs."""
        has_final = infos.get("_final_obs")
        if has_final is None or not bool(np.all(has_final[done])):
            raise RuntimeError(
                f"RewardVecEnvWrapper: autoreset mode is SAME_STEP, but sub-envs "
                f"{np.flatnonzero(done).tolist()} ended without infos['final_obs'] for all "
                "of them; the env does not implement SAME_STEP as gymnasium specifies"
            )
        next_obs = obs.copy()
        next_obs[done] = np.stack(list(infos["final_obs"][done]))
        return next_obs

    def _call_reward_fn(
        self, obs: np.ndarray, actions: np.ndarray, next_obs: np.ndarray, dones: np.ndarray
    ) -> np.ndarray:
        batch = len(obs)
        rew = np.asarray(self.reward_fn(obs, actions, next_obs, dones), dtype=np.float64)
        if rew.shape != (batch,):
            raise ValueError(
                f"reward_fn: expected rewards of shape ({batch},) for {batch} transitions, "
                f"got {rew.shape}"
            )
        if not preprocessing.all_finite(rew):
            raise ValueError(f"reward_fn: expected finite rewards, got {rew.tolist()}")
        return rew
