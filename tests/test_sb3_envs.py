"""The stable-baselines3 world: make_vec_env's SB3 VecEnv and RewardVecEnvWrapper over it
(imitation's contract), stable-baselines3 kept optional."""

from __future__ import annotations

import functools
import pickle
import subprocess
import sys
import textwrap

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode, SyncVectorEnv
from test_reward_wrapper import CounterEnv, Recorder

from ray_rewards import reward_wrapper
from ray_rewards.reward_nets import BasicRewardNet
from ray_rewards.reward_wrapper import RewardVecEnvWrapper
from ray_rewards.util import make_gym_vec_env, make_seeds, make_vec_env

sb3 = pytest.importorskip("stable_baselines3")
from stable_baselines3.common.monitor import Monitor  # noqa: E402
from stable_baselines3.common.vec_env import (  # noqa: E402
    DummyVecEnv,
    SubprocVecEnv,
    VecEnvWrapper,
    unwrap_vec_wrapper,
)


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300
    )


def random_actions(venv, steps: int, seed: int = 0) -> list[np.ndarray]:
    space = venv.action_space
    space.seed(seed)
    return [np.stack([space.sample() for _ in range(venv.num_envs)]) for _ in range(steps)]


def sb3_rollout(venv, steps: int = 4) -> list[np.ndarray]:
    out = [venv.reset()]
    for acts in random_actions(venv, steps):
        out.append(venv.step(acts)[0])
    return out


# ---- make_vec_env ----------------------------------------------------------------------------


def test_single_env_spaces_and_sb3_stepping():
    venv = make_vec_env("Pendulum-v1", n_envs=3, rng=np.random.default_rng(0))
    assert isinstance(venv, DummyVecEnv) and venv.num_envs == 3
    # The spaces are one env's, as imitation's nets expect, not gymnasium's batched ones.
    assert venv.observation_space == gym.spaces.Box(
        np.array([-1, -1, -8], np.float32), np.array([1, 1, 8], np.float32)
    )
    assert venv.action_space.shape == (1,)
    obs = venv.reset()
    assert isinstance(obs, np.ndarray) and obs.shape == (3, 3)
    out = venv.step(random_actions(venv, 1)[0])
    assert len(out) == 4
    obs, rews, dones, infos = out
    assert obs.shape == (3, 3) and rews.shape == (3,) and dones.shape == (3,)
    assert isinstance(infos, list) and len(infos) == 3
    # Every sub-env is under SB3's Monitor, as imitation's are.
    assert venv.env_is_wrapped(Monitor) == [True, True, True]
    venv.close()


def test_seeds_are_drawn_from_rng_like_imitation():
    rng = np.random.default_rng(11)
    venv = make_vec_env("Pendulum-v1", n_envs=3, rng=rng)
    reference = np.random.default_rng(11)
    seeds = make_seeds(reference, 3)
    # Nothing but the n_envs seeds is drawn: the caller's rng goes on as imitation's would.
    assert rng.random() == reference.random()
    obs = venv.reset()
    for i, seed in enumerate(seeds):
        # Sub-env i was reset with its seed when made; venv.reset() is its second reset.
        env = gym.make("Pendulum-v1")
        env.reset(seed=seed)
        np.testing.assert_array_equal(obs[i], env.reset()[0])


def test_same_rng_same_rollout():
    a = sb3_rollout(make_vec_env("Pendulum-v1", n_envs=3, rng=np.random.default_rng(7)))
    b = sb3_rollout(make_vec_env("Pendulum-v1", n_envs=3, rng=np.random.default_rng(7)))
    c = sb3_rollout(make_vec_env("Pendulum-v1", n_envs=3, rng=np.random.default_rng(8)))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.allclose(a[0], c[0])
    assert len({tuple(row) for row in a[0]}) == 3  # a seed of its own per sub-env
    # The (single-env) action space is seeded from rng too.
    x, y = (make_vec_env("Pendulum-v1", n_envs=2, rng=np.random.default_rng(7)) for _ in "xy")
    np.testing.assert_array_equal(x.action_space.sample(), y.action_space.sample())


def test_parallel_is_subproc_and_matches_dummy():
    dummy = make_vec_env("Pendulum-v1", n_envs=2, rng=np.random.default_rng(3))
    par = make_vec_env("Pendulum-v1", n_envs=2, rng=np.random.default_rng(3), parallel=True)
    try:
        assert isinstance(par, SubprocVecEnv)
        assert par.observation_space == dummy.observation_space
        for x, y in zip(sb3_rollout(dummy), sb3_rollout(par)):
            np.testing.assert_array_equal(x, y)
    finally:
        par.close()
        dummy.close()


