"""relabel_dataset: equality with direct prediction, RLlib's column formats, errors, stats."""

from __future__ import annotations

import base64
import pickle

import gymnasium as gym
import lz4.frame
import numpy as np
import pyarrow as pa
import pytest
import ray
from helpers import OBS, random_transitions
from helpers import make_net as make_plain_net

from ray_rewards import data, networks
from ray_rewards.reward_nets import NormalizedRewardNet
from ray_rewards.stats import Moments

ACT = gym.spaces.Discrete(4)


def make_net(seed: int = 0) -> NormalizedRewardNet:
    net = make_plain_net(OBS, ACT, seed=seed, normalized=True)
    # Non-trivial statistics, so normalization shows in the outputs.
    net.normalize_output_layer.set_moments(Moments(50, np.array([0.3]), np.array([2.0])))
    return net


def transitions(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "id": np.arange(n),
        **random_transitions(rng, n, OBS, ACT),
        "rewards": rng.normal(size=n),
        "truncateds": np.zeros(n, bool),
    }


def as_rows(cols: dict[str, np.ndarray], pack_obs: bool = False) -> list[dict]:
    from ray.rllib.utils.compression import pack

    n = len(cols["id"])
    rows = []
    for i in range(n):
        row = {k: v[i] for k, v in cols.items()}
        if pack_obs:  # what RLlib's offline output does by default
            row["obs"], row["new_obs"] = pack(row["obs"]), pack(row["new_obs"])
        rows.append(row)
    return rows


def direct(net, cols) -> np.ndarray:
    return net.predict_processed(
        cols["obs"], cols["actions"], cols["new_obs"], cols["terminateds"], update_stats=False
    )


def by_id(ds, column="learned_rewards") -> tuple[np.ndarray, dict]:
    batch = ds.to_pandas()
    batch = batch.sort_values("id")
    return batch[column].to_numpy(), batch


def test_column_names_are_rllibs():
    from ray.rllib.core.columns import Columns

    assert (data.OBS, data.ACTIONS, data.NEXT_OBS) == (
        Columns.OBS,
        Columns.ACTIONS,
        Columns.NEXT_OBS,
    )
    assert (data.REWARDS, data.TERMINATEDS, data.TRUNCATEDS) == (
        Columns.REWARDS,
        Columns.TERMINATEDS,
        Columns.TRUNCATEDS,
    )


def test_relabel_equals_direct_predict_and_keeps_original(ray_session):
    net = make_net()
    cols = transitions(200)
    ds = ray.data.from_items(as_rows(cols)).repartition(4)
    out = data.relabel_dataset(ds, net, batch_size=32)
    got, frame = by_id(out)
    np.testing.assert_allclose(got, direct(net, cols), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(frame["rewards"].to_numpy(), cols["rewards"])
    assert {"obs", "actions", "new_obs", "rewards", "terminateds", "truncateds"} <= set(frame)
    # Frozen statistics: the net we passed is untouched.
    assert net.normalize_output_layer.moments().count == 50


def test_packed_columns_and_reward_type(ray_session, tmp_path):
    from ray_rewards import serialize

    net = make_net(1)
    cols = transitions(60, seed=1)
    ds = ray.data.from_items(as_rows(cols, pack_obs=True))
    assert ds.schema().types[ds.schema().names.index("obs")] == pa.string()
    serialize.save(net, tmp_path / "net.pt")
    out = data.relabel_dataset(
        ds, tmp_path / "net.pt", reward_type="RewardNet_unnormalized", column="raw"
    )
    got, frame = by_id(out, "raw")
    want = net.base.predict_processed(
        cols["obs"], cols["actions"], cols["new_obs"], cols["terminateds"]
    )
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert isinstance(frame["obs"].iloc[0], str)  # stays in RLlib's packed form


def test_packed_column_cannot_run_code(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {marker}",))

    packed = base64.b64encode(lz4.frame.compress(pickle.dumps(Evil()))).decode()
    with pytest.raises(data.UnsafeDataError, match="posix.system|os.system"):
        data.column_array(np.array([packed], dtype=object), "obs", OBS)
    assert not marker.exists()


def test_update_stats_merges_every_batch_into_the_net(ray_session):
    net = make_net(2)
    base_moments = net.normalize_output_layer.moments()
    cols = transitions(150, seed=2)
    ds = ray.data.from_items(as_rows(cols)).repartition(3)
    out = data.relabel_dataset(ds, net, batch_size=20, concurrency=2, update_stats=True)
    assert out.count() == 150
    raw = net.base.predict_processed(
        cols["obs"], cols["actions"], cols["new_obs"], cols["terminateds"]
    )
    want = base_moments.merge(Moments.of(raw[:, None]))
    got = net.normalize_output_layer.moments()
    assert got.count == want.count == 200
    np.testing.assert_allclose(got.mean, want.mean, rtol=1e-6)
    np.testing.assert_allclose(got.var, want.var, rtol=1e-6)


def test_missing_column_is_named(ray_session):
    cols = transitions(10)
    del cols["new_obs"]
    ds = ray.data.from_items(as_rows(cols))
    with pytest.raises(ValueError, match="missing column 'new_obs'"):
        data.relabel_dataset(ds, make_net())  # schema known: refused before running
    lazy = ds.map(lambda row: row)  # schema unknown until it runs
    with pytest.raises(Exception, match="missing column 'new_obs'"):
        data.relabel_dataset(lazy, make_net()).take_all()


def test_shapes_that_do_not_fit_name_the_column(ray_session):
    cols = transitions(10)
    cols["obs"] = np.zeros((10, 5), np.float32)
    # A tensor column's shape is in the schema: refused before anything runs.
    with pytest.raises(ValueError, match=r"column 'obs': expected rows of shape \(3,\)"):
        data.relabel_dataset(ray.data.from_items(as_rows(cols)), make_net())
    # Packed rows show their shape only when read: the batch fails, naming the column.
    packed = ray.data.from_items(as_rows(cols, pack_obs=True))
    with pytest.raises(Exception, match=r"column 'obs': expected rows of shape \(3,\)"):
        data.relabel_dataset(packed, make_net()).take_all()


def test_bad_options(ray_session):
    net = make_net()
    ds = ray.data.from_items(as_rows(transitions(4)))
    with pytest.raises(ValueError, match="RLlib's columns"):
        data.relabel_dataset(ds, net, column="rewards")
    with pytest.raises(ValueError, match="pass the RewardNet object"):
        data.relabel_dataset(ds, "some/path.pt", update_stats=True)
    ema = NormalizedRewardNet(net.base, networks.EMANorm)
    with pytest.raises(TypeError, match="only RunningNorm statistics merge"):
        data.relabel_dataset(ds, ema, update_stats=True)
