"""A vector-env wrapper that replaces the environment's reward with a learned one.

Reason for its length: one wrapper for both vector-env worlds (gymnasium's three
autoreset modes and SB3's) over one shared reward core; split, one class would scatter.

:class:`RewardVecEnvWrapper` wraps either kind of vector env: a gymnasium
``VectorEnv`` (it is then a ``gymnasium.vector.VectorWrapper``) or a
stable-baselines3 ``VecEnv``, as :func:`ray_rewards.util.make_vec_env` and imitation
make them (it is then an SB3 ``VecEnvWrapper``, so SB3 algorithms train on the learned
reward). Both sides share :class:`_RewardCore`: the call of ``reward_fn`` with its
output checked, and the episode-return book-keeping. stable-baselines3 is imported
only when an SB3 ``VecEnv`` is wrapped.
"""

from __future__ import annotations

import collections
import functools
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv, VectorWrapper

from ray_rewards import preprocessing, reward_nets, util

RewardFn = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], np.ndarray]
"""``reward_fn(obs, actions, next_obs, dones) -> rewards``: batches of ``k`` transitions
in, ``(k,)`` rewards out (what ``load_reward`` returns)."""

_SB3_CLASS_NAME = "SB3RewardVecEnvWrapper"


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


def is_sb3_vec_env(venv: Any) -> bool:
    """Whether ``venv`` is a stable-baselines3 ``VecEnv``, without importing SB3.

    An SB3 ``VecEnv`` can only exist once SB3 is imported, so when it is not in
    ``sys.modules`` the answer is no.
    """
    base_vec_env = sys.modules.get("stable_baselines3.common.vec_env.base_vec_env")
    return base_vec_env is not None and isinstance(venv, base_vec_env.VecEnv)


class _RewardCore:
    """The reward logic of both wrapper sides, on plain arrays.

    Calls ``reward_fn`` on a batch of transitions (rewards checked: shape ``(k,)``,
    finite, float64) and keeps, per sub-env, the return of the running episode
    under the env's reward and under ``reward_fn``'s; the returns of the last
    ``ep_history`` finished episodes go to ``original_episode_returns`` and
    ``episode_rewards`` respectively (the latter is imitation's name for it).
    """

    def __init__(self, reward_fn: RewardFn, num_envs: int, ep_history: int):
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
        self.reward_fn = reward_fn
        self.original_episode_returns: collections.deque[float] = collections.deque(
            maxlen=ep_history
        )
        self.episode_rewards: collections.deque[float] = collections.deque(maxlen=ep_history)
        self._env_returns = np.zeros(num_envs, dtype=np.float64)
        self._fn_returns = np.zeros(num_envs, dtype=np.float64)

    def reset(self, mask: np.ndarray | None = None) -> None:
        """Discard the running episodes' returns (all sub-envs, or those in ``mask``)."""
        if mask is None:
            self._env_returns[:] = 0.0
            self._fn_returns[:] = 0.0
        else:
            self._env_returns[mask] = 0.0
            self._fn_returns[mask] = 0.0

    def step(
        self,
        obs: np.ndarray,
        actions: np.ndarray,
        next_obs: np.ndarray,
        dones: np.ndarray,
        env_rew: np.ndarray,
        ended: np.ndarray,
        moved: np.ndarray | None = None,
    ) -> np.ndarray:
        """Rewards of one vector step; episode returns updated.

        Args:
            obs: observations before the step, ``(n, ...)``.
            actions: the actions taken, ``(n, ...)``.
            next_obs: the observations the transitions led to (final ones where an
                episode ended), ``(n, ...)``.
            dones: the ``dones`` passed on to ``reward_fn``, ``(n,)``.
            env_rew: the env's own rewards, ``(n,)``.
            ended: which sub-envs' episodes ended on this step, ``(n,)``.
            moved: which sub-envs made a transition (None: all); the others get
                reward 0 and are left out of the ``reward_fn`` call (no call if none).

        Returns:
            float64 rewards, ``(n,)``.
        """
        # The env's returns first and the finished episodes' reward_fn returns set
        # aside, so an exception in reward_fn leaves the book-keeping in step with
        # the env (the new episodes start from 0).
        any_ended = bool(np.count_nonzero(ended))  # cheaper than .any() on a few envs
        self._env_returns += env_rew
        finished = None
        if any_ended:
            self.original_episode_returns.extend(self._env_returns[ended].tolist())
            self._env_returns[ended] = 0.0
            finished = self._fn_returns[ended]
            self._fn_returns[ended] = 0.0

        if moved is None:
            rew = self._call_reward_fn(obs, actions, next_obs, dones)
        else:
            rew = np.zeros(len(env_rew), dtype=np.float64)
            if moved.any():
                rew[moved] = self._call_reward_fn(
                    obs[moved], actions[moved], next_obs[moved], dones[moved]
                )
        if finished is not None:
            self.episode_rewards.extend((finished + rew[ended]).tolist())
            self._fn_returns[~ended] += rew[~ended]
        else:
            self._fn_returns += rew
        return rew

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


