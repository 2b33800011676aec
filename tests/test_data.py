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
from ray_rewards.data.columns import table_transitions
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


@pytest.mark.parametrize("engine", ["local", "ray"])
def test_relabel_equals_direct_predict_and_keeps_original(ray_session, engine):
    net = make_net()
    cols = transitions(200)
    ds = ray.data.from_items(as_rows(cols)).repartition(4)
    out = data.relabel_dataset(ds, net, batch_size=32, engine=engine)
    got, frame = by_id(out)
    np.testing.assert_allclose(got, direct(net, cols), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(frame["rewards"].to_numpy(), cols["rewards"])
    assert {"obs", "actions", "new_obs", "rewards", "terminateds", "truncateds"} <= set(frame)
    # Frozen statistics: the net we passed is untouched.
    assert net.normalize_output_layer.moments().count == 50


@pytest.mark.parametrize("engine", ["local", "ray"])
def test_packed_columns_and_reward_type(ray_session, tmp_path, engine):
    from ray_rewards import serialize

    net = make_net(1)
    cols = transitions(60, seed=1)
    ds = ray.data.from_items(as_rows(cols, pack_obs=True))
    assert ds.schema().types[ds.schema().names.index("obs")] == pa.string()
    serialize.save(net, tmp_path / "net.pt")
    out = data.relabel_dataset(
        ds, tmp_path / "net.pt", reward_type="RewardNet_unnormalized", column="raw", engine=engine
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


@pytest.mark.parametrize(("engine", "concurrency"), [("local", 1), ("auto", 2)])
def test_update_stats_merges_every_batch_into_the_net(ray_session, engine, concurrency):
    # The same exact merge either way (auto picks Ray Data for concurrency 2).
    net = make_net(2)
    base_moments = net.normalize_output_layer.moments()
    cols = transitions(150, seed=2)
    ds = ray.data.from_items(as_rows(cols)).repartition(3)
    out = data.relabel_dataset(
        ds, net, batch_size=20, concurrency=concurrency, update_stats=True, engine=engine
    )
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
    for engine in ("local", "ray"):
        with pytest.raises(Exception, match="missing column 'new_obs'"):
            data.relabel_dataset(lazy, make_net(), engine=engine).take_all()


def test_shapes_that_do_not_fit_name_the_column(ray_session):
    cols = transitions(10)
    cols["obs"] = np.zeros((10, 5), np.float32)
    # A tensor column's shape is in the schema: refused before anything runs.
    with pytest.raises(ValueError, match=r"column 'obs': expected rows of shape \(3,\)"):
        data.relabel_dataset(ray.data.from_items(as_rows(cols)), make_net())
    # Packed rows show their shape only when read: the batch fails, naming the column.
    packed = ray.data.from_items(as_rows(cols, pack_obs=True))
    for engine in ("local", "ray"):
        with pytest.raises(Exception, match=r"column 'obs': expected rows of shape \(3,\)"):
            data.relabel_dataset(packed, make_net(), engine=engine).take_all()


def test_bad_options(ray_session):
    net = make_net()
    ds = ray.data.from_items(as_rows(transitions(4)))
    with pytest.raises(ValueError, match="RLlib's columns"):
        data.relabel_dataset(ds, net, column="terminateds")
    with pytest.raises(ValueError, match="pass the RewardNet object"):
        data.relabel_dataset(ds, "some/path.pt", update_stats=True)
    ema = NormalizedRewardNet(net.base, networks.EMANorm)
    with pytest.raises(TypeError, match="only RunningNorm statistics merge"):
        data.relabel_dataset(ds, ema, update_stats=True)


# ---------------------------------------------------------------------------------------
# Engines: the local one (this process, no Ray) and Ray Data give the same output
# ---------------------------------------------------------------------------------------


def write_files(directory, sizes=(50, 0, 70, 30), bad_row: int | None = None) -> pa.Table:
    """Parquet files as RLlib and Ray write them (packed obs, Ray tensor actions), one
    with no rows; returns everything written, as one table.
    """
    import pyarrow.parquet as pq
    from ray.data.extensions import ArrowTensorArray
    from ray.rllib.utils.compression import pack

    directory.mkdir()
    rng = np.random.default_rng(3)
    tables, start = [], 0
    for i, n in enumerate(sizes):
        cols = random_transitions(rng, n, OBS, gym.spaces.Box(-1, 1, (1,), np.float32))
        if bad_row is not None and start <= bad_row < start + n:
            cols["obs"][bad_row - start, 0] = np.nan
        table = pa.table(
            {
                "id": np.arange(start, start + n),
                "obs": pa.array([pack(r) for r in cols["obs"]], pa.string()),
                "actions": ArrowTensorArray.from_numpy(cols["actions"]),
                "new_obs": pa.array([pack(r) for r in cols["new_obs"]], pa.string()),
                "rewards": rng.normal(size=n),
                "terminateds": cols["terminateds"],
                "truncateds": np.zeros(n, bool),
            }
        )
        pq.write_table(table, directory / f"part-{i}.parquet")
        tables.append(table)
        start += n
    return pa.concat_tables(tables)


def read_output(directory) -> pa.Table:
    import pyarrow.parquet as pq

    files = sorted(directory.glob("*.parquet"))
    return pa.concat_tables([pq.read_table(f) for f in files]).sort_by("id")


def box_net() -> NormalizedRewardNet:
    net = make_plain_net(OBS, gym.spaces.Box(-1, 1, (1,), np.float32), normalized=True)
    net.normalize_output_layer.set_moments(Moments(50, np.array([0.3]), np.array([2.0])))
    return net


def test_local_and_ray_engines_write_the_same_parquet(ray_session, tmp_path):
    source = write_files(tmp_path / "in")
    net = box_net()
    out = {}
    for engine in ("local", "ray"):
        rows = data.relabel_parquet(
            str(tmp_path / "in"), str(tmp_path / engine), net, batch_size=16, engine=engine
        )
        assert rows == source.num_rows == 150
        out[engine] = read_output(tmp_path / engine)
    local, remote = out["local"], out["ray"]
    assert local.schema == remote.schema  # same columns and types, tensor columns kept
    assert local.column_names == [*source.column_names, "learned_rewards"]
    for name in source.column_names:
        assert local[name].equals(remote[name]) and local[name].equals(source[name])
    np.testing.assert_allclose(
        local["learned_rewards"].to_numpy(), remote["learned_rewards"].to_numpy(), rtol=1e-6
    )
    # One part per input file with rows; nothing else beside the outputs.
    assert sorted(p.name for p in (tmp_path / "local").iterdir()) == [
        "part-00000.parquet",
        "part-00002.parquet",
        "part-00003.parquet",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "local", "ray"]
    assert net.normalize_output_layer.moments().count == 50  # frozen


@pytest.mark.parametrize("engine", ["local", "ray"])
def test_a_bad_row_fails_either_engine_naming_it_and_writes_nothing(ray_session, tmp_path, engine):
    write_files(tmp_path / "in", bad_row=57)  # the 8th row of the third file
    net = box_net()
    before = net.normalize_output_layer.moments()
    # Either way the error names the row within its batch (Ray Data's batches may span
    # files); the local engine adds the file and the batch's rows in it.
    where = (
        r"at rows \d+ of \d+" if engine == "ray" else r"at rows 7 of 64 .*part-2.parquet, rows 0-63"
    )
    with pytest.raises(Exception, match=rf"state: expected finite values, got NaN or inf {where}"):
        data.relabel_parquet(
            str(tmp_path / "in"),
            str(tmp_path / "out"),
            net,
            batch_size=64,
            update_stats=True,
            engine=engine,
        )
    assert net.normalize_output_layer.moments().allclose(before, rtol=0, atol=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]


def test_local_update_stats_on_parquet_merges_like_the_direct_update(tmp_path):
    source = write_files(tmp_path / "in")
    net, reference = box_net(), box_net()
    data.relabel_parquet(
        str(tmp_path / "in"), str(tmp_path / "out"), net, batch_size=32, update_stats=True
    )
    reference.predict_processed(*table_transitions(source, reference), update_stats=True)
    got, want = net.normalize_output_layer.moments(), reference.normalize_output_layer.moments()
    assert got.count == want.count == 200
    np.testing.assert_allclose(got.mean, want.mean, rtol=1e-6)
    np.testing.assert_allclose(got.var, want.var, rtol=1e-6)


def test_auto_picks_the_local_engine_for_a_small_local_input(ray_session, tmp_path):
    write_files(tmp_path / "in", sizes=(20,))
    data.relabel_parquet(str(tmp_path / "in"), str(tmp_path / "out"), box_net())
    # The local engine's naming (Ray Data names its parts by dataset and task ids).
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["part-00000.parquet"]


def test_the_auto_rule():
    from ray_rewards.data.engine import Cluster

    choose = data.choose_engine
    big, small = data.LOCAL_MAX_ROWS, data.LOCAL_MAX_ROWS - 1
    one, three = Cluster(nodes=1, driver_cpus=8), Cluster(nodes=3, driver_cpus=8)
    # Forced engines are kept whatever the data or the cluster.
    assert choose("ray", rows=10, shared_input=False) == "ray"
    assert choose("local", rows=big, shared_input=True, cluster=three, concurrency=4) == "local"
    # Only Ray Data gives GPUs or several actors.
    assert choose("auto", rows=10, shared_input=False, num_gpus=0.5) == "ray"
    assert choose("auto", rows=10, shared_input=False, concurrency=2) == "ray"
    # No cluster or one node: local, at any size.
    assert choose("auto", rows=big, shared_input=True) == "local"
    assert choose("auto", rows=big, shared_input=True, cluster=one) == "local"
    # Several nodes: Ray Data for large shared inputs (or of unknown size) only.
    assert choose("auto", rows=big, shared_input=True, cluster=three) == "ray"
    assert choose("auto", rows=None, shared_input=True, cluster=three) == "ray"
    assert choose("auto", rows=small, shared_input=True, cluster=three) == "local"
    assert choose("auto", rows=big, shared_input=False, cluster=three) == "local"
    # A driver on a node that takes no tasks (a head kept for coordination): Ray Data.
    head = Cluster(nodes=2, driver_cpus=0)
    assert choose("auto", rows=10, shared_input=False, cluster=head) == "ray"
    with pytest.raises(ValueError, match="engine: expected one of"):
        choose("spark", rows=1, shared_input=True)


def test_the_session_cluster_is_seen(ray_session):
    from ray_rewards.data.engine import connected_cluster

    assert connected_cluster().nodes == 1 and connected_cluster().driver_cpus == 8


# ---------------------------------------------------------------------------------------
# Action units: RLlib's own offline output holds the RLModule's normalized actions
# ---------------------------------------------------------------------------------------


ACT_BOX = gym.spaces.Box(-2.0, 2.0, (1,), np.float32)
"""Pendulum-v1's action space."""


def write_pendulum(directory, scale: float = 1.0, seed: int = 4) -> pa.Table:
    """Pendulum transitions in two Parquet files, Ray tensor actions in env units ([-2,
    2]) times ``scale`` (1/2: the RLModule's units under normalize_actions).
    """
    import pyarrow.parquet as pq
    from ray.data.extensions import ArrowTensorArray

    directory.mkdir()
    rng = np.random.default_rng(seed)
    tables, start = [], 0
    for i, n in enumerate((40, 25)):
        cols = random_transitions(rng, n, OBS, ACT_BOX)
        actions = cols["actions"] * np.float32(2.0)  # uniform in Pendulum's [-2, 2]
        table = pa.table(
            {
                "id": np.arange(start, start + n),
                "obs": ArrowTensorArray.from_numpy(cols["obs"]),
                "actions": ArrowTensorArray.from_numpy(actions * np.float32(scale)),
                "new_obs": ArrowTensorArray.from_numpy(cols["new_obs"]),
                "rewards": rng.normal(size=n),
                "terminateds": cols["terminateds"],
            }
        )
        pq.write_table(table, directory / f"part-{i}.parquet")
        tables.append(table)
        start += n
    return pa.concat_tables(tables)


@pytest.mark.parametrize("engine", ["local", "ray"])
def test_module_unit_actions_give_the_env_unit_rewards(ray_session, tmp_path, engine):
    write_pendulum(tmp_path / "env")
    module = write_pendulum(tmp_path / "module", scale=0.5)
    net = make_plain_net(OBS, ACT_BOX, normalized=True)
    net.normalize_output_layer.set_moments(Moments(50, np.array([0.3]), np.array([2.0])))
    kwargs = dict(batch_size=16, engine=engine)
    data.relabel_parquet(str(tmp_path / "env"), str(tmp_path / "want"), net, **kwargs)
    data.relabel_parquet(
        str(tmp_path / "module"), str(tmp_path / "got"), net, actions="module", **kwargs
    )
    data.relabel_parquet(str(tmp_path / "module"), str(tmp_path / "as_is"), net, **kwargs)
    want = read_output(tmp_path / "want")["learned_rewards"].to_numpy()
    got = read_output(tmp_path / "got")
    np.testing.assert_allclose(got["learned_rewards"].to_numpy(), want, rtol=1e-6)
    # The data keeps its own actions; read as they are, they give other rewards.
    assert got["actions"].equals(module.sort_by("id")["actions"])
    as_is = read_output(tmp_path / "as_is")["learned_rewards"].to_numpy()
    assert not np.allclose(as_is, want, rtol=1e-3)


@pytest.mark.parametrize("engine", ["local", "ray"])
def test_module_units_leave_discrete_actions_as_they_are(ray_session, engine):
    cartpole_obs = gym.spaces.Box(-np.inf, np.inf, (4,), np.float32)
    cartpole_act = gym.spaces.Discrete(2)
    net = make_plain_net(cartpole_obs, cartpole_act, normalized=True)
    rng = np.random.default_rng(5)
    cols = {"id": np.arange(80), **random_transitions(rng, 80, cartpole_obs, cartpole_act)}
    ds = ray.data.from_items(as_rows(cols))
    env = data.relabel_dataset(ds, net, batch_size=32, engine=engine)
    module = data.relabel_dataset(ds, net, batch_size=32, engine=engine, actions="module")
    got, frame = by_id(module)
    np.testing.assert_array_equal(got, by_id(env)[0])
    np.testing.assert_allclose(got, direct(net, cols), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(frame["actions"].to_numpy(), cols["actions"])


def test_module_to_env_units_are_rllibs_unsquash():
    from ray.rllib.utils.spaces.space_utils import unsquash_action

    from ray_rewards.data.batches import env_actions

    rng = np.random.default_rng(6)
    low, high = np.array([-2.0, 0.0, -np.inf]), np.array([2.0, 5.0, np.inf])
    cases = [
        (ACT_BOX, rng.uniform(-1.3, 1.3, (50, 1)).astype(np.float32)),  # clipped outside
        (gym.spaces.Box(low[:2], high[:2], dtype=np.float64), rng.uniform(-1, 1, (50, 2))),
        (
            gym.spaces.Box(low.astype(np.float32), high.astype(np.float32)),
            rng.uniform(-1, 1, (50, 3)).astype(np.float32),
        ),
        (gym.spaces.Box(3, 9, (2,), np.int64), rng.integers(0, 7, (50, 2))),
        (gym.spaces.Discrete(3, start=1), rng.integers(1, 4, 50)),
        (gym.spaces.MultiDiscrete([2, 3]), rng.integers(0, 2, (50, 2))),
    ]
    for space, actions in cases:
        got = env_actions(actions, space)
        want = unsquash_action(actions, space)
        assert got.dtype == want.dtype, space
        np.testing.assert_array_equal(got, want, err_msg=str(space))


def test_bad_action_units_are_refused_naming_the_option(ray_session, tmp_path):
    from ray_rewards.data.batches import BatchRelabeler, check_action_units

    net = box_net()
    expected = r"actions: expected one of \['env', 'module'\], got 'rllib'"
    ds = ray.data.from_items(as_rows(transitions(4)))
    with pytest.raises(ValueError, match=expected):
        data.relabel_dataset(ds, make_net(), actions="rllib")
    write_files(tmp_path / "in", sizes=(10,))
    with pytest.raises(ValueError, match=expected):
        data.relabel_parquet(str(tmp_path / "in"), str(tmp_path / "out"), net, actions="rllib")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]
    with pytest.raises(ValueError, match=expected):
        BatchRelabeler(net, None, "learned_rewards", False, {}, actions="rllib")
    # A Dict or Tuple action space: one actions column cannot hold its actions.
    tuple_space = gym.spaces.Tuple([ACT_BOX, gym.spaces.Discrete(2)])
    with pytest.raises(ValueError, match=r"actions='module': the net's action space is a Tuple"):
        check_action_units("module", tuple_space)
    check_action_units("env", tuple_space)


def test_module_units_are_the_exact_inverse_of_env_units():
    from gymnasium import spaces

    from ray_rewards.data.batches import env_actions, module_actions

    rng = np.random.default_rng(0)
    box = spaces.Box(np.array([-2.0, 0.0], np.float32), np.array([2.0, 5.0], np.float32))
    env = rng.uniform(box.low, box.high, size=(50, 2)).astype(np.float32)
    module = module_actions(env, box)
    assert np.abs(module).max() <= 1.0
    np.testing.assert_allclose(env_actions(module, box), env, rtol=1e-6, atol=1e-6)
    ints = spaces.Box(3, 9, shape=(2,), dtype=np.int64)
    np.testing.assert_array_equal(module_actions(np.array([[3, 9]]), ints), [[0, 6]])
    unbounded = spaces.Box(-np.inf, np.inf, shape=(1,), dtype=np.float32)
    np.testing.assert_array_equal(module_actions(env[:, :1], unbounded), env[:, :1])
