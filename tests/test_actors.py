"""RewardActor / RewardActorPool: coalescing, row-exactness, restarts, statistics."""

from __future__ import annotations

import os
import pickle
import threading
import time

import numpy as np
import pytest
import ray
from helpers import make_net, random_transitions

from ray_rewards import networks, serialize
from ray_rewards.actors import RewardActor, RewardActorError, RewardActorPool
from ray_rewards.stats import Moments


def transitions(rng: np.random.Generator, n: int) -> tuple[np.ndarray, ...]:
    return tuple(random_transitions(rng, n).values())


def kill_and_wait_for_restart(a: RewardActor, timeout: float = 60.0) -> None:
    """ray.kill(no_restart=False), then wait until a new incarnation answers (a call
    sent right after ray.kill may still reach the dying process)."""
    old_pid = a.serving_stats()["pid"]
    ray.kill(a.handle, no_restart=False)
    deadline = time.monotonic() + timeout
    while a.serving_stats()["pid"] == old_pid:
        assert time.monotonic() < deadline, "actor did not restart"
        time.sleep(0.05)


def wait_for_exit(pid: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        assert time.monotonic() < deadline, f"process {pid} did not exit"
        time.sleep(0.02)


def expected(net, batch) -> np.ndarray:
    return net.predict_processed(*batch, update_stats=False)


@pytest.fixture(scope="module")
def net():
    return make_net(normalized=True)


@pytest.fixture(scope="module")
def actor(ray_session, net):
    a = RewardActor(net, max_batch_size=40, max_wait_s=0.05)
    yield a
    ray.kill(a.handle)


def test_restart_without_snapshot_reloads_the_net_without_object_store_arguments(
    ray_session, net, capfd
):
    # The net's bytes reach the actor with a ``load`` call, never as a constructor
    # argument: Ray logs (once per driver process, ray-project/ray#53727) that an actor
    # with max_restarts > 0 has constructor arguments in the object store, which it
    # does not keep for restarts. First in this module: the session's first such actor.
    a = RewardActor(net)
    try:
        source = a.norm_moments()["normalize_output_layer"]
        a.predict_processed(*transitions(np.random.default_rng(12), 30), update_stats=True)
        assert a.norm_moments()["normalize_output_layer"].count == source.count + 30
        kill_and_wait_for_restart(a)  # the new incarnation asks its client for the net
        assert a.serving_stats()["loaded_from"] == "source"
        assert a.norm_moments()["normalize_output_layer"].allclose(source)
    finally:
        ray.kill(a.handle)
    assert "constructor arguments in the object store" not in capfd.readouterr().err


def test_same_node_requests_take_the_socket_and_the_rest_take_ray(actor, net):
    assert actor.serving_stats()["fast_path"]
    batch = transitions(np.random.default_rng(21), 9)
    by_socket = actor.submit(*batch)
    # A keyword value that JSON would not carry exactly (a numpy bool) goes by Ray.
    by_ray = actor.submit(*batch, update_stats=np.False_)
    assert by_socket.ref is None and by_ray.ref is not None
    for p in (by_socket, by_ray):
        np.testing.assert_allclose(p.result(), expected(net, batch), rtol=1e-5, atol=1e-6)


def test_the_socket_refuses_strangers_and_non_numeric_arrays(actor):
    from ray_rewards.actors import channel

    _, address, key = actor._call("channel_address")
    with pytest.raises((ConnectionError, EOFError)):
        channel.Channel(address, b"x" * len(key))
    link = channel.Channel(address, key)
    try:
        obs, acts, nobs, dones = transitions(np.random.default_rng(22), 3)
        good = channel.encode_request((obs, acts, nobs, dones), {})
        # The actor never unpickles: an object-dtype header is refused, not loaded.
        bad = bytearray(good)
        at = bad.index(b'"<f4"')
        bad[at : at + 5] = b'"|O8"'
        answers = [link.wait(link.send(m)) for m in (bytes(bad), good)]
        assert isinstance(answers[0], ValueError) and "not numeric" in str(answers[0])
        assert answers[1].shape == (3,)
    finally:
        link.close()


def test_concurrent_callers_get_exactly_their_rows_in_coalesced_passes(actor, net):
    before = actor.serving_stats()
    n_callers, per_caller = 8, 8
    results: dict[int, list] = {}
    errors = []

    def caller(i: int) -> None:
        rng = np.random.default_rng(100 + i)
        out = []
        try:
            for _ in range(per_caller):
                batch = transitions(rng, int(rng.integers(1, 17)))
                out.append((batch, actor.predict_processed(*batch)))
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)
        results[i] = out

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(n_callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    all_rows = 0
    for out in results.values():
        assert len(out) == per_caller
        for batch, rewards in out:
            assert rewards.shape == (len(batch[0]),)
            np.testing.assert_allclose(rewards, expected(net, batch), rtol=1e-5, atol=1e-6)
            all_rows += len(batch[0])
    after = actor.serving_stats()
    requests = after["requests"] - before["requests"]
    passes = after["forward_passes"] - before["forward_passes"]
    assert requests == n_callers * per_caller
    assert after["rows"] - before["rows"] == all_rows
    # Coalescing happened: fewer forward passes than requests.
    assert passes < requests, (passes, requests)


def test_burst_of_submits_is_coalesced_up_to_max_batch_size(actor, net):
    before = actor.serving_stats()
    rng = np.random.default_rng(1)
    batches = [transitions(rng, 10) for _ in range(12)]
    pending = [actor.submit(*b) for b in batches]
    for p, b in zip(pending, batches):
        np.testing.assert_allclose(p.result(), expected(net, b), rtol=1e-5, atol=1e-6)
    after = actor.serving_stats()
    assert after["max_pass_rows"] <= 40
    # 120 rows in passes of at most 40 rows: 3 passes at best, 12 without coalescing.
    assert after["forward_passes"] - before["forward_passes"] <= 6


def test_bad_request_fails_alone_while_its_pass_mates_succeed(actor, net):
    rng = np.random.default_rng(2)
    good = [transitions(rng, 5) for _ in range(6)]
    bad = list(transitions(rng, 5))
    bad[0] = bad[0].copy()
    bad[0][2, 1] = np.nan
    pending = [actor.submit(*b) for b in good[:3]]
    bad_pending = actor.submit(*bad)
    pending += [actor.submit(*b) for b in good[3:]]
    for p, b in zip(pending, good):
        np.testing.assert_allclose(p.result(), expected(net, b), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="finite"):
        bad_pending.result()


def test_mismatched_rows_are_refused_before_sending(actor):
    rng = np.random.default_rng(3)
    obs, acts, nobs, dones = transitions(rng, 4)
    with pytest.raises(ValueError, match="actions: expected 4 rows"):
        actor.submit(obs, acts[:3], nobs, dones)


def test_update_stats_is_off_unless_asked(actor, net):
    rng = np.random.default_rng(4)
    before = actor.norm_moments()
    actor.predict_processed(*transitions(rng, 8))
    assert actor.norm_moments()["normalize_output_layer"].allclose(before["normalize_output_layer"])


def test_handle_travels_to_a_ray_task(actor, net):
    @ray.remote(num_cpus=0)
    def relabel_remotely(reward_actor: RewardActor, batch):
        return reward_actor.predict_processed(*batch)

    batch = transitions(np.random.default_rng(5), 7)
    got = ray.get(relabel_remotely.remote(pickle.loads(pickle.dumps(actor)), batch))
    np.testing.assert_allclose(got, expected(net, batch), rtol=1e-5, atol=1e-6)


def test_killed_actor_restarts_and_stream_completes_exactly_once(ray_session, net, tmp_path):
    # 8-row requests; a pass starts at 80 queued rows or after waiting 2 s, so the
    # requests sent just before the kill are certainly still queued in the actor.
    a = RewardActor(net, snapshot_path=tmp_path / "snap.pt", max_batch_size=80, max_wait_s=2.0)
    try:
        rng = np.random.default_rng(6)
        batches = [transitions(rng, 8) for _ in range(60)]
        results: dict[int, np.ndarray] = {}

        def run(indices: range) -> None:
            pending = [(i, a.submit(*batches[i])) for i in indices]
            for i, p in pending:
                assert i not in results
                results[i] = p.result(timeout=120)

        for lo in range(0, 20, 10):
            run(range(lo, lo + 10))
        first_pid = a.serving_stats()["pid"]
        in_flight = [(i, a.submit(*batches[i])) for i in range(20, 25)]
        ray.kill(a.handle, no_restart=False)
        # The dying process answers over its socket until it is gone; the later
        # requests below are sent after that, while Ray restarts the actor.
        wait_for_exit(first_pid)
        for lo in range(25, 60, 10):
            run(range(lo, min(lo + 10, 60)))
        for i, p in in_flight:
            results[i] = p.result(timeout=120)

        assert sorted(results) == list(range(len(batches)))
        for i, b in enumerate(batches):
            np.testing.assert_allclose(results[i], expected(net, b), rtol=1e-5, atol=1e-6)
        stats = a.serving_stats()
        assert stats["restarted"] and stats["pid"] != first_pid
        assert stats["loaded_from"] == "snapshot"
        # The new incarnation answered the 5 retried in-flight requests and the 35 later.
        assert stats["requests"] == 40 and stats["rows"] == 40 * 8

        # Statistics: a second restart brings back those of the last snapshot.
        base = a.norm_moments()["normalize_output_layer"]
        for _ in range(3):
            a.predict_processed(*transitions(rng, 20), update_stats=True)
        a.snapshot()
        snap = a.norm_moments()["normalize_output_layer"]
        assert snap.count == base.count + 60
        a.predict_processed(*transitions(rng, 20), update_stats=True)  # not snapshotted
        assert a.norm_moments()["normalize_output_layer"].count == base.count + 80
        kill_and_wait_for_restart(a)
        assert a.norm_moments()["normalize_output_layer"].allclose(snap)
        # The snapshot on disk is a regular saved net with those statistics.
        on_disk = serialize.load(tmp_path / "snap.pt")
        assert networks.norm_moments(on_disk)["normalize_output_layer"].allclose(snap)
    finally:
        ray.kill(a.handle)


@pytest.mark.slow
def test_periodic_snapshot_when_stats_change(ray_session, tmp_path):
    a = RewardActor(
        make_net(seed=2, normalized=True), snapshot_path=tmp_path / "s.pt", snapshot_interval_s=0.2
    )
    try:
        a.predict_processed(*transitions(np.random.default_rng(8), 30), update_stats=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            saved = networks.norm_moments(serialize.load(tmp_path / "s.pt"))
            if saved["normalize_output_layer"].count == 30:
                break
            time.sleep(0.1)
        assert saved["normalize_output_layer"].count == 30
    finally:
        ray.kill(a.handle)


def test_pool_merges_replica_statistics_exactly(ray_session, tmp_path):
    net = make_net(seed=3, normalized=True)
    pool = RewardActorPool(net, num_replicas=2)
    try:
        rng = np.random.default_rng(10)
        batches = [transitions(rng, int(rng.integers(5, 30))) for _ in range(6)]
        for b in batches:
            pool.predict_processed(*b, update_stats=True)
        served = [s["rows"] for s in pool.serving_stats()]
        assert all(r > 0 for r in served)  # both replicas saw data
        raw = np.concatenate([net.base.predict_processed(*b) for b in batches])
        want = net.normalize_output_layer.moments().merge(Moments.of(raw[:, None]))
        merged = pool.sync_norm_stats()["normalize_output_layer"]
        assert merged.count == want.count
        np.testing.assert_allclose(merged.mean, want.mean, rtol=1e-6)
        np.testing.assert_allclose(merged.var, want.var, rtol=1e-6)
        stored = net.normalize_output_layer.stored(merged)  # the merge rounded to float32
        for replica in pool.replicas:
            assert replica.norm_moments()["normalize_output_layer"].allclose(stored, rtol=0)
        # Data after a sync is kept by the next one; a sync with no news is a no-op.
        extra = transitions(rng, 11)
        pool.predict_processed(*extra, update_stats=True)
        want2 = merged.merge(Moments.of(net.base.predict_processed(*extra)[:, None]))
        assert pool.sync_norm_stats()["normalize_output_layer"].allclose(want2, rtol=1e-6)
        assert pool.sync_norm_stats()["normalize_output_layer"].allclose(want2, rtol=1e-6)
        # Saving merges first and writes a loadable net.
        path = pool.save(tmp_path / "pool.pt")
        loaded = serialize.load(path)
        assert networks.norm_moments(loaded)["normalize_output_layer"].allclose(want2, rtol=1e-6)
    finally:
        for r in pool.replicas:
            ray.kill(r.handle)


def test_actor_from_saved_path_saves_and_fails_clearly_once_dead(ray_session, tmp_path, net):
    serialize.save(net, tmp_path / "net.pt")
    a = RewardActor(tmp_path / "net.pt", coalesce=False, max_restarts=0)
    batch = transitions(np.random.default_rng(11), 6)
    np.testing.assert_allclose(
        a.predict_processed(*batch), expected(net, batch), rtol=1e-5, atol=1e-6
    )
    a.save(tmp_path / "copy.pt")
    copy = serialize.load(tmp_path / "copy.pt")
    np.testing.assert_allclose(expected(copy, batch), expected(net, batch), rtol=1e-6)
    pid = a.serving_stats()["pid"]
    ray.kill(a.handle, no_restart=True)
    # Until the process is gone, a same-node request may still be answered over its
    # socket (as a Ray call may be, the actor dies asynchronously); after, never.
    wait_for_exit(pid)
    with pytest.raises(RewardActorError, match="not answered"):
        a.predict_processed(*batch)


def test_bad_options_are_refused(ray_session, net):
    with pytest.raises(ValueError, match="max_batch_size"):
        RewardActor(net, max_batch_size=0)
    with pytest.raises(ValueError, match="snapshot_path"):
        RewardActor(net, snapshot_interval_s=1.0)
    with pytest.raises(TypeError, match="expected a RewardNet"):
        RewardActor(42)