class _CoreAccess:
    """What both sides expose of their :class:`_RewardCore`."""

    _core: _RewardCore

    @property
    def reward_fn(self) -> RewardFn:
        """The reward function the rewards come from."""
        return self._core.reward_fn

    @reward_fn.setter
    def reward_fn(self, reward_fn: RewardFn) -> None:
        self._core.reward_fn = reward_fn

    @property
    def original_episode_returns(self) -> collections.deque[float]:
        """Returns under the env's own reward of the last finished episodes, oldest first."""
        return self._core.original_episode_returns

    @property
    def episode_rewards(self) -> collections.deque[float]:
        """Returns under ``reward_fn`` of the last finished episodes, oldest first."""
        return self._core.episode_rewards


class _EitherSide(type):
    """Metaclass: the SB3-side wrapper counts as a :class:`RewardVecEnvWrapper` too.

    So ``isinstance(venv, RewardVecEnvWrapper)`` (and SB3's ``unwrap_vec_wrapper``)
    finds the wrapper whichever kind of env it wraps.
    """

    def __instancecheck__(cls, obj: Any) -> bool:
        return super().__instancecheck__(obj) or cls._is_sb3_side(type(obj))

    def __subclasscheck__(cls, sub: type) -> bool:
        return super().__subclasscheck__(sub) or cls._is_sb3_side(sub)

    def _is_sb3_side(cls, sub: type) -> bool:
        return (
            cls.__dict__.get("_counts_sb3_side", False)
            and isinstance(sub, type)
            and getattr(sub, "_ray_rewards_sb3_side", False)
        )


