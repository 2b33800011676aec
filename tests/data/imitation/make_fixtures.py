"""Write the imitation reward-net files that tests/test_imitation_files.py reads.

Each fixture is a small reward net built with the ``imitation`` library (1.0.1) and
saved the way its users save one, ``th.save(net, path)``, next to an ``.npz`` with a
fixed batch of transitions and the rewards imitation itself computes for them. The
tests load the ``.pth`` files without imitation and compare our rewards with these.

Run it only in a throwaway virtualenv outside the repository, never in the dev one
(ray_rewards' tests must pass with imitation not importable)::

    python3 -m venv /tmp/imit_venv
    /tmp/imit_venv/bin/pip install torch==2.13.0
    /tmp/imit_venv/bin/pip install imitation==1.0.1 'numpy<2' gymnasium==0.29.1
    /tmp/imit_venv/bin/python tests/data/imitation/make_fixtures.py

Seeds are fixed, so a rerun with the same versions writes the same numbers.
"""

from __future__ import annotations

import copy
import pathlib

import numpy as np
import torch as th
from gymnasium import spaces
from imitation.algorithms.adversarial.gail import RewardNetFromDiscriminatorLogit
from imitation.rewards import reward_nets as rn
from imitation.util import networks
from torch import nn

HERE = pathlib.Path(__file__).resolve().parent
BATCH = 12

PENDULUM_OBS = spaces.Box(
    low=np.array([-1.0, -1.0, -8.0], dtype=np.float32),
    high=np.array([1.0, 1.0, 8.0], dtype=np.float32),
    dtype=np.float32,
)
PENDULUM_ACT = spaces.Box(-2.0, 2.0, (1,), dtype=np.float32)
CARTPOLE_OBS = spaces.Box(-4.8, 4.8, (4,), dtype=np.float32)
CARTPOLE_ACT = spaces.Discrete(2)
IMAGE_OBS = spaces.Box(0, 255, (16, 16, 3), dtype=np.uint8)
IMAGE_ACT = spaces.Discrete(3)


def sample_batch(obs_space: spaces.Space, act_space: spaces.Space, seed: int) -> dict:
    """A batch of transitions drawn from seeded copies of the spaces (reproducible)."""
    obs_space, act_space = copy.deepcopy(obs_space), copy.deepcopy(act_space)
    obs_space.seed(seed)
    act_space.seed(seed + 1)
    obs = np.stack([obs_space.sample() for _ in range(BATCH)])
    next_obs = np.stack([obs_space.sample() for _ in range(BATCH)])
    acts = np.stack([act_space.sample() for _ in range(BATCH)])
    dones = np.arange(BATCH) % 3 == 0
    return {"obs": obs, "acts": acts, "next_obs": next_obs, "dones": dones}


def warm_up_stats(net: rn.RewardNet, obs_space, act_space, seed: int, rounds: int = 4) -> None:
    """Feed a few batches so normalization layers hold non-trivial statistics."""
    for i in range(rounds):
        b = sample_batch(obs_space, act_space, seed + 100 + i)
        tensors = net.preprocess(b["obs"], b["acts"], b["next_obs"], b["dones"])
        with networks.training(net), th.no_grad():
            for m in net.modules():
                if isinstance(m, rn.RewardNet) and not isinstance(
                    m, (rn.RewardNetWrapper, rn.RewardEnsemble, RewardNetFromDiscriminatorLogit)
                ):
                    m(*tensors)  # input norm layers update in training mode
        if hasattr(net, "normalize_output_layer"):
            net.predict_processed(b["obs"], b["acts"], b["next_obs"], b["dones"], update_stats=True)


def save(name: str, net: nn.Module, obs_space, act_space, seed: int, **extra_fns) -> None:
    """``th.save`` the net, then write its batch and imitation's rewards beside it
    (``extra_fns`` run last: they may change the net, e.g. update its statistics).
    """
    net.eval()
    th.save(net, HERE / f"{name}.pth")
    b = sample_batch(obs_space, act_space, seed)
    args = (b["obs"], b["acts"], b["next_obs"], b["dones"])
    out = dict(b)
    out["predict"] = net.predict(*args)
    kwargs = {"update_stats": False} if hasattr(net, "normalize_output_layer") else {}
    out["predict_processed"] = net.predict_processed(*args, **kwargs)
    for key, fn in extra_fns.items():
        out[key] = fn(net, args)
    np.savez(HERE / f"{name}.npz", **out)
    print(f"{name}: {type(net).__name__}, {(HERE / f'{name}.pth').stat().st_size} bytes")


