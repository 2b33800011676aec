"""Reward networks with the API of ``imitation.rewards.reward_nets``.

Reason for its length: it mirrors that module, so every class a user imports from
there is found in one place here; each class is short and stands alone.

A reward net maps a batch of transitions ``(state, action, next_state, done)`` to
one reward per transition. ``forward`` works on preprocessed tensors and is
differentiable (training calls it); ``predict``/``predict_processed`` take numpy
batches straight from an environment, preprocess them, and return numpy rewards
(RL calls those). Wrappers compose: a :class:`ForwardWrapper` changes what
``forward`` computes (e.g. shaping), a :class:`PredictProcessedWrapper` only
post-processes ``predict_processed`` (e.g. normalization).

Shapes: for a batch of ``B`` transitions, ``state`` and ``next_state`` are
``(B, *obs_shape)`` (``(B,)`` or, as imitation takes it, ``(B, 1)`` for a Discrete
space), ``action`` likewise for the action space, ``done`` is ``(B,)``; every
reward output is ``(B,)``. :class:`CnnRewardNet` is imitation's name for
:class:`CNNRewardNet`.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch as th
import torch.nn.functional as F  # noqa: N812
from gymnasium import spaces
from torch import nn

from ray_rewards import _spaces, networks, preprocessing

Tensors = tuple[th.Tensor, th.Tensor, th.Tensor | None, th.Tensor | None]


def _batch_size(state: Any) -> int:
    shape = getattr(state, "shape", None)
    if shape is None:
        shape = np.shape(state)
    if len(shape) == 0:
        raise ValueError("state: expected a batch with a leading batch axis, got a scalar")
    return int(shape[0])


def _drop_unused(x: Any, used: bool, batch_size: int, name: str) -> Any:
    """``x`` if the net reads it, else None after checking its batch size only."""
    if used or x is None:
        return x
    shape = tuple(getattr(x, "shape", None) or np.shape(x))
    if shape[:1] != (batch_size,):
        got = shape[0] if shape else f"shape {shape}"
        raise ValueError(f"{name}: expected a batch of {batch_size} like state, got {got}")
    return None


def _check_update_stats(update_stats: Any) -> None:
    """TypeError unless ``update_stats`` is a bool (``"yes"`` must not count as True)."""
    if update_stats is not True and update_stats is not False:
        if not isinstance(update_stats, np.bool_):
            raise TypeError(
                f"predict_processed: update_stats must be True or False, got {update_stats!r}"
            )


def _check_reward_shape(rew: th.Tensor, batch_size: int, who: str) -> th.Tensor:
    if tuple(rew.shape) != (batch_size,):
        raise ValueError(
            f"{who}: expected rewards of shape ({batch_size},), got {tuple(rew.shape)}"
        )
    return rew


class RewardNet(nn.Module, abc.ABC):
    """Minimal abstract reward network: subclasses implement only ``forward``.

    Args:
        observation_space: the environment's observation space.
        action_space: the environment's action space.
        normalize_images: scale uint8 image observations to [0, 1] in ``preprocess``.
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        normalize_images: bool = True,
    ):
        super().__init__()
        self.observation_space = observation_space
        self.action_space = action_space
        self.normalize_images = normalize_images

    @abc.abstractmethod
    def forward(
        self,
        state: th.Tensor,
        action: th.Tensor,
        next_state: th.Tensor | None,
        done: th.Tensor | None,
    ) -> th.Tensor:
        """Compute rewards of shape ``(B,)`` from preprocessed tensors (differentiable)."""

    def preprocess(
        self,
        state: Any,
        action: Any,
        next_state: Any | None,
        done: Any | None,
    ) -> Tensors:
        """Validate a numpy (or tensor) batch and turn it into tensors on ``self.device``.

        ``next_state`` and ``done`` may be None for nets that do not use them; they
        stay None. Raises ValueError on mismatched batch sizes, shapes that do not
        fit the spaces, NaN/inf, or out-of-range discrete values.
        """
        batch_size = _batch_size(state)
        device, dtype = self._device_dtype()
        state_th = preprocessing.preprocess_space(
            state,
            self.observation_space,
            name="state",
            batch_size=batch_size,
            device=device,
            dtype=dtype,
            normalize_images=self.normalize_images,
        )
        action_th = preprocessing.preprocess_space(
            action,
            self.action_space,
            name="action",
            batch_size=batch_size,
            device=device,
            dtype=dtype,
            normalize_images=False,
        )
        next_state_th = done_th = None
        if next_state is not None:
            next_state_th = preprocessing.preprocess_space(
                next_state,
                self.observation_space,
                name="next_state",
                batch_size=batch_size,
                device=device,
                dtype=dtype,
                normalize_images=self.normalize_images,
            )
        if done is not None:
            done_th = preprocessing.preprocess_space(
                done,
                _DONE_SPACE,
                name="done",
                batch_size=batch_size,
                device=device,
                dtype=dtype,
                normalize_images=False,
            )
        return state_th, action_th, next_state_th, done_th

    def predict_th(
        self,
        state: Any,
        action: Any,
        next_state: Any | None = None,
        done: Any | None = None,
    ) -> th.Tensor:
        """Rewards of shape ``(B,)`` as a tensor on ``self.device``: eval mode, no grad."""
        batch_size = _batch_size(state)
        next_state = _drop_unused(next_state, self.uses_next_state, batch_size, "next_state")
        done = _drop_unused(done, self.uses_done, batch_size, "done")
        with networks.evaluating(self, skip_mode_free=True), th.no_grad():
            tensors = self.preprocess(state, action, next_state, done)
            rew = self(*tensors)
        if rew.shape != (batch_size,):  # the message is built only when it fails
            _check_reward_shape(rew, batch_size, f"{type(self).__name__}.forward")
        return rew

    def predict(
        self,
        state: Any,
        action: Any,
        next_state: Any | None = None,
        done: Any | None = None,
    ) -> np.ndarray:
        """Rewards of shape ``(B,)`` as a numpy array."""
        return self.predict_th(state, action, next_state, done).numpy(force=True)

    def predict_processed(
        self,
        state: Any,
        action: Any,
        next_state: Any | None = None,
        done: Any | None = None,
        **kwargs: Any,
    ) -> np.ndarray:
        """Rewards for RL, post-processed (e.g. normalized) by wrappers; here ``predict``.

        Keyword arguments are for wrappers (``update_stats`` of NormalizedRewardNet,
        ``alpha`` of AddSTDRewardWrapper). ``update_stats`` is accepted (a bool) and
        has no effect here, as in imitation, so one call serves plain and normalized
        nets; any other keyword that reaches a net with no use for it is a TypeError
        naming it, not silently ignored.
        """
        if kwargs:
            unexpected = sorted(k for k in kwargs if k != "update_stats")
            if unexpected:
                raise TypeError(
                    f"{type(self).__name__}.predict_processed got unexpected keyword "
                    f"argument(s) {unexpected}; no wrapper in this net takes them"
                )
            _check_update_stats(kwargs.get("update_stats", False))
        return self.predict(state, action, next_state, done)

    @property
    def uses_next_state(self) -> bool:
        """Whether ``forward`` reads ``next_state``: a ``use_next_state`` attribute (as
        BasicRewardNet and CNNRewardNet have) if there is one, else True.

        ``predict*`` skip preprocessing (and validating) inputs the net never reads.
        """
        return getattr(self, "use_next_state", True)

    @property
    def uses_done(self) -> bool:
        """Whether ``forward`` reads ``done``: ``use_done`` if set, else True."""
        return getattr(self, "use_done", True)

    def _device_dtype(self) -> tuple[th.device, th.dtype]:
        # The first parameter, found without building the whole module list (per call).
        stack: list[nn.Module | None] = [self]
        while stack:
            m = stack.pop()
            if m is None:
                continue
            for p in m._parameters.values():
                if p is not None:
                    return p.device, p.dtype
            stack.extend(reversed(m._modules.values()))
        return th.device("cpu"), th.get_default_dtype()

    @property
    def device(self) -> th.device:
        """Device of the first parameter; CPU for a parameterless net."""
        return self._device_dtype()[0]

    @property
    def dtype(self) -> th.dtype:
        """Dtype of the first parameter; torch's default for a parameterless net."""
        return self._device_dtype()[1]

    def __getstate__(self) -> dict[str, Any]:
        """Pickle state with gymnasium spaces as plain data, so ``th.load`` needs no numpy."""
        return _spaces.encode_spaces(super().__getstate__())

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Restore pickled state, rebuilding the spaces (see ``ray_rewards._spaces``)."""
        super().__setstate__(_spaces.decode_spaces(state))


_DONE_SPACE = spaces.Box(0.0, 1.0, shape=())


class RewardNetWrapper(RewardNet):
    """A reward net that wraps another; spaces, device, dtype and preprocessing are its."""

    def __init__(self, base: RewardNet):
        if not isinstance(base, RewardNet):
            raise TypeError(f"base: expected a RewardNet, got {type(base).__name__}")
        super().__init__(base.observation_space, base.action_space, base.normalize_images)
        self._base = base

    @property
    def base(self) -> RewardNet:
        """The wrapped reward net."""
        return self._base

    def _device_dtype(self) -> tuple[th.device, th.dtype]:
        # The base's properties, so a base that overrides them (or a stand-in) decides.
        return self._base.device, self._base.dtype

    @property
    def uses_next_state(self) -> bool:
        """The base's."""
        return self._base.uses_next_state

    @property
    def uses_done(self) -> bool:
        """The base's."""
        return self._base.uses_done

    def preprocess(
        self, state: Any, action: Any, next_state: Any | None, done: Any | None
    ) -> Tensors:
        """The base's preprocessing."""
        return self._base.preprocess(state, action, next_state, done)