class RewardVecEnvWrapper(_CoreAccess, VectorWrapper, metaclass=_EitherSide):
    """Replace a vector env's rewards with ``reward_fn``'s, one batched call per step.

    ``RewardVecEnvWrapper(venv, reward_fn)`` over a stable-baselines3 ``VecEnv`` (e.g.
    from :func:`ray_rewards.util.make_vec_env`) returns the SB3 side instead, an SB3
    ``VecEnvWrapper`` with imitation's semantics: see :func:`_sb3_wrapper_class`.
    The rest of this docstring is the gymnasium side.

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
    ``ep_history`` finished episodes to ``original_episode_returns`` (the returns
    under ``reward_fn`` to ``episode_rewards``). Returned rewards are float64, as
    gymnasium's vector envs give them.

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
        >>> from ray_rewards.util import make_gym_vec_env
        >>> venv = make_gym_vec_env("Pendulum-v1", n_envs=3, rng=np.random.default_rng(0))
        >>> net = BasicRewardNet(venv.single_observation_space, venv.single_action_space)
        >>> venv = RewardVecEnvWrapper(venv, net.predict_processed)
        >>> obs, _ = venv.reset()
        >>> obs, rew, terminated, truncated, infos = venv.step(venv.action_space.sample())
        >>> rew.shape, infos["original_env_rew"].shape
        ((3,), (3,))
    """

    _counts_sb3_side = True

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        """The SB3 side for an SB3 ``VecEnv``; this class for anything else."""
        venv = args[0] if args else kwargs.get("venv")
        if cls is RewardVecEnvWrapper and is_sb3_vec_env(venv):
            return _sb3_wrapper_class()(*args, **kwargs)
        return super().__new__(cls)

    def __init__(self, venv: VectorEnv, reward_fn: RewardFn, ep_history: int = 100):
        if not isinstance(venv, VectorEnv):
            raise TypeError(
                f"venv: expected a gymnasium.vector.VectorEnv, got {type(venv).__name__} "
                f"(or a stable-baselines3 VecEnv: {util.SB3_INSTALL_HINT})"
            )
        core = _RewardCore(reward_fn, venv.num_envs, ep_history)
        preprocessing.check_supported(venv.single_observation_space, "venv.observation_space")
        preprocessing.check_supported(venv.single_action_space, "venv.action_space")
        self.autoreset_mode = get_autoreset_mode(venv)
        super().__init__(venv)
        self._core = core
        # Sub-envs whose episode ended on the last step: NEXT_STEP resets them on the
        # next step; DISABLED needs the user to reset them first.
        self._ended = np.zeros(venv.num_envs, dtype=bool)
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
        self._core.reset(mask)
        if mask is None:
            self._ended[:] = False
        else:
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
        next_obs = obs
        if self.autoreset_mode is AutoresetMode.SAME_STEP and np.count_nonzero(done):
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
        infos["original_env_rew"] = env_rew
        infos["_original_env_rew"] = np.ones(len(env_rew), dtype=bool)
        rew = self._core.step(
            prev_obs, np.asarray(actions), next_obs, terminated, env_rew, done, moved
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


@functools.cache
def _sb3_wrapper_class() -> type:
    """The SB3 side of :class:`RewardVecEnvWrapper`, built on first use (imports SB3).

    Importable as ``ray_rewards.reward_wrapper.SB3RewardVecEnvWrapper`` (a module
    attribute made on demand, so instances pickle).
    """
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper

    class WrappedRewardCallback(BaseCallback):
        """Logs ``rollout/ep_rew_wrapped_mean``: mean return under ``reward_fn``."""

        def __init__(self, episode_rewards: collections.deque[float], verbose: int = 0):
            super().__init__(verbose)
            self.episode_rewards = episode_rewards

        def _on_step(self) -> bool:
            return True

        def _on_rollout_start(self) -> None:
            if self.episode_rewards:
                mean = sum(self.episode_rewards) / len(self.episode_rewards)
                self.logger.record("rollout/ep_rew_wrapped_mean", mean)

    class SB3RewardVecEnvWrapper(_CoreAccess, VecEnvWrapper):
        """An SB3 ``VecEnvWrapper`` whose rewards are ``reward_fn``'s (imitation's semantics).

        Each step's rewards are ``reward_fn(obs, actions, next_obs, dones)`` over all
        sub-envs, one call: ``obs`` is what the last ``reset()``/``step()`` returned,
        ``next_obs`` of a sub-env that is done is its
        ``infos[i]["terminal_observation"]`` (SB3 already returned the next episode's
        first observation), and ``dones`` are SB3's (terminated or truncated), as
        imitation passes them. The env's own reward goes to
        ``infos[i]["original_env_rew"]``; ``original_episode_returns`` keeps the
        returns under it of the last ``ep_history`` episodes and ``episode_rewards``
        those under ``reward_fn`` (imitation's ``episode_rewards``, logged by the
        callback from :meth:`make_log_callback`). Like imitation's wrapper, it resets
        ``venv`` when made. Rewards are float64.

        Args:
            venv: the SB3 ``VecEnv``; Box, Discrete, MultiDiscrete or MultiBinary spaces.
            reward_fn: ``(obs, actions, next_obs, dones) -> (n,)`` rewards, e.g.
                ``reward_net.predict_processed``.
            ep_history: how many finished episodes' returns to keep (>= 1).
        """

        _ray_rewards_sb3_side = True

        def __init__(self, venv: VecEnv, reward_fn: RewardFn, ep_history: int = 100):
            if not isinstance(venv, VecEnv):
                raise TypeError(
                    f"venv: expected a stable-baselines3 VecEnv, got {type(venv).__name__}"
                )
            core = _RewardCore(reward_fn, venv.num_envs, ep_history)
            preprocessing.check_supported(venv.observation_space, "venv.observation_space")
            preprocessing.check_supported(venv.action_space, "venv.action_space")
            super().__init__(venv)
            self._core = core
            self._last_obs: np.ndarray | None = None
            self._actions: np.ndarray | None = None
            self.reset()

        def make_log_callback(self) -> BaseCallback:
            """An SB3 callback logging the mean of :attr:`episode_rewards` per rollout."""
            return WrappedRewardCallback(self._core.episode_rewards)

        def reset(self) -> np.ndarray:
            """Reset every sub-env; unfinished episode returns are discarded."""
            obs = self.venv.reset()
            self._core.reset()
            self._last_obs = np.array(obs, copy=True)
            return obs

        def step_async(self, actions: np.ndarray) -> None:
            """Send the actions on, keeping a copy for ``reward_fn``."""
            self._actions = np.array(actions, copy=True)
            self.venv.step_async(actions)

        def step_wait(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict[str, Any]]]:
            """The env's step with ``reward_fn``'s rewards."""
            if self._last_obs is None or self._actions is None:
                raise RuntimeError("RewardVecEnvWrapper: step_wait() without step_async()")
            obs, env_rew, dones, infos = self.venv.step_wait()
            dones = np.asarray(dones, dtype=bool)
            next_obs = obs
            if np.count_nonzero(dones):
                next_obs = np.array(obs, copy=True)
                for i in np.flatnonzero(dones):
                    if "terminal_observation" not in infos[i]:
                        raise RuntimeError(
                            f"RewardVecEnvWrapper: sub-env {i} is done without "
                            "infos[i]['terminal_observation']; the env does not follow "
                            "SB3's VecEnv API"
                        )
                    next_obs[i] = infos[i]["terminal_observation"]
            prev_obs, actions = self._last_obs, self._actions
            self._last_obs, self._actions = np.array(obs, copy=True), None
            env_rew = np.asarray(env_rew)
            for info, r in zip(infos, env_rew):
                info["original_env_rew"] = r
            rew = self._core.step(prev_obs, actions, next_obs, dones, env_rew, dones)
            return obs, rew, dones, infos

    SB3RewardVecEnvWrapper.callback_class = WrappedRewardCallback
    SB3RewardVecEnvWrapper.__module__ = WrappedRewardCallback.__module__ = __name__
    SB3RewardVecEnvWrapper.__qualname__ = _SB3_CLASS_NAME
    WrappedRewardCallback.__qualname__ = "WrappedRewardCallback"
    return SB3RewardVecEnvWrapper


def __getattr__(name: str) -> Any:
    """``SB3RewardVecEnvWrapper`` and ``WrappedRewardCallback`` on demand (imports SB3)."""
    if name == _SB3_CLASS_NAME:
        return _sb3_wrapper_class()
    if name == "WrappedRewardCallback":
        return _sb3_wrapper_class().callback_class
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
