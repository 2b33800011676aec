"""ray_rewards.preferences: gatherers, active selection, the query schedule, the label
store (and training from it)."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest
import torch as th
from gymnasium import spaces

from ray_rewards import preferences as prefs
from ray_rewards.preferences import fragments, selection
from ray_rewards.reward_nets import BasicRewardNet, RewardEnsemble
from ray_rewards.train import schemas, trainer

OBS = spaces.Box(-10.0, 10.0, (3,), np.float32)  # Pendulum-v1's shapes and dtypes
ACT = spaces.Box(-2.0, 2.0, (1,), np.float32)
T = 4


def _transitions(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    obs = rng.uniform(-1, 1, (n, 3)).astype(np.float32)
    act = rng.uniform(-1, 1, (n, 1)).astype(np.float32)
    return {
        "obs": obs,
        "actions": act,
        "new_obs": rng.uniform(-1, 1, (n, 3)).astype(np.float32),
        "terminateds": np.zeros(n, bool),
        "rewards": (obs[:, 0] - obs[:, 2] ** 2 - 0.1 * act[:, 0] ** 2).astype(np.float32),
    }


def _pairs(num: int, seed: int = 0) -> prefs.Pairs:
    rng = np.random.default_rng(seed)
    lengths = np.full(2 * num, 3 * T)
    cols = _transitions(int(lengths.sum()), rng)
    return prefs.fragment_pairs(cols, lengths, fragment_length=T, num_pairs=num, rng=rng)


# --------------------------------------------------------------------------- gatherers


def test_fragment_pairs_have_the_preference_columns_rewards_and_unique_ids():
    pairs = _pairs(10)
    assert pairs["obs_1"].shape == (10, T, 3) and pairs["rewards_2"].shape == (10, T)
    assert len(set(pairs["query_id"])) == 10
    assert set(fragments.LABEL_COLUMNS) <= set(pairs)


def test_synthetic_gatherer_with_temperature_zero_prefers_the_higher_return():
    pairs = _pairs(50)
    pairs["rewards_2"][0] = pairs["rewards_1"][0]  # a tie
    gatherer = prefs.SyntheticGatherer(temperature=0, sample=True)  # never sampled at 0
    assert gatherer.collect()[1].size == 0
    gatherer.submit(pairs)
    got, labels = gatherer.collect()
    diff = pairs["rewards_1"].sum(1) - pairs["rewards_2"].sum(1)
    np.testing.assert_array_equal(labels, (np.sign(diff) + 1) / 2)
    assert labels[0] == 0.5
    np.testing.assert_array_equal(got["query_id"], pairs["query_id"])
    assert gatherer.collect()[1].size == 0  # each answer once


def test_synthetic_gatherer_samples_bradley_terry_labels():
    diffs = np.array([-2.0, -0.5, 0.0, 1.0, 3.0])
    n = 4000
    r1 = np.repeat(np.stack([diffs, np.zeros(5)], 1), n, 0)  # (5n, 2): returns = diffs
    pairs = {"rewards_1": r1, "rewards_2": np.zeros_like(r1), "obs_1": np.zeros((5 * n, 2, 1))}
    gatherer = prefs.SyntheticGatherer(temperature=2.0, seed=0)  # sample=True by default
    gatherer.submit(pairs)
    _, labels = gatherer.collect()
    assert set(np.unique(labels)) == {0.0, 1.0}
    expected = 1 / (1 + np.exp(-diffs / 2.0))
    np.testing.assert_allclose(labels.reshape(5, n).mean(1), expected, atol=0.03)
    probs = prefs.SyntheticGatherer(temperature=2.0, sample=False, discount_factor=0.5)
    probs.submit({**pairs, "rewards_1": r1[:, ::-1].copy()})  # the return comes one step later
    np.testing.assert_allclose(probs.collect()[1][::n], 1 / (1 + np.exp(-diffs / 4.0)))
    entropy = -(expected * np.log(expected) + (1 - expected) * np.log(1 - expected)).mean()
    assert gatherer.metrics["entropy"] == pytest.approx(entropy)
    with pytest.raises(KeyError, match="rewards"):
        gatherer.submit({"obs_1": np.zeros((2, 2, 1))})


def test_async_gatherer_never_blocks_and_collects_each_answer_once(tmp_path):
    gatherer = prefs.AsyncGatherer(tmp_path / "queue")
    pairs = _pairs(6)
    gatherer.submit(pairs)
    start = time.monotonic()
    got, labels = gatherer.collect()
    assert got == {} and labels.size == 0 and time.monotonic() - start < 1.0
    assert gatherer.num_pending == 6

    page = prefs.AsyncGatherer(tmp_path / "queue")  # the labeling page, another object
    shown = page.pending_queries(limit=4)
    np.testing.assert_array_equal(shown["obs_1"], pairs["obs_1"][:4])
    ids = list(shown["query_id"])
    page.answer(ids[:3], [1.0, 0.0, prefs.SKIP], labeler="ann")
    page.answer([ids[0], ids[3]], [0.0, 0.5], labeler="bob")  # ids[0] again: ignored
    got, labels = gatherer.collect()
    np.testing.assert_array_equal(got["query_id"], [ids[0], ids[1], ids[3]])
    np.testing.assert_array_equal(labels, [1.0, 0.0, 0.5])
    for name in ("obs_1", "actions_2", "rewards_1", "terminateds_2"):
        np.testing.assert_array_equal(got[name], pairs[name][[0, 1, 3]])
    assert got["terminateds_2"].dtype == bool
    assert gatherer.collect()[1].size == 0
    assert gatherer.pending() == list(pairs["query_id"][4:])  # the skipped one is answered
    with pytest.raises(ValueError, match="unknown query"):
        page.answer(["nope"], [1.0])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        page.answer(pairs["query_id"][4:5], [2.0])


def test_async_gatherer_restarts_with_pending_queries_and_uncollected_answers(tmp_path):
    queue = tmp_path / "queue"
    first = prefs.AsyncGatherer(queue)
    pairs = _pairs(5)
    first.submit(pairs)
    ids = list(pairs["query_id"])
    first.answer(ids[:2], [1.0, 0.0])
    assert first.collect()[1].tolist() == [1.0, 0.0]
    first.answer(ids[2:3], [0.25])  # answered, not collected before the "crash"
    del first

    again = prefs.AsyncGatherer(queue)
    assert again.pending() == ids[3:]
    got, labels = again.collect()
    assert got["query_id"].tolist() == ids[2:3] and labels.tolist() == [0.25]
    np.testing.assert_array_equal(got["obs_2"], pairs["obs_2"][2:3])
    again.answer(ids[0:1], [0.0])  # a late second answer to a collected query: ignored
    assert prefs.AsyncGatherer(queue).collect()[1].size == 0
    assert len(json.loads((queue / "collected.json").read_text())["answers"]) == 3


# --------------------------------------------------------------------------- selection


def _linear(weights: list[float]) -> BasicRewardNet:
    """r(s) = weights · s, no bias."""
    net = BasicRewardNet(spaces.Box(-50, 50, (2,)), ACT, use_action=False, hid_sizes=())
    with th.no_grad():
        layer = next(m for m in net.modules() if isinstance(m, th.nn.Linear))
        layer.weight.copy_(th.tensor([weights]))
        layer.bias.zero_()
    return net


def _candidates(obs: np.ndarray) -> dict[str, np.ndarray]:
    """Fragments (M, 3) whose steps all have observation ``obs[i]``."""
    obs = np.repeat(np.asarray(obs, np.float32)[:, None], 3, 1)
    m = len(obs)
    return {
        "obs": obs,
        "actions": np.zeros((m, 3, 1), np.float32),
        "new_obs": obs,
        "terminateds": np.zeros((m, 3), bool),
    }


@pytest.mark.parametrize("uncertainty_on", selection.UNCERTAINTY)
def test_active_selection_picks_the_pair_the_members_disagree_on(uncertainty_on):
    # The members agree on states with s[1] = 0; on fragment 3 (s[1] = 1) member A
    # prefers the other fragment and member B fragment 3.
    ensemble = RewardEnsemble(
        spaces.Box(-50, 50, (2,)), ACT, [_linear([1.0, 0.0]), _linear([1.0, 10.0])]
    )
    candidates = _candidates([[0, 0], [0, 0], [0, 0], [-1, 1]])
    for seed in range(6):  # 2 candidate pairs: all 4 fragments, matched at random
        rng = np.random.default_rng(seed)
        picked = prefs.active_pairs(
            candidates, 1, ensemble, rng, oversampling=2, uncertainty_on=uncertainty_on
        )
        assert -1 in (picked["obs_1"][0, 0, 0], picked["obs_2"][0, 0, 0])


@pytest.mark.parametrize("uncertainty_on", selection.UNCERTAINTY)
def test_active_selection_ranks_as_the_per_fragment_computation(uncertainty_on):
    rng = np.random.default_rng(1)
    members = [_linear(list(rng.normal(size=2))) for _ in range(3)]
    ensemble = RewardEnsemble(spaces.Box(-50, 50, (2,)), ACT, members)
    candidates = _candidates(rng.normal(size=(30, 2)))
    picked = prefs.active_pairs(
        candidates, 4, ensemble, np.random.default_rng(7), uncertainty_on=uncertainty_on
    )
    # The same draw, scored one fragment pair at a time as imitation does.
    first, second = selection._draw(30, 20, np.random.default_rng(7))

    def returns(i: int) -> np.ndarray:  # (members,)
        f = {k: v[i] for k, v in candidates.items()}
        return np.array([m.predict(f["obs"], f["actions"], f["new_obs"]).sum() for m in members])

    scores = []
    for i, j in zip(first, second):
        diff = returns(i) - returns(j)
        p = 1 / (1 + np.exp(-diff))
        label = (p > 0.5).mean()
        scores.append(
            {"logit": diff.var(ddof=1), "probability": p.var(), "label": label * (1 - label)}[
                uncertainty_on
            ]
        )
    best = np.argsort(-np.array(scores), kind="stable")[:4]
    np.testing.assert_allclose(picked["obs_1"], candidates["obs"][first[best]])
    np.testing.assert_allclose(picked["obs_2"], candidates["obs"][second[best]])
    uniform = prefs.uniform_pairs(candidates, 15, np.random.default_rng(0))
    assert uniform["obs_1"].shape == (15, 3, 2) and len(set(uniform["query_id"])) == 15


# ---------------------------------------------------------------------------- schedule


def test_schedule_matches_imitation_sums_to_the_budget_and_resumes():
    hyperbolic = prefs.QuerySchedule(1000, 5)
    # imitation: int(0.1 * 1000) first, then 900 shared by 1 / (1 + linspace(0, 1, 5)).
    weights = 1 / (1 + np.linspace(0, 1, 5))
    assert hyperbolic.counts[0] == 100 and len(hyperbolic) == 6
    assert np.abs(np.array(hyperbolic.counts[1:]) - 900 * weights / weights.sum()).max() < 1
    assert list(hyperbolic.counts[1:]) == sorted(hyperbolic.counts[1:], reverse=True)
    assert hyperbolic.counts[1] > hyperbolic.counts[-1]
    for total, rounds in ((1000, 5), (7, 3), (101, 10), (0, 2)):
        for kind in ("hyperbolic", "constant", "inverse_quadratic", lambda t: 1 + t):
            assert sum(prefs.QuerySchedule(total, rounds, kind, 0.25).counts) == total
    assert prefs.QuerySchedule(10, 3, "constant", 0.1).counts == (1, 3, 3, 3)

    taken = [hyperbolic.next(), hyperbolic.next()]
    state = json.loads(json.dumps(hyperbolic.get_state()))
    restored = prefs.QuerySchedule.from_state(state)
    rest = [restored.next() for _ in range(len(restored) - 2)]
    assert taken + rest == list(hyperbolic.counts) and restored.done
    with pytest.raises(StopIteration):
        restored.next()
    other = prefs.QuerySchedule(1000, 5)
    other.set_state(state)
    assert other.next() == hyperbolic.counts[2]
    with pytest.raises(ValueError, match="total_labels"):
        prefs.QuerySchedule(999, 5).set_state(state)


# ------------------------------------------------------------------------------- store


def test_store_appends_loads_restarts_and_trains(tmp_path):
    path = tmp_path / "labels"
    store = prefs.PreferenceStore(path)
    gatherer = prefs.SyntheticGatherer(temperature=0)
    for seed in (0, 1):
        gatherer.submit(_pairs(24, seed))
        store.append(*gatherer.collect())
    assert store.append({}, np.zeros(0)) is None
    assert len(store) == 48 and len(list(path.glob("part-*.parquet"))) == 2
    restarted = prefs.PreferenceStore(path)
    assert len(restarted) == 48
    restarted.append(*prefs.SyntheticGatherer(temperature=0).collect())  # nothing: no file
    data = restarted.load()
    assert sorted(data) == sorted(schemas.PREFERENCE_COLUMNS)
    assert data["obs_1"].shape == (48, T, 3) and data["preference"].dtype == np.float64
    with pytest.raises(ValueError, match="obs_1"):
        bad = _pairs(2)
        bad = {**bad, "obs_1": bad["obs_1"][:, :, :2], "obs_2": bad["obs_2"][:, :, :2]}
        bad = {**bad, "new_obs_1": bad["obs_1"], "new_obs_2": bad["obs_2"]}
        restarted.append(bad, np.ones(2))
    # The env's spaces give the same schema as the inferred one.
    assert prefs.PreferenceStore(path, OBS, ACT).append(_pairs(2), np.ones(2))

    cfg = trainer.TrainConfig(
        train_data=str(path),
        env="Pendulum-v1",
        net_kwargs={"hid_sizes": [8]},
        epochs=2,
        batch_size=16,
        engine="local",
        verbose=False,
        output=str(tmp_path / "net.pt"),
        storage_path=str(tmp_path / "runs"),
    )
    result = trainer.train(cfg)
    assert [h["epoch"] for h in result.history] == [0, 1]
    assert all(np.isfinite(h["train_loss"]) for h in result.history)


def test_store_restored_from_a_copy_holds_exactly_its_labels(tmp_path):
    store = prefs.PreferenceStore(tmp_path / "labels")
    gatherer = prefs.SyntheticGatherer(temperature=0)
    for seed in (0, 1):
        gatherer.submit(_pairs(4, seed))
        store.append(*gatherer.collect())
    store.copy_to(str(tmp_path / "ckpt"))
    gatherer.submit(_pairs(3, 2))
    later = store.append(*gatherer.collect())  # gathered after the checkpoint
    assert len(store) == 11

    store.restore_from(str(tmp_path / "ckpt"))
    assert len(store) == len(prefs.PreferenceStore(tmp_path / "labels")) == 8
    aside = tmp_path / "labels.superseded"
    assert [p.name for p in aside.iterdir()] == [os.path.basename(later)]  # moved, not lost

    lost = prefs.PreferenceStore(tmp_path / "elsewhere")  # the folder is gone
    lost.restore_from(str(tmp_path / "ckpt"))
    assert len(lost) == 8
    lost.restore_from(str(tmp_path / "no-checkpoint-copy"))
    assert len(lost) == 8