class ForwardWrapper(RewardNetWrapper):
    """A wrapper that changes ``forward``; ``predict_processed`` then uses the new forward.

    Raises ValueError when ``base`` is a PredictProcessedWrapper: its processing would
    be silently skipped by a new ``forward``. Wrap the processing outermost instead.
    """

    def __init__(self, base: RewardNet):
        if isinstance(base, PredictProcessedWrapper):
            raise ValueError(
                "ForwardWrapper cannot be applied on top of PredictProcessedWrapper! "
                f"{type(self).__name__} would bypass the predict_processed of "
                f"{type(base).__name__}; put the PredictProcessedWrapper outside instead."
            )
        super().__init__(base)


class PredictProcessedWrapper(RewardNetWrapper):
    """A wrapper that only changes ``predict_processed``.

    ``forward``, ``predict`` and ``predict_th`` pass to the base unchanged, so training
    sees the raw net; keyword arguments of ``predict_processed`` pass down.
    """

    def forward(
        self,
        state: th.Tensor,
        action: th.Tensor,
        next_state: th.Tensor | None,
        done: th.Tensor | None,
    ) -> th.Tensor:
        """The base's forward."""
        return self._base.forward(state, action, next_state, done)

    def predict_th(
        self,
        state: Any,
        action: Any,
        next_state: Any | None = None,
        done: Any | None = None,
    ) -> th.Tensor:
        """The base's predict_th."""
        return self._base.predict_th(state, action, next_state, done)

    def predict(
        self,
        state: Any,
        action: Any,
        next_state: Any | None = None,
        done: Any | None = None,
    ) -> np.ndarray:
        """The base's predict."""
        return self._base.predict(state, action, next_state, done)

    @abc.abstractmethod
    def predict_processed(
        self,
        state: Any,
        action: Any,
        next_state: Any | None = None,
        done: Any | None = None,
        **kwargs: Any,
    ) -> np.ndarray:
        """Post-processed rewards of shape ``(B,)``."""