def test_max_episode_steps_env_make_kwargs_and_terminal_observation():
    venv = make_vec_env(
        "Pendulum-v1",
        n_envs=2,
        rng=np.random.default_rng(0),
        max_episode_steps=3,
        env_make_kwargs={"g": 1.62},
    )
    assert venv.get_attr("g") == [1.62, 1.62]
    venv.reset()
    steps = [venv.step(a) for a in random_actions(venv, 4)]
    assert [s[2].tolist() for s in steps] == [[False] * 2, [False] * 2, [True] * 2, [False] * 2]
    obs, _, _, infos = steps[2]
    for i in range(2):
        assert infos[i]["TimeLimit.truncated"]
        # SB3 returns the next episode's first obs; the last one is in the info.
        assert infos[i]["terminal_observation"].shape == (3,)
        assert not np.array_equal(infos[i]["terminal_observation"], obs[i])
        assert infos[i]["episode"]["l"] == 3  # Monitor's episode statistics


def test_post_wrappers_in_order_with_index_outside_monitor():
    calls = []

    def tagged(tag):
        def wrap(env, i):
            calls.append((tag, i, isinstance(env, Monitor)))
            return gym.wrappers.TransformReward(env, lambda r: r + 1000 * i)

        return wrap

    venv = make_vec_env(
        "Pendulum-v1", n_envs=2, rng=np.random.default_rng(0), post_wrappers=[tagged("a")]
    )
    assert calls == [("a", 0, True), ("a", 1, True)]
    venv.reset()
    rews = venv.step(random_actions(venv, 1)[0])[1]
    assert -17 < rews[0] <= 0 and 983 < rews[1] <= 1000


def test_log_dir_gets_monitor_files(tmp_path):
    venv = make_vec_env(
        "Pendulum-v1", n_envs=2, rng=np.random.default_rng(0), log_dir=tmp_path, max_episode_steps=2
    )
    venv.reset()
    for acts in random_actions(venv, 2):
        venv.step(acts)
    venv.close()
    files = sorted(p.name for p in (tmp_path / "monitor").iterdir())
    assert files == ["mon000.monitor.csv", "mon001.monitor.csv"]
    assert len((tmp_path / "monitor" / "mon000.monitor.csv").read_text().splitlines()) == 3


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"n_envs": 0}, ValueError, "n_envs: expected an integer >= 1, got 0"),
        ({"rng": 0}, TypeError, "rng: expected a numpy.random.Generator.*got int"),
        ({"max_episode_steps": 0}, ValueError, "max_episode_steps: expected an integer >= 1"),
        ({"post_wrappers": [lambda env, i: 3]}, TypeError, r"post_wrappers\[0\].*got int"),
        ({"env_name": "NoSuchEnv-v0"}, gym.error.NameNotFound, "NoSuchEnv"),
    ],
)
def test_bad_arguments_raise(kwargs, error, match):
    args = {"env_name": "Pendulum-v1", "n_envs": 2, "rng": np.random.default_rng(0), **kwargs}
    with pytest.raises(error, match=match):
        make_vec_env(args.pop("env_name"), **args)


def test_n_envs_defaults_to_imitations_8():
    assert make_vec_env("Pendulum-v1", rng=np.random.default_rng(0)).num_envs == 8


# ---- SB3 stays optional ------------------------------------------------------------------------


def test_importing_the_package_does_not_import_sb3():
    proc = run_python(
        """
        import sys
        import ray_rewards, ray_rewards.reward_wrapper, ray_rewards.util
        assert "stable_baselines3" not in sys.modules, "imported stable_baselines3"
        """
    )
    assert proc.returncode == 0, proc.stderr


