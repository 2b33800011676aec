"""RelabelRewards on hand-built episodes, and with_learned_reward's config wiring (no Ray)."""

from __future__ import annotations

import pickle

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from helpers import ACT, OBS, make_net
from ray.rllib.algorithms.ppo import PPO, PPOConfig
from ray.rllib.algorithms.sac import SACConfig
from ray.rllib.connectors.learner import AddOneTsToEpisodesAndTruncate
from ray.rllib.connectors.learner.learner_connector_pipeline import LearnerConnectorPipeline
from ray.rllib.env.single_agent_episode import SingleAgentEpisode
from ray.rllib.utils.metrics import ALL_MODULES
from ray.rllib.utils.metrics.metrics_logger import MetricsLogger

from ray_rewards import networks, serialize
from ray_rewards.reward_nets import BasicRewardNet, NormalizedRewardNet
from ray_rewards.rllib import (
    LearnedRewardAlgorithm,
    LearnedRewardConnector,
    RelabelRewards,
    with_learned_reward,
)
from ray_rewards.rllib import algorithm as algorithm_module
from ray_rewards.rllib.config import LearnedRewardResults
from ray_rewards.stats import Moments


def make_episode(rng, length, lookback=0, terminated=False, numpy=True) -> SingleAgentEpisode:
    obs = rng.uniform(-1, 1, (lookback + length + 1, 3)).astype(np.float32)
    act = rng.uniform(-1.5, 1.5, (lookback + length, 1)).astype(np.float32)
    rew = rng.normal(size=lookback + length)
    ep = SingleAgentEpisode(
        observations=list(obs),
        actions=list(act),
        rewards=list(rew),
        terminated=terminated,
        len_lookback_buffer=lookback,
        observation_space=OBS,
        action_space=ACT,
    )
    return ep.to_numpy() if numpy else ep


def transitions(episodes, lengths=None):
    """The chunks' transitions built step by step, independently of the connector."""
    s, a, ns, d = [], [], [], []
    for i, ep in enumerate(episodes):
        n = len(ep) if lengths is None else lengths[i]
        for t in range(n):
            s.append(ep.get_observations(t))
            a.append(ep.get_actions(t))
            ns.append(ep.get_observations(t + 1))
            d.append(float(ep.is_terminated and t == n - 1))
    return np.array(s), np.array(a), np.array(ns), np.array(d, dtype=np.float32)


def call(piece, episodes, shared_data=None, metrics=None):
    return piece(
        rl_module=None, batch={}, episodes=episodes, shared_data=shared_data or {}, metrics=metrics
    )


@pytest.mark.parametrize("numpy", [True, False])
def test_relabels_every_chunk_with_one_forward(numpy):
    rng = np.random.default_rng(0)
    episodes = [
        make_episode(rng, 5, lookback=2, numpy=numpy),
        make_episode(rng, 3, terminated=True, numpy=numpy),
        make_episode(rng, 4, lookback=1, numpy=numpy),
    ]
    lookback_before = [
        np.asarray(ep.get_rewards(slice(-1, 0), neg_index_as_lookback=True)) for ep in episodes[::2]
    ]
    net = make_net()
    expected = net.predict(*transitions(episodes))
    assert not np.allclose(expected[:5], expected[0])  # a net that depends on its inputs
    calls = []
    net.register_forward_hook(lambda *args: calls.append(1))
    call(RelabelRewards(net), episodes)
    assert len(calls) == 1
    got = np.concatenate([np.asarray(ep.get_rewards()) for ep in episodes])
    np.testing.assert_array_equal(got, expected.astype(np.float64))
    for ep, before in zip(episodes[::2], lookback_before):  # lookback rewards untouched
        np.testing.assert_array_equal(
            np.asarray(ep.get_rewards(slice(-1, 0), neg_index_as_lookback=True)), before
        )