class BasicRewardNet(RewardNet):
    """MLP over the concatenation of the flattened inputs it is told to use.

    Args:
        observation_space, action_space: the spaces.
        use_state, use_action, use_next_state, use_done: which inputs feed the MLP.
        **kwargs: passed to :func:`~ray_rewards.networks.build_mlp` (``hid_sizes``
            defaults to ``(32, 32)``; e.g. ``normalize_input_layer=RunningNorm``).
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        use_state: bool = True,
        use_action: bool = True,
        use_next_state: bool = False,
        use_done: bool = False,
        **kwargs: Any,
    ):
        super().__init__(observation_space, action_space)
        if not (use_state or use_action or use_next_state or use_done):
            raise ValueError("BasicRewardNet: at least one of use_* must be True")
        self.use_state = use_state
        self.use_action = use_action
        self.use_next_state = use_next_state
        self.use_done = use_done
        mlp_kwargs = {"hid_sizes": (32, 32), **kwargs}
        self.mlp = networks.build_mlp(
            in_size=self.input_size, out_size=1, squeeze_output=True, **mlp_kwargs
        )

    @property
    def input_size(self) -> int:
        """Width of the concatenated inputs the MLP takes (from the spaces and ``use_*``)."""
        obs_dim = preprocessing.flat_dim(self.observation_space)
        return (
            obs_dim * (self.use_state + self.use_next_state)
            + preprocessing.flat_dim(self.action_space) * self.use_action
            + self.use_done
        )

    def forward(
        self,
        state: th.Tensor,
        action: th.Tensor,
        next_state: th.Tensor | None,
        done: th.Tensor | None,
    ) -> th.Tensor:
        """MLP of the concatenated inputs: ``(B,)`` rewards."""
        inputs = []
        if self.use_state:
            inputs.append(th.flatten(state, 1))
        if self.use_action:
            inputs.append(th.flatten(action, 1))
        if self.use_next_state:
            inputs.append(th.flatten(_required(next_state, "next_state", self), 1))
        if self.use_done:
            inputs.append(th.reshape(_required(done, "done", self), (-1, 1)))
        return self.mlp(th.cat(inputs, dim=1) if len(inputs) > 1 else inputs[0])


def _required(x: th.Tensor | None, name: str, net: nn.Module) -> th.Tensor:
    if x is None:
        raise ValueError(f"{type(net).__name__} uses {name}, but got {name}=None")
    return x


def cnn_transpose(tens: th.Tensor) -> th.Tensor:
    """Transpose a ``(B, H, W, C)`` batch to ``(B, C, H, W)``; ValueError unless 4-D."""
    if tens.dim() != 4:
        raise ValueError(
            f"Invalid input: cnn_transpose expected a 4-D tensor, got shape {tuple(tens.shape)}"
        )
    return th.permute(tens, (0, 3, 1, 2))


def _image_channels(space: spaces.Space, hwc_format: bool, who: str) -> int:
    if not preprocessing.is_image_space(space):
        raise ValueError(
            f"{who} requires observations to be images (it must be given image inputs): "
            f"expected a uint8 Box of 3 dims with bounds [0, 255], got {space}"
        )
    return int(space.shape[2] if hwc_format else space.shape[0])


class CNNRewardNet(RewardNet):
    """CNN reward over image observations with Discrete actions.

    The CNN takes the stacked channels of the states it uses and outputs one value
    per action (times 2 with ``use_done``); the reward picks the taken action's (and
    done flag's) value.
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        use_state: bool = True,
        use_action: bool = True,
        use_next_state: bool = False,
        use_done: bool = False,
        hwc_format: bool = True,
        **kwargs: Any,
    ):
        super().__init__(observation_space, action_space)
        if not (use_state or use_next_state):
            raise ValueError(
                "CNNRewardNet must take current or next state as input: "
                "use_state or use_next_state must be True"
            )
        channels = _image_channels(observation_space, hwc_format, "CNNRewardNet")
        if use_action and not isinstance(action_space, spaces.Discrete):
            raise ValueError(
                "CNNRewardNet can only use Discrete action spaces (or use_action=False), "
                f"got {action_space}"
            )
        self.use_state = use_state
        self.use_action = use_action
        self.use_next_state = use_next_state
        self.use_done = use_done
        self.hwc_format = hwc_format
        out_size = (int(action_space.n) if use_action else 1) * (2 if use_done else 1)
        cnn_kwargs = {"hid_channels": (32, 32), **kwargs}
        self.cnn = networks.build_cnn(
            in_channels=channels * (use_state + use_next_state),
            out_size=out_size,
            squeeze_output=out_size == 1,
            **cnn_kwargs,
        )

    def forward(
        self,
        state: th.Tensor,
        action: th.Tensor,
        next_state: th.Tensor | None,
        done: th.Tensor | None,
    ) -> th.Tensor:
        """Per-action CNN outputs indexed by the one-hot action (and done): ``(B,)``."""
        inputs = []
        if self.use_state:
            inputs.append(state)
        if self.use_next_state:
            inputs.append(_required(next_state, "next_state", self))
        x = th.cat(inputs, dim=3 if self.hwc_format else 1)
        out = self.cnn(cnn_transpose(x) if self.hwc_format else x)
        if not (self.use_action or self.use_done):
            return out
        if self.use_done:
            d = _required(done, "done", self).reshape(-1, 1)
            select = action if self.use_action else th.ones_like(d)
            select = th.cat([select * (1 - d), select * d], dim=1)
        else:
            select = action
        return th.sum(out * select, dim=1)


