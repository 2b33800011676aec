"""Environment helpers: seeded vector environments, as imitation's ``make_vec_env`` makes them.

:func:`make_vec_env` returns a stable-baselines3 ``VecEnv`` (imitation's contract:
single-env spaces, SB3's 4-tuple ``step``), which needs the ``[sb3]`` extra;
:func:`make_gym_vec_env` returns a gymnasium ``VectorEnv`` from the same arguments.
"""

from __future__ import annotations

import functools
import numbers
import os
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AsyncVectorEnv, SyncVectorEnv, VectorEnv

if TYPE_CHECKING:
    from stable_baselines3.common.vec_env import VecEnv

PostWrapper = Callable[[gym.Env, int], gym.Env]

# Seeds are drawn below 2**31 - 1: gymnasium's seeding accepts any non-negative int,
# but some environments forward the seed to libraries that take a C int.
_MAX_SEED = 2**31 - 1

SB3_INSTALL_HINT = "pip install 'ray_rewards[sb3]'"


def check_positive_int(value: Any, name: str) -> int:
    """``value`` as an int if it is an integer >= 1 (bools refused); ValueError otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name}: expected an integer >= 1, got {value!r}")
    return int(value)


def make_seeds(rng: np.random.Generator, n: int) -> list[int]:
    """``n`` independent seeds in ``[0, 2**31 - 1)`` drawn from ``rng`` (Python ints).

    The same draw as imitation's ``make_seeds``, so one ``rng`` state gives the
    sub-envs the seeds imitation would.
    """
    return [int(s) for s in rng.integers(0, _MAX_SEED, size=n)]


def _make_env(
    spec: gym.envs.registration.EnvSpec,
    index: int,
    seed: int,
    max_episode_steps: int | None,
    env_make_kwargs: Mapping[str, Any],
    post_wrappers: Sequence[PostWrapper],
    monitor: bool = False,
    log_dir: str | None = None,
) -> gym.Env:
    """Build sub-env ``index``: make it from ``spec``, seed it, apply the post wrappers.

    With ``monitor`` (the SB3 vector env), SB3's ``Monitor`` goes between the seeded
    env and the post wrappers, as in imitation: SB3 reads episode returns and
    lengths from it, and with ``log_dir`` it writes ``log_dir/monitor/mon{index:03d}``.
    """
    env = gym.make(spec, max_episode_steps=max_episode_steps, **env_make_kwargs)
    # Seeding with a reset here gives every sub-env its own stream; a later
    # ``reset(seed=None)`` keeps it (gymnasium only reseeds on an explicit seed).
    env.reset(seed=seed)
    env.action_space.seed(seed)
    env.observation_space.seed(seed)
    if monitor:
        from stable_baselines3.common.monitor import Monitor

        log_path = None
        if log_dir is not None:
            log_subdir = os.path.join(log_dir, "monitor")
            os.makedirs(log_subdir, exist_ok=True)
            log_path = os.path.join(log_subdir, f"mon{index:03d}")
        env = Monitor(env, log_path)
    for j, wrapper in enumerate(post_wrappers):
        env = wrapper(env, index)
        if not isinstance(env, gym.Env):
            raise TypeError(
                f"post_wrappers[{j}]: expected it to return a gymnasium.Env, "
                f"got {type(env).__name__}"
            )
    return env


def _env_fns(
    env_name: str,
    n_envs: int,
    rng: np.random.Generator,
    max_episode_steps: int | None,
    env_make_kwargs: Mapping[str, Any] | None,
    post_wrappers: Sequence[PostWrapper] | None,
    **make_env_kwargs: Any,
) -> list[Callable[[], gym.Env]]:
    """Check the shared arguments; one seeded constructor per sub-env (draws ``n_envs`` seeds)."""
    if not isinstance(env_name, str):
        raise TypeError(f"env_name: expected a registered gymnasium id (str), got {env_name!r}")
    n_envs = check_positive_int(n_envs, "n_envs")
    if not isinstance(rng, np.random.Generator):
        raise TypeError(
            f"rng: expected a numpy.random.Generator (np.random.default_rng(seed)), "
            f"got {type(rng).__name__}"
        )
    if max_episode_steps is not None:
        max_episode_steps = check_positive_int(max_episode_steps, "max_episode_steps")
    if env_make_kwargs is not None and not isinstance(env_make_kwargs, Mapping):
        raise TypeError(
            f"env_make_kwargs: expected a mapping of keyword arguments, "
            f"got {type(env_make_kwargs).__name__}"
        )
    post_wrappers = list(post_wrappers or ())
    for j, wrapper in enumerate(post_wrappers):
        if not callable(wrapper):
            raise TypeError(
                f"post_wrappers[{j}]: expected a callable (env, index) -> env, "
                f"got {type(wrapper).__name__}"
            )
    # Resolve the spec here: an unknown id fails now, in this process, with
    # gymnasium's own message, and subprocesses get the resolved spec.
    spec = gym.spec(env_name)
    return [
        functools.partial(
            _make_env,
            spec,
            i,
            seed,
            max_episode_steps,
            dict(env_make_kwargs or {}),
            post_wrappers,
            **make_env_kwargs,
        )
        for i, seed in enumerate(make_seeds(rng, n_envs))
    ]


def make_vec_env(
    env_name: str,
    *,
    n_envs: int = 8,
    rng: np.random.Generator,
    parallel: bool = False,
    log_dir: str | os.PathLike[str] | None = None,
    max_episode_steps: int | None = None,
    env_make_kwargs: Mapping[str, Any] | None = None,
    post_wrappers: Sequence[PostWrapper] | None = None,
) -> VecEnv:
    """A stable-baselines3 vector env of ``n_envs`` copies of ``env_name``, as imitation makes it.

    A drop-in for ``imitation.util.util.make_vec_env``: ``venv.observation_space`` and
    ``venv.action_space`` are the single env's, ``reset()`` returns the observations,
    ``step()`` returns ``(obs, rews, dones, infos)`` and an episode's last observation
    is in ``infos[i]["terminal_observation"]``. Needs the ``[sb3]`` extra; for a
    gymnasium ``VectorEnv`` use :func:`make_gym_vec_env`.

    Seeding is imitation's: ``n_envs`` seeds are drawn from ``rng`` (nothing more),
    one per sub-env, and each sub-env is reset with its seed when it is made; its
    action and observation spaces are seeded with it too. Same ``rng`` state, same
    rollouts. Each sub-env is wrapped in SB3's ``Monitor`` (episode statistics for
    SB3's logs) before ``post_wrappers``. imitation's ``RolloutInfoWrapper`` is not
    added (imitation does not add it either): pass it in ``post_wrappers``.

    Args:
        env_name: a registered gymnasium id, e.g. ``"Pendulum-v1"``.
        n_envs: number of sub-environments (>= 1); imitation's default, 8.
        rng: the random generator the seeds come from.
        parallel: ``SubprocVecEnv`` (one process per sub-env, started with
            ``forkserver``) instead of ``DummyVecEnv``.
        log_dir: where ``Monitor`` writes its CSV files (``log_dir/monitor/``);
            None writes none.
        max_episode_steps: override the registered time limit.
        env_make_kwargs: keyword arguments for ``gymnasium.make``.
        post_wrappers: callables ``(env, index) -> env`` applied in order to each
            sub-env after it is made (index = position in the vector env).

    Returns:
        The SB3 ``VecEnv``.

    Raises:
        ImportError: stable-baselines3 is not installed.

    Example:
        >>> import numpy as np
        >>> venv = make_vec_env("Pendulum-v1", n_envs=3, rng=np.random.default_rng(0))
        >>> venv.observation_space.shape, venv.reset().shape
        ((3,), (3, 3))
    """
    try:
        from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv
    except ImportError as err:
        raise ImportError(
            f"make_vec_env returns a stable-baselines3 VecEnv and needs stable-baselines3: "
            f"{SB3_INSTALL_HINT} (or use ray_rewards.util.make_gym_vec_env for a gymnasium "
            f"VectorEnv)"
        ) from err
    env_fns = _env_fns(
        env_name,
        n_envs,
        rng,
        max_episode_steps,
        env_make_kwargs,
        post_wrappers,
        monitor=True,
        log_dir=None if log_dir is None else os.fspath(log_dir),
    )
    if parallel:
        return SubprocVecEnv(env_fns, start_method="forkserver")
    return DummyVecEnv(env_fns)


def make_gym_vec_env(
    env_name: str,
    *,
    n_envs: int = 8,
    rng: np.random.Generator,
    parallel: bool = False,
    max_episode_steps: int | None = None,
    env_make_kwargs: Mapping[str, Any] | None = None,
    post_wrappers: Sequence[PostWrapper] | None = None,
) -> VectorEnv:
    """A gymnasium vector env of ``n_envs`` copies of ``env_name``, seeded from ``rng``.

    :func:`make_vec_env`'s arguments (less ``log_dir``), a gymnasium ``VectorEnv``
    out: batched ``observation_space``/``action_space`` (``single_*`` for one env)
    and gymnasium's 5-tuple ``step``. No stable-baselines3 needed.

    Each sub-env gets its own seed drawn from ``rng`` (not ``seed, seed+1, ...``),
    applied to its first reset and to its action and observation spaces; the batched
    action and observation spaces are seeded from ``rng`` too, so
    ``venv.action_space.sample()`` is reproducible. Same ``rng`` state, same rollouts.

    Args:
        env_name: a registered gymnasium id, e.g. ``"Pendulum-v1"``.
        n_envs: number of sub-environments (>= 1).
        rng: the random generator the seeds come from.
        parallel: ``AsyncVectorEnv`` (one process per sub-env, started with
            ``forkserver`` so no threads of torch or Ray are forked) instead of
            ``SyncVectorEnv``.
        max_episode_steps: override the registered time limit.
        env_make_kwargs: keyword arguments for ``gymnasium.make``.
        post_wrappers: callables ``(env, index) -> env`` applied in order to each
            sub-env after it is made (index = position in the vector env).

    Returns:
        The vector env, in gymnasium's default autoreset mode (NEXT_STEP).

    Example:
        >>> import numpy as np
        >>> venv = make_gym_vec_env("Pendulum-v1", n_envs=3, rng=np.random.default_rng(0))
        >>> obs, info = venv.reset()
        >>> obs.shape
        (3, 3)
    """
    env_fns = _env_fns(env_name, n_envs, rng, max_episode_steps, env_make_kwargs, post_wrappers)
    venv: VectorEnv
    if parallel:
        venv = AsyncVectorEnv(env_fns, context="forkserver")
    else:
        venv = SyncVectorEnv(env_fns)
    # gymnasium 1.2 stores its autoreset mode into the env class's shared metadata
    # dict; a private copy keeps a later vector env of another mode from changing it.
    venv.metadata = dict(venv.metadata)
    space_seeds = make_seeds(rng, 2)
    venv.action_space.seed(space_seeds[0])
    venv.observation_space.seed(space_seeds[1])
    return venv
