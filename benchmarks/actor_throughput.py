"""Transitions/s served to 8 concurrent callers: coalescing actor vs local vs plain actor.

Eight caller actors (think: env runners with 8 vector envs each) each send
``--calls`` requests of ``--rows`` transitions, one at a time, and wait for the
answer, as an env runner waits for its rewards. Four ways to get the rewards:

* local:       each caller holds its own copy of the net and calls
               predict_processed (one torch thread per caller: 8 callers share the
               node's cores, as 8 env runners would);
* coalesced:   one RewardActor that merges requests arriving together into one pass,
               reached over its same-node socket (the default);
* coalesced-ray: the same with ``fast_path=False``: every request is a Ray call;
* one-by-one:  a RewardActor with coalescing off (one forward pass per request).

The actors reserve ``--actor-cpus`` CPUs (default: every core of this node, what
the 8 local callers use together), which is also how many parts they split a big
pass into (one torch thread each).
Throughput is all callers' transitions divided by the wall time from the first
caller's start to the last caller's end; each figure is the best of ``--repeats``
rounds, modes interleaved so load from other processes hits all alike. The net is
``NormalizedRewardNet(BasicRewardNet)`` with ``--hidden`` units per layer and
frozen statistics.

    python benchmarks/actor_throughput.py [--callers 8] [--rows 8] [--calls 200]
        [--hidden 64] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import os
import time

import gymnasium as gym
import numpy as np
import ray
import torch as th

from ray_rewards.actors import RewardActor, load_reward_source
from ray_rewards.file_format import to_bytes
from ray_rewards.networks import RunningNorm
from ray_rewards.reward_nets import BasicRewardNet, NormalizedRewardNet

OBS = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
ACT = gym.spaces.Box(-2.0, 2.0, (1,), np.float32)


@ray.remote(num_cpus=0)
class Caller:
    """Sends requests one after another and times them."""

    def __init__(self, seed: int, rows: int, calls: int, net_bytes: bytes):
        th.set_num_threads(1)
        rng = np.random.default_rng(seed)
        self.batches = [
            (
                rng.uniform(-1, 1, (rows, 3)).astype(np.float32),
                rng.uniform(-2, 2, (rows, 1)).astype(np.float32),
                rng.uniform(-1, 1, (rows, 3)).astype(np.float32),
                np.zeros(rows, bool),
            )
            for _ in range(calls)
        ]
        self.local = load_reward_source(net_bytes)

    def run(self, reward: RewardActor | None) -> tuple[float, float, int]:
        """``(start, end, transitions)``; ``reward=None`` predicts locally."""
        predict = (
            (lambda *b: self.local.predict_processed(*b, update_stats=False))
            if reward is None
            else reward.predict_processed
        )
        predict(*self.batches[0])  # warm-up
        start = time.time()
        for b in self.batches:
            predict(*b)
        return start, time.time(), sum(len(b[0]) for b in self.batches)


def throughput(callers: list, reward: RewardActor | None) -> float:
    results = ray.get([c.run.remote(reward) for c in callers])
    start = min(r[0] for r in results)
    end = max(r[1] for r in results)
    return sum(r[2] for r in results) / (end - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--callers", type=int, default=8)
    parser.add_argument("--rows", type=int, default=8, help="transitions per request")
    parser.add_argument("--calls", type=int, default=200, help="requests per caller per round")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-wait-ms", type=float, default=0.0)
    parser.add_argument("--actor-cpus", type=int, default=os.cpu_count())
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    args = parser.parse_args()

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    gpus = 1 if args.device == "cuda" else 0
    ray.init(
        num_cpus=args.callers + 3 * args.actor_cpus,
        num_gpus=gpus,
        address="local",
        include_dashboard=False,
        log_to_driver=False,
        _node_ip_address="127.0.0.1",
    )
    th.manual_seed(0)
    net = NormalizedRewardNet(
        BasicRewardNet(OBS, ACT, hid_sizes=(args.hidden, args.hidden)), RunningNorm
    )
    wire = to_bytes(net)
    callers = [Caller.remote(i, args.rows, args.calls, wire) for i in range(args.callers)]
    common = dict(num_cpus=args.actor_cpus, num_gpus=gpus / 3)
    actors = {
        "coalesced": RewardActor(wire, max_wait_s=args.max_wait_ms / 1000, **common),
        "coalesced-ray": RewardActor(
            wire, max_wait_s=args.max_wait_ms / 1000, fast_path=False, **common
        ),
        "one-by-one": RewardActor(wire, coalesce=False, **common),
    }
    ray.get([c.run.remote(None) for c in callers])  # start everything once
    for actor in actors.values():
        ray.get([c.run.remote(actor) for c in callers])

    best = dict.fromkeys(["local", *actors], 0.0)
    per_pass: dict[str, list[float]] = {mode: [] for mode in actors}
    for _ in range(args.repeats):
        best["local"] = max(best["local"], throughput(callers, None))
        for mode, actor in actors.items():
            before = actor.serving_stats()
            best[mode] = max(best[mode], throughput(callers, actor))
            after = actor.serving_stats()
            per_pass[mode].append(
                (after["requests"] - before["requests"])
                / max(after["forward_passes"] - before["forward_passes"], 1)
            )
    stats = actors["coalesced"].serving_stats()

    print(
        f"{args.callers} callers x {args.rows} transitions/request, net hidden "
        f"({args.hidden}, {args.hidden}), best of {args.repeats} x {args.calls} calls/caller; "
        f"actors on {stats['device']} with {stats['cpu_threads']} CPU threads, "
        f"max_wait {args.max_wait_ms:g} ms"
    )
    for mode, value in best.items():
        extra = f"  ({np.mean(per_pass[mode]):.1f} requests/pass)" if mode in per_pass else ""
        print(f"  {mode:<13} {value:12,.0f} transitions/s{extra}")
    print(f"ratio coalesced / local:      {best['coalesced'] / best['local']:.3f}")
    print(f"ratio coalesced-ray / local:  {best['coalesced-ray'] / best['local']:.3f}")
    print(f"ratio coalesced / one-by-one: {best['coalesced'] / best['one-by-one']:.3f}")
    ray.shutdown()


if __name__ == "__main__":
    main()