CnnRewardNet = CNNRewardNet
"""imitation's spelling of :class:`CNNRewardNet` (the same class)."""


class ShapedRewardNet(ForwardWrapper):
    """Potential-based shaping: ``r(s, a, s') + γ·(1 − done)·Φ(s') − Φ(s)``.

    Args:
        base: the unshaped reward net.
        potential: module mapping preprocessed states ``(B, ...)`` to ``(B,)``
            (``(B, 1)`` is accepted and flattened; other shapes raise ValueError).
        discount_factor: γ.
    """

    def __init__(self, base: RewardNet, potential: nn.Module, discount_factor: float):
        super().__init__(base)
        self.potential = potential
        self.discount_factor = discount_factor

    @property
    def uses_next_state(self) -> bool:
        """Shaping reads the next state's potential."""
        return True

    @property
    def uses_done(self) -> bool:
        """Shaping zeroes the potential of terminal next states."""
        return True

    def _potential(self, state: th.Tensor) -> th.Tensor:
        out = self.potential(state)
        batch_size = state.shape[0]
        if out.shape == (batch_size, 1):
            out = out.reshape(batch_size)
        return _check_reward_shape(out, batch_size, "ShapedRewardNet.potential")

    def forward(
        self,
        state: th.Tensor,
        action: th.Tensor,
        next_state: th.Tensor | None,
        done: th.Tensor | None,
    ) -> th.Tensor:
        """Shaped rewards ``(B,)``; the potential of terminal next states counts as 0."""
        next_state = _required(next_state, "next_state", self)
        done = _required(done, "done", self)
        base_rew = _check_reward_shape(
            self.base(state, action, next_state, done), state.shape[0], "ShapedRewardNet.base"
        )
        new_potential = (1 - done.to(base_rew.dtype)) * self._potential(next_state)
        return base_rew + self.discount_factor * new_potential - self._potential(state)