def after_update(net: rn.NormalizedRewardNet, args: tuple) -> np.ndarray:
    """Normalized rewards after one more statistics update with the batch itself."""
    net.predict_processed(*args, update_stats=True)
    return net.predict_processed(*args, update_stats=False)


def main() -> None:
    """Build and save every fixture."""
    th.manual_seed(0)

    net = rn.BasicRewardNet(
        PENDULUM_OBS, PENDULUM_ACT, use_next_state=True, use_done=True, hid_sizes=(16, 16)
    )
    save("basic_box", net, PENDULUM_OBS, PENDULUM_ACT, seed=1)

    net = rn.BasicRewardNet(
        CARTPOLE_OBS,
        CARTPOLE_ACT,
        hid_sizes=(8,),
        activation=nn.Tanh,
        normalize_input_layer=networks.RunningNorm,
    )
    warm_up_stats(net, CARTPOLE_OBS, CARTPOLE_ACT, seed=2)
    save("basic_discrete", net, CARTPOLE_OBS, CARTPOLE_ACT, seed=2)

    net = rn.BasicShapedRewardNet(
        PENDULUM_OBS,
        PENDULUM_ACT,
        reward_hid_sizes=(8,),
        potential_hid_sizes=(8, 8),
        discount_factor=0.95,
    )
    save("basic_shaped", net, PENDULUM_OBS, PENDULUM_ACT, seed=3)

    base = rn.BasicRewardNet(CARTPOLE_OBS, CARTPOLE_ACT, hid_sizes=(8, 8))
    net = rn.NormalizedRewardNet(base, networks.RunningNorm)
    warm_up_stats(net, CARTPOLE_OBS, CARTPOLE_ACT, seed=4)
    save("normalized_running", net, CARTPOLE_OBS, CARTPOLE_ACT, seed=4, after_update=after_update)

    base = rn.BasicRewardNet(PENDULUM_OBS, PENDULUM_ACT, hid_sizes=(8,))
    net = rn.NormalizedRewardNet(base, networks.EMANorm)
    warm_up_stats(net, PENDULUM_OBS, PENDULUM_ACT, seed=5)
    save("normalized_ema", net, PENDULUM_OBS, PENDULUM_ACT, seed=5, after_update=after_update)

    members = [rn.BasicRewardNet(CARTPOLE_OBS, CARTPOLE_ACT, hid_sizes=(8,)) for _ in range(3)]
    ensemble = rn.RewardEnsemble(CARTPOLE_OBS, CARTPOLE_ACT, members)
    net = rn.AddSTDRewardWrapper(ensemble, default_alpha=0.5)

    def moments(n, args):
        return np.stack(n.base.predict_reward_moments(*args))

    def with_alpha(n, args):
        return n.predict_processed(*args, alpha=-1.0)

    save(
        "ensemble_std",
        net,
        CARTPOLE_OBS,
        CARTPOLE_ACT,
        seed=6,
        moments=moments,
        predict_processed_alpha_minus_1=with_alpha,
    )

    net = rn.CnnRewardNet(IMAGE_OBS, IMAGE_ACT, use_done=True, hid_channels=(4, 4))
    save("cnn", net, IMAGE_OBS, IMAGE_ACT, seed=7)

    cnn = rn.CnnRewardNet(
        IMAGE_OBS, IMAGE_ACT, use_action=False, use_next_state=True, hid_channels=(4,)
    )
    potential = rn.BasicPotentialCNN(IMAGE_OBS, hid_sizes=(4,))
    net = rn.ShapedRewardNet(cnn, potential, discount_factor=0.9)
    save("cnn_shaped", net, IMAGE_OBS, IMAGE_ACT, seed=8)

    # A space that has sampled holds a numpy Generator, which is then saved with the
    # net: the loader must read past it.
    obs_space = copy.deepcopy(PENDULUM_OBS)
    obs_space.seed(10)
    obs_space.sample()
    logits = rn.BasicRewardNet(obs_space, PENDULUM_ACT, hid_sizes=(8, 8))
    net = RewardNetFromDiscriminatorLogit(logits)
    save("gail", net, obs_space, PENDULUM_ACT, seed=9)


if __name__ == "__main__":
    main()