@pytest.mark.parametrize("numpy", [True, False])
def test_copy_episodes_relabels_copies_and_leaves_the_callers_episodes(numpy):
    """What an env runner keeps for its episode metrics must keep the env rewards."""
    rng = np.random.default_rng(7)
    originals = [make_episode(rng, 4, lookback=1, numpy=numpy), make_episode(rng, 3, numpy=numpy)]
    env_rewards = [np.array(ep.get_rewards()) for ep in originals]
    net = make_net()
    expected = net.predict(*transitions(originals))
    episodes = list(originals)
    pipeline = LearnerConnectorPipeline(
        connectors=[AddOneTsToEpisodesAndTruncate(), RelabelRewards(net, copy_episodes=True)]
    )
    pipeline(rl_module=None, batch={}, episodes=episodes, shared_data={})
    assert all(new is not old for new, old in zip(episodes, originals))
    got = np.concatenate([np.asarray(ep.get_rewards())[:-1] for ep in episodes])
    np.testing.assert_array_equal(got, expected.astype(np.float64))
    for ep, before in zip(originals, env_rewards):
        np.testing.assert_array_equal(np.asarray(ep.get_rewards())[: len(before)], before)


def test_done_marks_only_the_terminal_step():
    rng = np.random.default_rng(1)
    episodes = [make_episode(rng, 3, terminated=True), make_episode(rng, 3)]
    net = make_net(use_state=False, use_action=False, use_next_state=False, use_done=True)
    call(RelabelRewards(net), episodes)
    rew = np.concatenate([ep.get_rewards() for ep in episodes])
    r_done, r_not = net.predict(np.zeros((2, 3)), np.zeros((2, 1)), None, np.array([1.0, 0.0]))
    np.testing.assert_allclose(rew, [r_not, r_not, r_done, r_not, r_not, r_not], rtol=1e-6)


def test_bootstrap_step_after_add_one_ts_is_not_relabeled():
    rng = np.random.default_rng(2)
    episodes = [make_episode(rng, 4, terminated=True), make_episode(rng, 3, lookback=1)]
    net = make_net()
    expected = net.predict(*transitions(episodes))
    pipeline = LearnerConnectorPipeline(
        connectors=[AddOneTsToEpisodesAndTruncate(), RelabelRewards(net)]
    )
    pipeline(rl_module=None, batch={}, episodes=episodes, shared_data={})
    assert [len(ep) for ep in episodes] == [5, 4]
    rew = [np.asarray(ep.get_rewards()) for ep in episodes]
    assert rew[0][-1] == 0.0 and rew[1][-1] == 0.0  # the artificial step keeps reward 0
    np.testing.assert_array_equal(np.concatenate([rew[0][:-1], rew[1][:-1]]), expected)


def test_from_batch_relabels_the_reward_column_like_the_episodes():
    """A batch as RLlib's off-policy pipeline builds it, before NumpyToTensor."""
    rng = np.random.default_rng(9)
    episodes = [make_episode(rng, 1, terminated=bool(i % 3 == 0)) for i in range(12)]
    state, action, next_state, done = transitions(episodes)
    env = np.concatenate([ep.get_rewards() for ep in episodes])
    columns = {
        "obs": state, "actions": action, "new_obs": next_state,
        "terminateds": done.astype(bool), "rewards": env.copy(),
    }  # fmt: skip
    net = make_net()
    metrics = MetricsLogger()
    piece = RelabelRewards(net, mode="add", coef=0.5, from_batch=True)
    batch = piece(rl_module=None, batch={"default_policy": columns}, episodes=episodes,
                  metrics=metrics)  # fmt: skip
    learned = net.predict(state, action, next_state, done)
    np.testing.assert_allclose(batch["default_policy"]["rewards"], env + 0.5 * learned)
    assert batch["default_policy"]["rewards"].dtype == np.float64
    # The episodes are not touched.
    np.testing.assert_array_equal(np.concatenate([ep.get_rewards() for ep in episodes]), env)
    logged = metrics.peek((ALL_MODULES, "learned_reward"))
    assert logged["num_transitions"] == 12
    assert logged["mean"] == pytest.approx(float(learned.mean()))
    assert logged["env_reward_mean"] == pytest.approx(float(env.mean()))
    del columns["new_obs"]
    with pytest.raises(ValueError, match=r"lacks \['new_obs'\]; place the piece after"):
        piece(rl_module=None, batch={"default_policy": columns}, episodes=episodes)