class RewardNetFromDiscriminatorLogit(ForwardWrapper):
    r"""GAIL's policy reward from a discriminator: ``-log(1 - D) = -logsigmoid(-logit)``.

    ``base`` outputs the logit of "this transition is the expert's" (GAIL's
    discriminator). The reward is a non-decreasing map of that logit, always positive,
    as imitation's GAIL gives its generator: ``(B,)`` in, ``(B,)`` out.
    """

    def forward(
        self,
        state: th.Tensor,
        action: th.Tensor,
        next_state: th.Tensor | None,
        done: th.Tensor | None,
    ) -> th.Tensor:
        """``-logsigmoid(-base(...))``, shape ``(B,)``."""
        return -F.logsigmoid(-self._base(state, action, next_state, done))


class BasicPotentialMLP(nn.Module):
    """MLP potential Φ(s) over flattened preprocessed states: ``(B, ...) -> (B,)``."""

    def __init__(self, observation_space: spaces.Space, hid_sizes: Iterable[int], **kwargs: Any):
        super().__init__()
        self._potential_net = networks.build_mlp(
            in_size=preprocessing.flat_dim(observation_space),
            hid_sizes=hid_sizes,
            squeeze_output=True,
            flatten_input=True,
            **kwargs,
        )

    def forward(self, state: th.Tensor) -> th.Tensor:
        """Potential of each state."""
        return self._potential_net(state)


