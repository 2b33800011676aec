"""Arrow schemas + Parquet through Ray Data, and the synthetic preference oracle."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from gymnasium import spaces
from ray.rllib.env.single_agent_episode import SingleAgentEpisode

from ray_rewards.train import oracle, schemas

OBS = spaces.Box(-1.0, 1.0, (3,), dtype=np.float32)
ACT = spaces.Box(-2.0, 2.0, (1,), dtype=np.float32)


def episode(n: int, start: float, terminated: bool) -> SingleAgentEpisode:
    """Observation t is [start + t, 0, 0]; action t is t/n; reward t is start + t."""
    obs = [np.array([start + t, 0, 0], np.float32) for t in range(n + 1)]
    return SingleAgentEpisode(
        observations=obs,
        actions=[np.array([t / n], np.float32) for t in range(n)],
        rewards=[start + t for t in range(n)],
        terminated=terminated,
        truncated=not terminated,
        len_lookback_buffer=0,
    )


# ------------------------------------------------------------------------------ oracle


def test_episodes_to_transitions():
    cols, lengths = oracle.episodes_to_transitions(
        [episode(3, 0, terminated=True), episode(4, 100, terminated=False)]
    )
    np.testing.assert_array_equal(lengths, [3, 4])
    np.testing.assert_array_equal(cols["obs"][:, 0], [0, 1, 2, 100, 101, 102, 103])
    np.testing.assert_array_equal(cols["new_obs"][:, 0], cols["obs"][:, 0] + 1)
    np.testing.assert_array_equal(cols["rewards"], cols["obs"][:, 0])
    # Only the last step of the terminated episode is terminal; truncation is not.
    np.testing.assert_array_equal(cols["terminateds"], [0, 0, 1, 0, 0, 0, 0])


def test_episodes_to_transitions_gives_env_actions():
    eps = [episode(4, 0, terminated=False)]
    raw, _ = oracle.episodes_to_transitions(eps)
    env, _ = oracle.episodes_to_transitions(eps, action_space=ACT, normalize_actions=True)
    # RLlib's unsquash: [-1, 1] -> [low, high] = [-2, 2].
    np.testing.assert_allclose(env["actions"], 2.0 * raw["actions"])
    with pytest.raises(ValueError, match="action_space"):
        oracle.episodes_to_transitions(eps, normalize_actions=True)


def test_fragments_never_cross_chunks_and_skip_short_ones():
    eps = [episode(5, 0, True), episode(2, 100, True), episode(8, 200, False)]
    cols, lengths = oracle.episodes_to_transitions(eps)
    frags = oracle.sample_fragments(cols, lengths, 4, 500, np.random.default_rng(0))
    obs = frags["obs"][..., 0]
    assert obs.shape == (500, 4)
    np.testing.assert_array_equal(np.diff(obs, axis=1), 1)  # consecutive, one chunk
    starts = set(obs[:, 0].tolist())
    assert starts == {0, 1, 200, 201, 202, 203, 204}  # every valid window, none in chunk 2
    with pytest.raises(ValueError, match="no chunk has 9"):
        oracle.sample_fragments(cols, lengths, 9, 1, np.random.default_rng(0))


def test_oracle_labels():
    rng = np.random.default_rng(0)
    r1 = np.array([[1.0, 1.0], [0.0, 0.0], [0.0, 2.0]])
    r2 = np.array([[0.0, 0.0], [0.0, 0.0], [2.0, 0.0]])
    # Equal undiscounted returns are a tie.
    np.testing.assert_array_equal(oracle.PreferenceOracle()(r1, r2, rng), [1.0, 0.5, 0.5])
    # Discounting: fragment 1's reward comes later, so it is worth less.
    discounted = oracle.PreferenceOracle(discount_factor=0.5)
    np.testing.assert_array_equal(discounted(r1, r2, rng), [1.0, 0.5, 0.0])
    soft = oracle.PreferenceOracle(temperature=2.0)(r1, r2, rng)
    np.testing.assert_allclose(soft, 1 / (1 + np.exp(-np.array([2.0, 0.0, 0.0]) / 2)))
    noisy = oracle.PreferenceOracle(temperature=2.0, sample=True)
    labels = noisy(np.repeat(r1[:1], 4000, 0), np.repeat(r2[:1], 4000, 0), rng)
    assert set(np.unique(labels)) == {0.0, 1.0}
    assert labels.mean() == pytest.approx(1 / (1 + np.exp(-1)), abs=0.03)
    with pytest.raises(ValueError, match="temperature"):
        oracle.PreferenceOracle(temperature=-1)


# ------------------------------------------------------------------------------ schemas


def test_tables_round_trip_through_parquet(ray_session, tmp_path):
    """Written by Ray Data; read back by Ray Data (as the trainer does) and by plain pyarrow."""
    rng = np.random.default_rng(0)
    cols, lengths = oracle.episodes_to_transitions(
        [episode(30, 10 * i, i % 2 == 0) for i in range(4)]
    )
    pairs = oracle.preference_pairs(
        cols, lengths, num_pairs=20, fragment_length=5, oracle=oracle.PreferenceOracle(), rng=rng
    )
    discrete = {
        "obs": np.array([0, 3]),
        "actions": np.array([[1, 2], [0, 0]]),
        "new_obs": np.array([1, 2]),
        "terminateds": np.array([False, True]),
        "is_expert": np.array([True, False]),
        "action_logp": np.array([-1.0, -2.0]),
    }
    cases = [
        (pairs, schemas.preference_schema(OBS, ACT, 5)),
        (cols, schemas.transitions_schema(OBS, ACT, extra=["rewards"])),
        (
            discrete,
            schemas.transitions_schema(
                spaces.Discrete(4), spaces.MultiDiscrete([2, 3]), extra=["is_expert", "action_logp"]
            ),
        ),
    ]
    for i, (data, schema) in enumerate(cases):
        path = schemas.write_parquet(data, tmp_path / f"d{i}", schema)
        if i == 0:
            back = schemas.collect_numpy(schemas.read_parquet(path, schema.names))
        else:
            back = _read_with_pyarrow(path)
        assert set(back) == set(schema.names)
        for name in schema.names:
            np.testing.assert_array_equal(back[name], np.asarray(data[name]), err_msg=name)
            assert back[name].shape == np.shape(data[name])
    assert back["obs"].dtype == np.int64  # Discrete stays integer (one-hot is the net's job)
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".")]  # no temp dirs left


def _read_with_pyarrow(path) -> dict[str, np.ndarray]:
    table = pq.read_table(path)
    out = {}
    for name in table.column_names:
        col = table[name].combine_chunks()
        if isinstance(col, pa.FixedShapeTensorArray):
            out[name] = col.to_numpy_ndarray()
        else:
            out[name] = col.to_numpy(zero_copy_only=False)
    return out


def test_bad_tables_fail_clearly(ray_session, tmp_path):
    schema = schemas.transitions_schema(OBS, ACT)
    good = {
        "obs": np.zeros((2, 3)),
        "actions": np.zeros((2, 1)),
        "new_obs": np.zeros((2, 3)),
        "terminateds": np.zeros(2, bool),
    }
    with pytest.raises(ValueError, match=r"missing \['new_obs'\]"):
        schemas.to_table({k: v for k, v in good.items() if k != "new_obs"}, schema)
    with pytest.raises(ValueError, match=r"'obs': expected shape \(2, 3\), got \(2, 4\)"):
        schemas.to_table(dict(good, obs=np.zeros((2, 4))), schema)
    discrete = schemas.transitions_schema(spaces.Discrete(3), spaces.Discrete(2))
    with pytest.raises(ValueError, match="castable to int64, got float64"):
        schemas.to_table(
            dict(good, obs=np.zeros(2), new_obs=np.zeros(2), actions=np.zeros(2)), discrete
        )
    with pytest.raises(ValueError, match="unknown extra column"):
        schemas.transitions_schema(OBS, ACT, extra=["reward"])
    path = schemas.write_parquet(good, tmp_path / "d", schema)
    with pytest.raises(FileExistsError):
        schemas.write_parquet(good, path, schema)
    schemas.write_parquet(dict(good, obs=np.ones((2, 3))), path, schema, overwrite=True)
    assert _read_with_pyarrow(path)["obs"].sum() == 6
    with pytest.raises(ValueError, match=r"missing \['rewards'\]"):
        schemas.read_parquet(path, ["obs", "rewards"])
    with pytest.raises(FileNotFoundError):
        schemas.read_parquet(tmp_path / "nothing")