def test_add_mode_with_coef_and_metrics():
    rng = np.random.default_rng(3)
    episodes = [make_episode(rng, 6), make_episode(rng, 2, terminated=True)]
    env = np.concatenate([ep.get_rewards() for ep in episodes])
    net = make_net()
    learned = net.predict(*transitions(episodes))
    metrics = MetricsLogger()
    call(RelabelRewards(net, mode="add", coef=0.25), episodes, metrics=metrics)
    got = np.concatenate([ep.get_rewards() for ep in episodes])
    np.testing.assert_allclose(got, env + 0.25 * learned, rtol=1e-12)
    logged = metrics.peek((ALL_MODULES, "learned_reward"))
    assert logged["num_transitions"] == 8
    assert logged["mean"] == pytest.approx(float(learned.mean()))
    assert logged["min"] == pytest.approx(float(learned.min()))
    assert logged["max"] == pytest.approx(float(learned.max()))
    assert logged["env_reward_mean"] == pytest.approx(float(env.mean()))


def test_env_actions_are_unsquashed_and_clipped_like_rllib():
    rng = np.random.default_rng(4)
    episodes = [make_episode(rng, 8)]
    module_actions = np.asarray(episodes[0].get_actions())
    net = make_net(use_state=False, use_next_state=False, use_done=False)
    env_actions = np.clip(-2.0 + (module_actions + 1.0) * 2.0, -2.0, 2.0)
    assert np.any(np.abs(module_actions * 2) > 2)  # some actions get clipped
    expected = net.predict(np.zeros((8, 3)), env_actions)
    call(RelabelRewards(net, normalize_actions=True), episodes)
    np.testing.assert_allclose(episodes[0].get_rewards(), expected, rtol=1e-6)

    episodes = [make_episode(rng, 8)]
    clipped = np.clip(np.asarray(episodes[0].get_actions()), -2.0, 2.0)
    call(RelabelRewards(net, clip_actions=True), episodes)
    np.testing.assert_allclose(
        episodes[0].get_rewards(), net.predict(np.zeros((8, 3)), clipped), rtol=1e-6
    )


def test_update_stats_sees_exactly_the_relabeled_transitions():
    rng = np.random.default_rng(5)
    episodes = [make_episode(rng, 7, lookback=3), make_episode(rng, 5, terminated=True)]
    net = NormalizedRewardNet(make_net(), networks.RunningNorm)
    raw = net.base.predict(*transitions(episodes))
    call(RelabelRewards(net), episodes)  # frozen by default
    assert net.normalize_output_layer.moments().count == 0
    episodes = [make_episode(rng, 7, lookback=3), make_episode(rng, 5, terminated=True)]
    raw = net.base.predict(*transitions(episodes))
    call(RelabelRewards(net, update_stats=True), episodes)
    # float32 statistics: equal to the exact moments to float32 round-off.
    assert net.normalize_output_layer.moments().allclose(
        Moments.of(raw.astype(np.float64)), rtol=1e-6
    )


def test_relabeling_a_view_never_writes_through_to_the_source():
    rng = np.random.default_rng(6)
    stored = make_episode(rng, 10)
    before = np.array(stored.rewards.data)
    sample = stored.slice(slice(2, 6))  # what EpisodeReplayBuffer does for sequences
    call(RelabelRewards(make_net()), [sample])
    np.testing.assert_array_equal(stored.rewards.data, before)
    assert not np.allclose(sample.get_rewards(), before[2:6])