def test_without_sb3_make_vec_env_says_how_to_install_and_gym_side_works():
    # None in sys.modules makes every `import stable_baselines3...` fail, as if absent.
    proc = run_python(
        """
        import sys
        sys.modules["stable_baselines3"] = None
        import numpy as np
        from ray_rewards.reward_wrapper import RewardVecEnvWrapper
        from ray_rewards.util import make_gym_vec_env, make_vec_env

        try:
            make_vec_env("Pendulum-v1", n_envs=2, rng=np.random.default_rng(0))
        except ImportError as err:
            print("ImportError:", err)
        venv = make_gym_vec_env("Pendulum-v1", n_envs=2, rng=np.random.default_rng(0))
        wrapper = RewardVecEnvWrapper(venv, lambda o, a, n, d: np.ones(len(o)))
        wrapper.reset()
        print("gym side:", wrapper.step(venv.action_space.sample())[1].tolist())
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert "ImportError: make_vec_env returns a stable-baselines3 VecEnv" in proc.stdout
    assert "pip install 'ray_rewards[sb3]'" in proc.stdout
    assert "gym side: [1.0, 1.0]" in proc.stdout


# ---- RewardVecEnvWrapper over an SB3 VecEnv ----------------------------------------------------


def counter_dummy(specs=((2, True), (3, False))) -> DummyVecEnv:
    """SB3 version of the counter envs: env 0 terminates after 2 steps, env 1 is
    truncated after 3."""
    return DummyVecEnv([functools.partial(CounterEnv, i, n, t) for i, (n, t) in enumerate(specs)])


def actions(step: int, n: int = 2) -> np.ndarray:
    return (np.arange(n, dtype=np.float32).reshape(n, 1) + step) / 100


def test_sb3_side_is_a_vec_env_wrapper_and_a_reward_vec_env_wrapper():
    wrapper = RewardVecEnvWrapper(counter_dummy(), Recorder())
    assert isinstance(wrapper, VecEnvWrapper)
    assert isinstance(wrapper, RewardVecEnvWrapper)
    assert not isinstance(wrapper, gym.vector.VectorWrapper)
    assert unwrap_vec_wrapper(wrapper, RewardVecEnvWrapper) is wrapper
    assert type(wrapper) is reward_wrapper.SB3RewardVecEnvWrapper
    assert pickle.loads(pickle.dumps(type(wrapper))) is type(wrapper)
    # Single-env spaces, passed through.
    assert wrapper.observation_space.shape == (3,) and wrapper.num_envs == 2


def test_sb3_side_rewards_from_reward_fn_with_terminal_observation():
    fn = Recorder()
    wrapper = RewardVecEnvWrapper(counter_dummy(), fn)  # resets the env, as imitation's does
    out = [wrapper.step(actions(s)) for s in range(1, 5)]
    # All sub-envs in every call; a done sub-env's next_obs is its terminal observation
    # and dones are SB3's (truncation included).
    assert [fn.transitions(i) for i in range(len(fn.calls))] == [
        [((0, 0, 0), (0, 0, 1), False), ((1, 0, 0), (1, 0, 1), False)],
        [((0, 0, 1), (0, 0, 2), True), ((1, 0, 1), (1, 0, 2), False)],
        [((0, 1, 0), (0, 1, 1), False), ((1, 0, 2), (1, 0, 3), True)],
        [((0, 1, 1), (0, 1, 2), True), ((1, 1, 0), (1, 1, 1), False)],
    ]
    for s, call in enumerate(fn.calls, start=1):
        np.testing.assert_allclose(call[1], actions(s))
    # The returned observations are the env's (the next episode's first where done).
    np.testing.assert_array_equal(out[1][0][0], [0, 1, 0])
    rews = np.array([o[1] for o in out])
    expected = [
        [10 + 0.01, 110 + 0.02],
        [20 + 0.02, 120 + 0.03],
        [10 + 0.03, 130 + 0.04],
        [20 + 0.04, 110 + 0.05],
    ]
    np.testing.assert_allclose(rews, expected, rtol=1e-6)
    assert rews.dtype == np.float64
    env_rews = [[info["original_env_rew"] for info in o[3]] for o in out]
    assert env_rews == [[1, 1], [2, 2], [1, 3], [2, 1]]
    assert list(wrapper.original_episode_returns) == [3.0, 6.0, 3.0]
    np.testing.assert_allclose(
        list(wrapper.episode_rewards),
        [rews[:2, 0].sum(), rews[:3, 1].sum(), rews[2:4, 0].sum()],
        rtol=1e-6,
    )


def test_sb3_side_and_gym_same_step_side_agree():
    # gymnasium's SAME_STEP autoreset is SB3's; with a reward_fn that ignores dones
    # both sides must give the same rewards and keep the same returns.
    def fn(obs, acts, next_obs, dones):
        return 100.0 * next_obs[:, 0] + 10.0 * next_obs[:, 2] + acts[:, 0] + obs[:, 1]

    sb3_side = RewardVecEnvWrapper(counter_dummy(), fn, ep_history=3)
    gym_env = SyncVectorEnv(
        [
            functools.partial(CounterEnv, i, n, t)
            for i, (n, t) in enumerate(((2, True), (3, False)))
        ],
        autoreset_mode=AutoresetMode.SAME_STEP,
    )
    gym_side = RewardVecEnvWrapper(gym_env, fn, ep_history=3)
    gym_side.reset()
    for s in range(1, 8):
        np.testing.assert_array_equal(sb3_side.step(actions(s))[1], gym_side.step(actions(s))[1])
    assert list(sb3_side.original_episode_returns) == list(gym_side.original_episode_returns)
    assert list(sb3_side.episode_rewards) == list(gym_side.episode_rewards)
    assert len(sb3_side.episode_rewards) == 3


def test_sb3_side_reset_discards_unfinished_returns():
    wrapper = RewardVecEnvWrapper(counter_dummy(((2, True), (2, True))), Recorder())
    wrapper.step(actions(1))
    obs = wrapper.reset()  # mid-episode: env returns 1 and 1 are dropped
    np.testing.assert_array_equal(obs[:, 1], [1, 1])
    wrapper.step(actions(2))
    wrapper.step(actions(3))
    assert list(wrapper.original_episode_returns) == [3.0, 3.0]


class DropTerminalObs(VecEnvWrapper):
    def reset(self):
        return self.venv.reset()

    def step_wait(self):
        obs, rews, dones, infos = self.venv.step_wait()
        for info in infos:
            info.pop("terminal_observation", None)
        return obs, rews, dones, infos


def test_sb3_side_errors():
    venv = counter_dummy()
    net = BasicRewardNet(venv.observation_space, venv.action_space)
    with pytest.raises(TypeError, match="pass its predict_processed"):
        RewardVecEnvWrapper(venv, net)
    with pytest.raises(ValueError, match="ep_history: expected an integer >= 1"):
        RewardVecEnvWrapper(venv, Recorder(), ep_history=0)
    wrapper = RewardVecEnvWrapper(venv, lambda o, a, n, d: np.zeros((len(o), 1)))
    with pytest.raises(ValueError, match=r"expected rewards of shape \(2,\).*got \(2, 1\)"):
        wrapper.step(actions(1))
    wrapper = RewardVecEnvWrapper(DropTerminalObs(counter_dummy()), Recorder())
    wrapper.step(actions(1))
    with pytest.raises(RuntimeError, match=r"sub-env 0 is done without.*terminal_observation"):
        wrapper.step(actions(2))


def test_sb3_side_unsupported_space_raises():
    dict_env = functools.partial(
        gym.wrappers.TransformObservation,
        CounterEnv(0, 2, True),
        lambda o: {"o": o},
        gym.spaces.Dict({"o": gym.spaces.Box(-np.inf, np.inf, shape=(3,), dtype=np.float32)}),
    )
    with pytest.raises(NotImplementedError, match="venv.observation_space.*Dict"):
        RewardVecEnvWrapper(DummyVecEnv([dict_env]), Recorder())


def test_ppo_learns_on_the_learned_reward():
    venv = make_vec_env("Pendulum-v1", n_envs=2, rng=np.random.default_rng(0), max_episode_steps=32)
    net = BasicRewardNet(venv.observation_space, venv.action_space, hid_sizes=(8,))
    wrapper = RewardVecEnvWrapper(venv, net.predict_processed)
    model = sb3.PPO("MlpPolicy", wrapper, n_steps=64, batch_size=64, n_epochs=1, seed=0)
    model.learn(256, callback=wrapper.make_log_callback(), log_interval=1000)
    assert model.num_timesteps == 256
    # 128 steps per env of 32-step episodes: 8 episodes, under either reward.
    assert len(wrapper.original_episode_returns) == len(wrapper.episode_rewards) == 8
    assert all(r < 0 for r in wrapper.original_episode_returns)  # Pendulum's own
    # The callback logged the mean return under the net when the 2nd rollout began
    # (64 steps per env in: the first 4 episodes).
    assert model.logger.name_to_value["rollout/ep_rew_wrapped_mean"] == pytest.approx(
        np.mean(list(wrapper.episode_rewards)[:4])
    )


def test_ppo_reward_is_exactly_reward_fn():
    venv = make_vec_env("Pendulum-v1", n_envs=2, rng=np.random.default_rng(1))
    wrapper = RewardVecEnvWrapper(venv, lambda o, a, n, d: np.full(len(o), 0.5))
    model = sb3.PPO("MlpPolicy", wrapper, n_steps=64, batch_size=64, n_epochs=1, seed=0)
    model.learn(128)
    np.testing.assert_array_equal(model.rollout_buffer.rewards, 0.5)


def test_gym_side_unchanged_by_make_gym_vec_env():
    venv = make_gym_vec_env("Pendulum-v1", n_envs=2, rng=np.random.default_rng(0))
    wrapper = RewardVecEnvWrapper(venv, Recorder())
    assert isinstance(wrapper, gym.vector.VectorWrapper)
    assert type(wrapper) is RewardVecEnvWrapper