class BasicPotentialCNN(nn.Module):
    """CNN potential Φ(s) over image states: ``(B, H, W, C)`` (or NCHW) ``-> (B,)``."""

    def __init__(
        self,
        observation_space: spaces.Space,
        hid_sizes: Iterable[int],
        hwc_format: bool = True,
        **kwargs: Any,
    ):
        super().__init__()
        self.hwc_format = hwc_format
        channels = _image_channels(observation_space, hwc_format, "BasicPotentialCNN")
        self._potential_net = networks.build_cnn(
            in_channels=channels, hid_channels=hid_sizes, squeeze_output=True, **kwargs
        )

    def forward(self, state: th.Tensor) -> th.Tensor:
        """Potential of each state."""
        return self._potential_net(cnn_transpose(state) if self.hwc_format else state)


class BasicShapedRewardNet(ShapedRewardNet):
    """A BasicRewardNet shaped by a BasicPotentialMLP (the AIRL discriminator's net)."""

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        *,
        reward_hid_sizes: Iterable[int] = (32,),
        potential_hid_sizes: Iterable[int] = (32, 32),
        use_state: bool = True,
        use_action: bool = True,
        use_next_state: bool = False,
        use_done: bool = False,
        discount_factor: float = 0.99,
        **kwargs: Any,
    ):
        base = BasicRewardNet(
            observation_space,
            action_space,
            use_state=use_state,
            use_action=use_action,
            use_next_state=use_next_state,
            use_done=use_done,
            hid_sizes=reward_hid_sizes,
            **kwargs,
        )
        potential = BasicPotentialMLP(observation_space, potential_hid_sizes, **kwargs)
        super().__init__(base, potential, discount_factor=discount_factor)


class NormalizedRewardNet(PredictProcessedWrapper):
    """Normalize the base's processed rewards with running statistics.

    Args:
        base: the reward net whose ``predict_processed`` output is normalized.
        normalize_output_layer: a :class:`~ray_rewards.networks.BaseNorm` class,
            e.g. ``RunningNorm``; instantiated with one feature.
    """

    def __init__(self, base: RewardNet, normalize_output_layer: type[networks.BaseNorm]):
        super().__init__(base)
        self.normalize_output_layer = normalize_output_layer(1)

    def predict_processed(
        self,
        state: Any,
        action: Any,
        next_state: Any | None = None,
        done: Any | None = None,
        update_stats: bool = True,
        **kwargs: Any,
    ) -> np.ndarray:
        """Normalize with the statistics held before this batch, then (if
        ``update_stats``) update them with this batch's raw rewards.

        With ``update_stats``, rewards that are not finite raise ValueError naming the
        rows, with the statistics unchanged (the norm layer refuses them); TypeError
        unless ``update_stats`` is a bool.
        """
        _check_update_stats(update_stats)
        rew = self._base.predict_processed(state, action, next_state, done, **kwargs)
        norm = self.normalize_output_layer
        out = norm.normalize(rew)
        if update_stats:
            norm.update_stats(rew)
        return out