def test_norm_report_and_absorb_merge_copies_exactly():
    """Two copies relabel different data; merged, each holds the single-pass statistics."""
    rng = np.random.default_rng(7)
    net = NormalizedRewardNet(make_net(), networks.RunningNorm)
    net.normalize_output_layer.set_moments(Moments(40, np.array([0.5]), np.array([3.0])))
    base = net.normalize_output_layer.moments()
    pieces = [RelabelRewards(pickle.loads(pickle.dumps(net)), update_stats=True) for _ in range(2)]
    data = [[make_episode(rng, 9, lookback=1)], [make_episode(rng, 4), make_episode(rng, 6)]]
    raws = [net.base.predict(*transitions(eps)) for eps in data]
    for piece, eps in zip(pieces, data):
        call(piece, eps)
    reports = [p.norm_report() for p in pieces]
    # Data relabeled after the report and before the merge is kept, not lost.
    late = [make_episode(rng, 5)]
    late_raw = net.base.predict(*transitions(late))
    call(pieces[0], late)
    merged = {
        "normalize_output_layer": Moments.merge_all(
            [base, *(r["normalize_output_layer"] for r in reports)]
        )
    }
    for p in pieces:
        p.absorb_norm_moments(merged)
    single = networks.RunningNorm(1)
    single.set_moments(base)
    single.update_stats(np.concatenate(raws).astype(np.float64))
    # Statistics are stored as float32: "exactly" is to float32 round-off.
    assert merged["normalize_output_layer"].allclose(single.moments(), rtol=1e-6)
    absorbed = pieces[1].reward_net.normalize_output_layer
    assert absorbed.moments().allclose(absorbed.stored(merged["normalize_output_layer"]), rtol=0)
    single.update_stats(late_raw.astype(np.float64))
    assert (
        pieces[0].reward_net.normalize_output_layer.moments().allclose(single.moments(), rtol=1e-6)
    )
    # The next report holds the late data (recovered from float32-stored statistics).
    report = pieces[0].norm_report()["normalize_output_layer"]
    assert report.allclose(Moments.of(late_raw.astype(np.float64)), rtol=1e-5, atol=1e-6)


def test_state_round_trip_is_plain_numpy():
    net, other = make_net(seed=1), make_net(seed=2)
    state = RelabelRewards(net).get_state()
    assert all(isinstance(v, np.ndarray) for v in state["reward_net"].values())
    piece = RelabelRewards(other)
    piece.set_state(state)
    for a, b in zip(net.state_dict().values(), other.state_dict().values()):
        assert th.equal(a, b)


def test_bad_input_fails_with_clear_errors():
    with pytest.raises(ValueError, match="mode must be one of"):
        RelabelRewards(make_net(), mode="multiply")
    with pytest.raises(ValueError, match="needs a net with a NormalizedRewardNet"):
        RelabelRewards(make_net(), update_stats=True)
    with pytest.raises(TypeError, match="expected a ray_rewards RewardNet"):
        RelabelRewards(th.nn.Linear(3, 1))
    rng = np.random.default_rng(8)
    ep = make_episode(rng, 1)
    ep.extra_model_outputs["n_step"] = type(ep.rewards)(np.array([3]))
    with pytest.raises(ValueError, match="n_step > 1"):
        call(RelabelRewards(make_net()), [ep])
    with pytest.raises(ValueError, match="state"):
        call(
            RelabelRewards(BasicRewardNet(gym.spaces.Box(-1, 1, (5,)), ACT)), [make_episode(rng, 2)]
        )


# --------------------------------------------------------------------------------------
# with_learned_reward: what it does to a config
# --------------------------------------------------------------------------------------


def base_config() -> PPOConfig:
    return PPOConfig().environment("Pendulum-v1")


def user_connector(obs_space, act_space):
    return AddOneTsToEpisodesAndTruncate()


def user_on_train_result(**kwargs):
    return None


def test_with_learned_reward_returns_a_wired_copy(tmp_path):
    cfg = base_config().learners(learner_connector=user_connector)
    cfg.callbacks(on_train_result=user_on_train_result)
    net = make_net()
    path = tmp_path / "net.pt"
    serialize.save(net, path)
    new = with_learned_reward(cfg, str(path), mode="add", coef=2.0)
    # The input is untouched.
    assert cfg._learner_connector is user_connector and cfg.algo_class is PPO
    assert cfg.callbacks_on_train_result is user_on_train_result
    # The copy relabels first, then runs the user's pieces; callbacks are appended.
    pieces = new._learner_connector(None, None)
    assert isinstance(pieces[0], RelabelRewards) and (pieces[0].mode, pieces[0].coef) == (
        "add",
        2.0,
    )
    assert isinstance(pieces[1], AddOneTsToEpisodesAndTruncate)
    assert pieces[0].normalize_actions  # PPO's default normalize_actions=True
    for a, b in zip(net.state_dict().values(), pieces[0].reward_net.state_dict().values()):
        assert th.equal(a, b)
    assert new.callbacks_on_train_result[0] is user_on_train_result
    assert isinstance(new.callbacks_on_train_result[1], LearnedRewardResults)
    assert issubclass(new.algo_class, PPO) and issubclass(new.algo_class, LearnedRewardAlgorithm)
    # The net ships as save-file bytes, not as a pickled module.
    assert isinstance(new._learner_connector, LearnedRewardConnector)
    assert all(isinstance(b, bytes) for b in new._learner_connector.nets_bytes.values())


