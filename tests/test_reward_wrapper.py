"""RewardVecEnvWrapper under every gymnasium autoreset mode, on a counter env whose
observations say exactly which transition happened."""

from __future__ import annotations

import functools

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv, VectorWrapper

from ray_rewards.networks import RunningNorm
from ray_rewards.reward_nets import BasicRewardNet, NormalizedRewardNet
from ray_rewards.reward_wrapper import RewardVecEnvWrapper
from ray_rewards.util import make_gym_vec_env


class CounterEnv(gym.Env):
    """obs = (env index, episode number, t); the episode ends after ``length`` steps,
    terminated or truncated; the env's reward of a step is the new t."""

    metadata: dict = {}

    def __init__(self, index: int, length: int, terminates: bool):
        self.index, self.length, self.terminates = index, length, terminates
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(3,), dtype=np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
        self.episode, self.t = -1, 0

    def _obs(self) -> np.ndarray:
        return np.array([self.index, self.episode, self.t], dtype=np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.episode, self.t = self.episode + 1, 0
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        end = self.t == self.length
        return self._obs(), float(self.t), end and self.terminates, end and not self.terminates, {}


def counter_venv(
    mode: AutoresetMode, specs=((2, True), (3, False)), copy: bool = True
) -> SyncVectorEnv:
    """Env 0 terminates after 2 steps, env 1 is truncated after 3 (by default)."""
    fns = [functools.partial(CounterEnv, i, n, term) for i, (n, term) in enumerate(specs)]
    return SyncVectorEnv(fns, autoreset_mode=mode, copy=copy)


class Recorder:
    """A reward function that records every call; reward = 100*index + 10*t' + action."""

    def __init__(self):
        self.calls: list[tuple[np.ndarray, ...]] = []

    def __call__(self, obs, acts, next_obs, dones):
        self.calls.append(tuple(np.array(x, copy=True) for x in (obs, acts, next_obs, dones)))
        return 100.0 * next_obs[:, 0] + 10.0 * next_obs[:, 2] + acts[:, 0]

    def transitions(self, call: int) -> list[tuple[tuple[int, ...], tuple[int, ...], bool]]:
        """(obs, next_obs, done) of each transition of one call, as ints."""
        obs, _, next_obs, dones = self.calls[call]
        return [
            (tuple(o.astype(int)), tuple(n.astype(int)), bool(d))
            for o, n, d in zip(obs, next_obs, dones)
        ]


def actions(step: int, n: int = 2) -> np.ndarray:
    """Distinct per step and env, so the test sees which action reached reward_fn."""
    return (np.arange(n, dtype=np.float32).reshape(n, 1) + step) / 100


def run(wrapper: RewardVecEnvWrapper, steps: int):
    wrapper.reset()
    return [wrapper.step(actions(s)) for s in range(1, steps + 1)]


def test_next_step_skips_reset_steps():
    fn = Recorder()
    wrapper = RewardVecEnvWrapper(counter_venv(AutoresetMode.NEXT_STEP), fn)
    out = run(wrapper, 6)
    # One call per step; a sub-env resetting (step after its episode ended) is left out.
    assert [fn.transitions(i) for i in range(len(fn.calls))] == [
        [((0, 0, 0), (0, 0, 1), False), ((1, 0, 0), (1, 0, 1), False)],
        [((0, 0, 1), (0, 0, 2), True), ((1, 0, 1), (1, 0, 2), False)],
        [((1, 0, 2), (1, 0, 3), False)],  # env 0 resets; env 1 truncated: done is terminated
        [((0, 1, 0), (0, 1, 1), False)],  # env 1 resets
        [((0, 1, 1), (0, 1, 2), True), ((1, 1, 0), (1, 1, 1), False)],
        [((1, 1, 1), (1, 1, 2), False)],
    ]
    # The actions that reached reward_fn are those of the moved sub-envs.
    np.testing.assert_allclose(fn.calls[2][1], actions(3)[[1]])
    np.testing.assert_allclose(fn.calls[3][1], actions(4)[[0]])
    rews = np.array([o[1] for o in out])
    expected = np.array(
        [
            [0 + 10 + 0.01, 100 + 10 + 0.02],
            [0 + 20 + 0.02, 100 + 20 + 0.03],
            [0.0, 100 + 30 + 0.04],
            [0 + 10 + 0.04, 0.0],
            [0 + 20 + 0.05, 100 + 10 + 0.06],
            [0.0, 100 + 20 + 0.07],
        ]
    )
    np.testing.assert_allclose(rews, expected, rtol=1e-6)
    assert rews.dtype == np.float64
    env_rew = np.array([o[4]["original_env_rew"] for o in out])
    np.testing.assert_array_equal(env_rew, [[1, 1], [2, 2], [0, 3], [1, 0], [2, 1], [0, 2]])
    assert all(o[4]["_original_env_rew"].all() for o in out)
    # Returns under the env's reward, in the order the episodes ended.
    assert list(wrapper.original_episode_returns) == [3.0, 6.0, 3.0]
    # Observations returned are the env's own (reset obs on the reset step).
    np.testing.assert_array_equal(out[2][0][0], [0, 1, 0])


def test_env_reusing_its_obs_buffer():
    # copy=False: the env returns one buffer that it overwrites on every step.
    fn = Recorder()
    wrapper = RewardVecEnvWrapper(counter_venv(AutoresetMode.NEXT_STEP, copy=False), fn)
    run(wrapper, 2)
    assert fn.transitions(1) == [((0, 0, 1), (0, 0, 2), True), ((1, 0, 1), (1, 0, 2), False)]


def test_next_step_all_resetting_calls_nothing():
    fn = Recorder()
    wrapper = RewardVecEnvWrapper(counter_venv(AutoresetMode.NEXT_STEP, ((2, True),) * 2), fn)
    out = run(wrapper, 4)
    assert len(fn.calls) == 3  # step 3 resets both sub-envs: no transition, no call
    np.testing.assert_array_equal(out[2][1], [0.0, 0.0])
    assert fn.transitions(2) == [((0, 1, 0), (0, 1, 1), False), ((1, 1, 0), (1, 1, 1), False)]


def test_same_step_uses_final_obs():
    fn = Recorder()
    wrapper = RewardVecEnvWrapper(counter_venv(AutoresetMode.SAME_STEP), fn)
    out = run(wrapper, 4)
    assert [fn.transitions(i) for i in range(len(fn.calls))] == [
        [((0, 0, 0), (0, 0, 1), False), ((1, 0, 0), (1, 0, 1), False)],
        [((0, 0, 1), (0, 0, 2), True), ((1, 0, 1), (1, 0, 2), False)],
        [((0, 1, 0), (0, 1, 1), False), ((1, 0, 2), (1, 0, 3), False)],
        [((0, 1, 1), (0, 1, 2), True), ((1, 1, 0), (1, 1, 1), False)],
    ]
    # The env itself returned the next episode's first obs where an episode ended.
    np.testing.assert_array_equal(out[1][0][0], [0, 1, 0])
    np.testing.assert_array_equal(out[2][0][1], [1, 1, 0])
    np.testing.assert_allclose(out[1][1], [20 + 0.02, 120 + 0.03], rtol=1e-6)
    np.testing.assert_array_equal(out[2][4]["original_env_rew"], [1, 3])
    assert list(wrapper.original_episode_returns) == [3.0, 6.0, 3.0]


def test_disabled_requires_reset_of_ended_envs():
    fn = Recorder()
    wrapper = RewardVecEnvWrapper(counter_venv(AutoresetMode.DISABLED), fn)
    run(wrapper, 2)  # env 0 terminated on step 2
    with pytest.raises(RuntimeError, match=r"sub-envs \[0\] ended.*reset_mask"):
        wrapper.step(actions(3))
    options = {"reset_mask": np.array([True, False])}
    obs, _ = wrapper.reset(options=options)
    np.testing.assert_array_equal(obs, [[0, 1, 0], [1, 0, 2]])
    wrapper.step(actions(3))  # env 1 truncated now
    assert fn.transitions(2) == [((0, 1, 0), (0, 1, 1), False), ((1, 0, 2), (1, 0, 3), False)]
    assert list(wrapper.original_episode_returns) == [3.0, 6.0]
    # A reset of a sub-env in mid-episode discards its unfinished return.
    wrapper.reset(options={"reset_mask": np.array([True, True])})
    wrapper.step(actions(4))
    wrapper.step(actions(5))  # env 0 ends: return 1 + 2, nothing of the discarded episode
    assert list(wrapper.original_episode_returns) == [3.0, 6.0, 3.0]
    assert fn.transitions(4)[0] == ((0, 2, 1), (0, 2, 2), True)


@pytest.mark.parametrize("mode", [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP])
def test_async_env_gives_the_same_transitions(mode):
    fns = [
        functools.partial(CounterEnv, i, n, t) for i, (n, t) in enumerate(((2, True), (3, False)))
    ]
    async_venv = AsyncVectorEnv(fns, autoreset_mode=mode, context="fork")
    try:
        fn_sync, fn_async = Recorder(), Recorder()
        out_sync = run(RewardVecEnvWrapper(counter_venv(mode), fn_sync), 6)
        wrapper = RewardVecEnvWrapper(async_venv, fn_async)
        assert wrapper.autoreset_mode == mode
        out_async = run(wrapper, 6)
        assert len(fn_sync.calls) == len(fn_async.calls)
        for i in range(len(fn_sync.calls)):
            assert fn_sync.transitions(i) == fn_async.transitions(i)
        np.testing.assert_array_equal([o[1] for o in out_sync], [o[1] for o in out_async])
        # SAME_STEP: env 0 ends on steps 2, 4, 6 and env 1 on 3, 6; NEXT_STEP loses a
        # step to each reset: env 0 ends on 2, 5 and env 1 on 3.
        expected = {AutoresetMode.SAME_STEP: [3, 6, 3, 3, 6], AutoresetMode.NEXT_STEP: [3, 6, 3]}
        assert list(wrapper.original_episode_returns) == expected[mode]
    finally:
        async_venv.close()


def test_ep_history_bounds_returns():
    wrapper = RewardVecEnvWrapper(counter_venv(AutoresetMode.SAME_STEP), Recorder(), 2)
    run(wrapper, 6)  # env 0 ends on steps 2, 4, 6; env 1 on 3, 6
    assert list(wrapper.original_episode_returns) == [3.0, 6.0]
    assert wrapper.original_episode_returns.maxlen == 2


def test_reset_clears_pending_autoreset_and_returns():
    fn = Recorder()
    wrapper = RewardVecEnvWrapper(counter_venv(AutoresetMode.NEXT_STEP), fn)
    run(wrapper, 2)  # env 0 ended; a full reset means no reset step follows
    wrapper.reset()
    wrapper.step(actions(1))
    assert fn.transitions(2) == [((0, 1, 0), (0, 1, 1), False), ((1, 1, 0), (1, 1, 1), False)]
    assert list(wrapper.original_episode_returns) == [3.0]


def test_reward_fn_error_keeps_wrapper_in_step_with_env():
    fn = Recorder()
    fail = [True]

    def flaky(*args):
        if fail.pop() if fail else False:
            raise RuntimeError("boom")
        return fn(*args)

    wrapper = RewardVecEnvWrapper(counter_venv(AutoresetMode.NEXT_STEP), flaky)
    wrapper.reset()
    with pytest.raises(RuntimeError, match="boom"):
        wrapper.step(actions(1))
    wrapper.step(actions(2))
    assert fn.transitions(0) == [((0, 0, 1), (0, 0, 2), True), ((1, 0, 1), (1, 0, 2), False)]


def test_autoreset_mode_read_from_the_env_not_the_shared_metadata():
    venv = counter_venv(AutoresetMode.NEXT_STEP)
    counter_venv(AutoresetMode.SAME_STEP)  # gymnasium rewrites the shared class metadata
    assert venv.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP
    assert RewardVecEnvWrapper(venv, Recorder()).autoreset_mode == AutoresetMode.NEXT_STEP


class MetadataOverride(VectorWrapper):
    def __init__(self, env, metadata):
        super().__init__(env)
        self.metadata = metadata


def test_unknown_or_missing_autoreset_mode_raises():
    venv = counter_venv(AutoresetMode.NEXT_STEP)
    with pytest.raises(ValueError, match="no 'autoreset_mode'"):
        RewardVecEnvWrapper(MetadataOverride(venv, {}), Recorder())
    with pytest.raises(ValueError, match="unknown autoreset mode 'Sometimes'"):
        RewardVecEnvWrapper(MetadataOverride(venv, {"autoreset_mode": "Sometimes"}), Recorder())
    wrapper = RewardVecEnvWrapper(
        MetadataOverride(venv, {"autoreset_mode": "SameStep"}), Recorder()
    )
    assert wrapper.autoreset_mode == AutoresetMode.SAME_STEP


class DropFinalObs(VectorWrapper):
    def step(self, actions):
        obs, rew, term, trunc, infos = self.env.step(actions)
        infos.pop("final_obs", None)
        infos.pop("_final_obs", None)
        return obs, rew, term, trunc, infos


def test_same_step_without_final_obs_raises():
    wrapper = RewardVecEnvWrapper(DropFinalObs(counter_venv(AutoresetMode.SAME_STEP)), Recorder())
    run(wrapper, 1)
    with pytest.raises(RuntimeError, match=r"SAME_STEP.*sub-envs \[0\].*final_obs"):
        wrapper.step(actions(2))


def test_bad_arguments_and_outputs_raise():
    venv = counter_venv(AutoresetMode.NEXT_STEP)
    with pytest.raises(TypeError, match="expected a gymnasium.vector.VectorEnv, got CounterEnv"):
        RewardVecEnvWrapper(CounterEnv(0, 2, True), Recorder())
    with pytest.raises(TypeError, match="expected a callable"):
        RewardVecEnvWrapper(venv, 3.0)
    with pytest.raises(ValueError, match="ep_history: expected an integer >= 1, got 0"):
        RewardVecEnvWrapper(venv, Recorder(), ep_history=0)
    net = BasicRewardNet(venv.single_observation_space, venv.single_action_space)
    with pytest.raises(TypeError, match="pass its predict_processed"):
        RewardVecEnvWrapper(venv, net)
    with pytest.raises(RuntimeError, match="call reset"):
        RewardVecEnvWrapper(venv, Recorder()).step(actions(1))

    wrapper = RewardVecEnvWrapper(venv, lambda o, a, n, d: np.zeros((len(o), 1)))
    wrapper.reset()
    with pytest.raises(ValueError, match=r"expected rewards of shape \(2,\).*got \(2, 1\)"):
        wrapper.step(actions(1))
    wrapper = RewardVecEnvWrapper(venv, lambda o, a, n, d: np.full(len(o), np.nan))
    wrapper.reset()
    with pytest.raises(ValueError, match="expected finite rewards"):
        wrapper.step(actions(1))


def test_unsupported_spaces_raise():
    dict_env = functools.partial(
        gym.wrappers.TransformObservation,
        CounterEnv(0, 2, True),
        lambda o: {"o": o},
        spaces.Dict({"o": spaces.Box(-np.inf, np.inf, shape=(3,), dtype=np.float32)}),
    )
    with pytest.raises(NotImplementedError, match="venv.observation_space.*Dict"):
        RewardVecEnvWrapper(SyncVectorEnv([dict_env]), Recorder())


def test_pendulum_with_normalized_basic_reward_net():
    venv = make_gym_vec_env(
        "Pendulum-v1", n_envs=3, rng=np.random.default_rng(0), max_episode_steps=5
    )
    net = NormalizedRewardNet(
        BasicRewardNet(venv.single_observation_space, venv.single_action_space, hid_sizes=(8,)),
        RunningNorm,
    )
    norm = net.normalize_output_layer
    wrapper = RewardVecEnvWrapper(venv, net.predict_processed)
    obs, _ = wrapper.reset()
    env_returns = np.zeros(3)
    for step in range(1, 8):
        acts = wrapper.action_space.sample()
        before = norm.moments()
        next_obs, rew, term, trunc, infos = wrapper.step(acts)
        assert trunc.all() == (step == 5) and not term.any()
        if step == 6:  # every sub-env truncated on step 5: a reset step, nothing predicted
            np.testing.assert_array_equal(rew, 0.0)
            assert norm.moments().count == before.count
        else:
            # Normalized with the statistics held before the step, then updated.
            raw = net.predict(obs, acts, next_obs, term)
            expected = (raw - before.mean) / np.sqrt(before.var + norm.eps)
            np.testing.assert_allclose(rew, expected, rtol=1e-5, atol=1e-6)
            assert norm.moments().count == before.count + 3
        if step <= 5:
            env_returns += infos["original_env_rew"]
        obs = next_obs
    np.testing.assert_allclose(list(wrapper.original_episode_returns), env_returns)
    wrapper.close()


def test_returns_under_reward_fn_kept_as_episode_rewards():
    fn = Recorder()
    wrapper = RewardVecEnvWrapper(counter_venv(AutoresetMode.NEXT_STEP), fn)
    out = run(wrapper, 6)
    rews = np.array([o[1] for o in out])
    # Env 0's episodes: steps 1-2 and 4-5; env 1's: steps 1-3 (reset steps give 0).
    np.testing.assert_allclose(
        list(wrapper.episode_rewards),
        [rews[0:2, 0].sum(), rews[0:3, 1].sum(), rews[3:5, 0].sum()],
        rtol=1e-12,
    )
    assert wrapper.reward_fn is fn


def test_reward_fn_error_on_an_episode_end_starts_the_next_return_from_zero():
    calls = []

    def fn(obs, acts, next_obs, dones):
        calls.append(len(obs))
        if len(calls) == 2:  # step 2: env 0's episode ends
            raise RuntimeError("boom")
        return np.ones(len(obs))

    wrapper = RewardVecEnvWrapper(counter_venv(AutoresetMode.SAME_STEP), fn)
    wrapper.reset()
    wrapper.step(actions(1))
    with pytest.raises(RuntimeError, match="boom"):
        wrapper.step(actions(2))
    wrapper.step(actions(3))  # env 1 ends: 1 + (lost) + 1
    wrapper.step(actions(4))  # env 0's second episode ends: 1 + 1
    assert list(wrapper.episode_rewards) == [2.0, 2.0]
    assert list(wrapper.original_episode_returns) == [3.0, 6.0, 3.0]