class RewardNetWithVariance(RewardNet):
    """A reward net that also gives the variance of its prediction."""

    @abc.abstractmethod
    def predict_reward_moments(
        self,
        state: Any,
        action: Any,
        next_state: Any | None = None,
        done: Any | None = None,
        **kwargs: Any,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Mean and variance of the reward, each of shape ``(B,)``."""


class RewardEnsemble(RewardNetWithVariance):
    """Ensemble of reward nets over one pair of spaces.

    ``predict_processed`` is the mean of the members' processed rewards;
    ``predict_reward_moments`` gives that mean and the ddof=1 variance across
    members. ``forward`` is the mean of the members' forwards (differentiable).
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        members: Iterable[RewardNet],
    ):
        super().__init__(observation_space, action_space)
        members = list(members)
        if len(members) < 2:
            raise ValueError(f"RewardEnsemble: expected at least 2 members, got {len(members)}")
        for i, m in enumerate(members):
            if not isinstance(m, RewardNet):
                raise TypeError(f"members[{i}]: expected a RewardNet, got {type(m).__name__}")
        self.members = nn.ModuleList(members)

    @property
    def uses_next_state(self) -> bool:
        """Whether any member reads ``next_state``."""
        return any(m.uses_next_state for m in self.members)

    @property
    def uses_done(self) -> bool:
        """Whether any member reads ``done``."""
        return any(m.uses_done for m in self.members)

    @property
    def num_members(self) -> int:
        """Number of members."""
        return len(self.members)

    def forward(
        self,
        state: th.Tensor,
        action: th.Tensor,
        next_state: th.Tensor | None,
        done: th.Tensor | None,
    ) -> th.Tensor:
        """Mean of the members' rewards ``(B,)``."""
        return th.stack([m(state, action, next_state, done) for m in self.members]).mean(0)

    def predict_processed_all(
        self,
        state: Any,
        action: Any,
        next_state: Any | None = None,
        done: Any | None = None,
        **kwargs: Any,
    ) -> np.ndarray:
        """Each member's processed rewards: shape ``(B, num_members)``."""
        return np.stack(
            [m.predict_processed(state, action, next_state, done, **kwargs) for m in self.members],
            axis=-1,
        )

    def predict_reward_moments(
        self,
        state: Any,
        action: Any,
        next_state: Any | None = None,
        done: Any | None = None,
        **kwargs: Any,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Mean and ddof=1 variance of the members' processed rewards, each ``(B,)``."""
        all_rew = self.predict_processed_all(state, action, next_state, done, **kwargs)
        return all_rew.mean(-1), all_rew.var(-1, ddof=1)

    def predict_processed(
        self,
        state: Any,
        action: Any,
        next_state: Any | None = None,
        done: Any | None = None,
        **kwargs: Any,
    ) -> np.ndarray:
        """Mean of the members' processed rewards."""
        return self.predict_reward_moments(state, action, next_state, done, **kwargs)[0]


class AddSTDRewardWrapper(PredictProcessedWrapper):
    """Processed reward = mean + α·std of a RewardNetWithVariance (optimism/pessimism).

    Args:
        base: a :class:`RewardNetWithVariance` (TypeError otherwise).
        default_alpha: α when ``predict_processed`` gets no ``alpha``.
    """

    def __init__(self, base: RewardNet, default_alpha: float = 0.0):
        if not isinstance(base, RewardNetWithVariance):
            raise TypeError(
                "AddSTDRewardWrapper: expected a RewardNetWithVariance base (e.g. "
                f"RewardEnsemble), got {type(base).__name__}"
            )
        super().__init__(base)
        self.default_alpha = default_alpha

    def predict_processed(
        self,
        state: Any,
        action: Any,
        next_state: Any | None = None,
        done: Any | None = None,
        alpha: float | None = None,
        **kwargs: Any,
    ) -> np.ndarray:
        """``mean + alpha * sqrt(var)``; other kwargs pass to the base's moments."""
        alpha = self.default_alpha if alpha is None else alpha
        base: RewardNetWithVariance = self._base  # type: ignore[assignment]
        mean, var = base.predict_reward_moments(state, action, next_state, done, **kwargs)
        return mean + alpha * np.sqrt(var)


# Library nets whose forward ignores their own mode (their submodules are walked anyway).
networks.MODE_FREE_MODULES.update(
    {
        BasicRewardNet,
        CNNRewardNet,
        ShapedRewardNet,
        BasicShapedRewardNet,
        BasicPotentialMLP,
        BasicPotentialCNN,
        NormalizedRewardNet,
        RewardEnsemble,
        AddSTDRewardWrapper,
    }
)