def test_algorithm_class_pickles_by_name_and_is_rebuilt_where_missing():
    cls = with_learned_reward(base_config(), make_net()).algo_class
    assert cls.__name__ == "PPOWithLearnedReward"
    data = pickle.dumps(cls)
    assert pickle.loads(data) is cls
    # A fresh process has no such class yet: the module rebuilds it from its name.
    del vars(algorithm_module)[cls.__qualname__]
    rebuilt = pickle.loads(data)
    assert rebuilt is not cls and rebuilt.__name__ == "PPOWithLearnedReward"
    assert issubclass(rebuilt, PPO) and issubclass(rebuilt, LearnedRewardAlgorithm)
    assert pickle.loads(data) is rebuilt


def test_with_learned_reward_refuses_bad_input(tmp_path):
    with pytest.raises(TypeError, match="expected an AlgorithmConfig"):
        with_learned_reward({"env": "Pendulum-v1"}, make_net())
    with pytest.raises(TypeError, match="RewardNet or the path"):
        with_learned_reward(base_config(), 3)
    with pytest.raises(FileNotFoundError):
        with_learned_reward(base_config(), tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="n_step"):
        with_learned_reward(SACConfig().environment("Pendulum-v1").training(n_step=3), make_net())
    with pytest.raises(ValueError, match="already trains on a learned reward"):
        with_learned_reward(with_learned_reward(base_config(), make_net()), make_net())
    ema = NormalizedRewardNet(make_net(), networks.EMANorm)
    with pytest.raises(ValueError, match="EMANorm"):
        with_learned_reward(base_config(), ema, update_stats=True)
    with pytest.raises(ValueError, match="new API stack"):
        with_learned_reward(
            base_config().api_stack(
                enable_rl_module_and_learner=False, enable_env_runner_and_connector_v2=False
            ),
            make_net(),
        )


def test_non_finite_transitions_are_skipped_counted_and_kept_out_of_the_statistics():
    rng = np.random.default_rng(5)
    episodes = [make_episode(rng, 6), make_episode(rng, 4, terminated=True)]
    episodes[0].observations.data[3][1] = np.nan  # transitions 2 (next obs) and 3 (obs)
    state, action, next_state, done = transitions(episodes)
    ok = np.isfinite(state).all(1) & np.isfinite(next_state).all(1)
    assert ok.sum() == 8
    net = make_net(normalized=True)
    clean = make_net(normalized=True)
    want = clean.predict_processed(state[ok], action[ok], next_state[ok], done[ok])
    metrics = MetricsLogger()
    call(RelabelRewards(net, update_stats=True), episodes, metrics=metrics)
    got = np.concatenate([ep.get_rewards() for ep in episodes])
    np.testing.assert_allclose(got[ok], want, rtol=1e-6)
    np.testing.assert_array_equal(got[~ok], 0.0)
    stats, clean_stats = (n.normalize_output_layer.moments() for n in (net, clean))
    assert stats.count == 8 and stats.allclose(clean_stats)
    logged = metrics.peek((ALL_MODULES, "learned_reward"))
    assert logged["num_non_finite"] == 2 and logged["num_transitions"] == 10
    strict = RelabelRewards(make_net(normalized=True), on_non_finite="raise")
    with pytest.raises(ValueError, match=r"2 of 10 transitions have NaN or inf .*rows 2, 3"):
        call(strict, episodes)
    with pytest.raises(ValueError, match='on_non_finite must be "skip" or "raise"'):
        RelabelRewards(net, on_non_finite="ignore")
