"""Building blocks: running normalization layers, MLP/CNN builders, mode switches.

Reason for its length: it is ``imitation.util.networks``'s surface (norm layers,
builders, mode contexts) plus the one implementation of merging a net's
normalization statistics across its copies (:class:`NormSync`), which belongs
with the layers whose buffers it reads and writes.
"""

from __future__ import annotations

import abc
import collections
import contextlib
import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch as th
from torch import nn

from ray_rewards import preprocessing
from ray_rewards.stats import Moments, chan_merge, column_moments


class training(contextlib.AbstractContextManager):  # noqa: N801 (reads as a function)
    """Put ``module`` and all its submodules in training mode (or ``mode``) inside a
    ``with`` block, then give every submodule back the mode it had.

    Every submodule is checked, even when the root is already in ``mode``: a root
    in eval mode may hold a submodule left in training mode (``net.eval();
    net.base.train()``), whose Dropout or RunningNorm must not act during
    prediction. Modes are restored parents first, so a module whose own
    ``train()`` recurses into its children cannot clobber their modes.

    With ``skip_mode_free``, modules whose exact class is in
    :data:`MODE_FREE_MODULES` keep their flag: their output is the same in either
    mode, so the result of a forward pass is too, for a fraction of the cost on
    small nets (``predict`` uses it once per call). Their ``training`` attribute is
    then not ``mode`` inside the block.
    """

    def __init__(self, module: nn.Module, mode: bool = True, *, skip_mode_free: bool = False):
        self.module = module
        self.mode = mode
        self.skip_mode_free = skip_mode_free
        self.saved: list[tuple[nn.Module, bool]] = []

    def __enter__(self) -> nn.Module:
        mode = self.mode
        modules = walk_modules(self.module)
        if self.skip_mode_free:
            kept = [m for m in modules if type(m) not in MODE_FREE_MODULES]
            # A kept module whose own train() recurses into its children would flip
            # skipped ones as well; then every module takes part.
            if not kept or all(type(m).train is _MODULE_TRAIN for m in kept):
                modules = kept
        self.saved = [(m, m.training) for m in modules]
        for m, _ in self.saved:
            if m.training != mode:
                _set_mode(m, mode)
        return self.module

    def __exit__(self, *exc: object) -> None:
        for m, was in self.saved:
            if m.training != was:
                _set_mode(m, was)
        self.saved = []


def evaluating(module: nn.Module, *, skip_mode_free: bool = False) -> training:
    """Put ``module`` in evaluation mode inside the ``with`` block, then restore its mode."""
    return training(module, mode=False, skip_mode_free=skip_mode_free)


def training_mode(module: nn.Module, mode: bool = False) -> training:
    """``training(module, mode)`` under imitation's name; as there, ``mode`` defaults
    to False (evaluation).
    """
    return training(module, mode=mode)


def walk_modules(module: nn.Module) -> list[nn.Module]:
    """``module`` and its submodules, each parent before its children.

    A lean ``list(nn.Module.modules())`` (no name strings, no de-duplication: a
    shared submodule comes once per parent) for per-call hot paths.
    """
    out = [module]
    for m in out:  # a list iterated while it grows visits the appended items too
        for child in m._modules.values():
            if child is not None:
                out.append(child)
    return out


_MODULE_TRAIN = nn.Module.train

MODE_FREE_MODULES: set[type[nn.Module]] = {
    nn.Sequential,
    nn.ModuleList,
    nn.ModuleDict,
    nn.Identity,
    nn.Flatten,
    nn.Unflatten,
    nn.Linear,
    nn.Bilinear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.Embedding,
    nn.LayerNorm,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.ReLU,
    nn.LeakyReLU,
    nn.ELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Tanh,
    nn.Sigmoid,
    nn.Softplus,
}
"""Exact classes (not subclasses) whose ``forward`` never reads ``training``.

``training(..., skip_mode_free=True)`` leaves their flag alone. Add a class of your
own only if its output cannot depend on its mode (no dropout, no running statistics).
"""


def _set_mode(m: nn.Module, mode: bool) -> None:
    # Module.train() recurses into children, which `training` visits itself; a module
    # that overrides train() still gets its own train() called.
    if type(m).train is _MODULE_TRAIN:
        m.__dict__["training"] = mode
    else:
        m.train(mode)


class SqueezeLayer(nn.Module):
    """Squeeze ``(B, 1)`` to ``(B,)``; any other shape is an error."""

    def forward(self, x: th.Tensor) -> th.Tensor:
        """Drop the trailing feature dimension of size 1."""
        if x.dim() != 2 or x.shape[1] != 1:
            raise ValueError(f"SqueezeLayer: expected shape (B, 1), got {tuple(x.shape)}")
        return x.squeeze(1)


MODE_FREE_MODULES.add(SqueezeLayer)


class BaseNorm(nn.Module, abc.ABC):
    """Normalize features with running statistics.

    Buffers (all in ``state_dict``): ``running_mean`` and ``running_var`` (float32,
    shape ``(num_features,)``, as imitation's, so state dicts and dtype checks carry
    over) and ``count`` (int64 scalar: imitation's int32 wraps after 2**31 samples).
    Updates and merges are computed in float64 and rounded once into the float32
    buffers (:meth:`moments` / :meth:`_write`); ``forward`` computes in the input's
    dtype. In training mode ``forward`` first updates the statistics with the
    batch, then normalizes; in eval mode it only normalizes.
    """

    running_mean: th.Tensor
    running_var: th.Tensor
    count: th.Tensor

    STATS_DTYPE = th.float32
    """dtype of ``running_mean`` and ``running_var``."""
    COUNT_DTYPE = th.int64
    """dtype of ``count``."""

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        if num_features < 1:
            raise ValueError(f"num_features must be >= 1, got {num_features}")
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("running_mean", th.empty(num_features, dtype=self.STATS_DTYPE))
        self.register_buffer("running_var", th.empty(num_features, dtype=self.STATS_DTYPE))
        self.register_buffer("count", th.empty((), dtype=self.COUNT_DTYPE))
        BaseNorm.reset_running_stats(self)

    def reset_running_stats(self) -> None:
        """Forget everything: mean 0, variance 1, count 0."""
        self.running_mean.zero_()
        self.running_var.fill_(1)
        self.count.zero_()

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Restore a pickled layer; float64 statistics (files written before the buffers
        became float32) are cast to float32. Other dtypes are left for the file
        format's checks to refuse.
        """
        super().__setstate__(state)
        bufs = self._buffers
        for name in ("running_mean", "running_var"):
            if isinstance(bufs.get(name), th.Tensor) and bufs[name].dtype == th.float64:
                bufs[name] = bufs[name].to(type(self).STATS_DTYPE)

    def forward(self, x: th.Tensor) -> th.Tensor:
        """Normalize ``x`` of shape ``(B, num_features)`` (or ``(B,)`` when num_features=1)."""
        if self.training:
            with th.no_grad():
                self.update_stats(x)
        # In the input's dtype, as imitation's ``(x - mean) / sqrt(var + eps)``.
        mean, var = self.running_mean.to(x.dtype), self.running_var.to(x.dtype)
        return (x - mean) / th.sqrt(var + self.eps)

    def _check_batch(self, batch: th.Tensor | np.ndarray) -> th.Tensor | np.ndarray:
        if batch.ndim == 1 and self.num_features == 1:
            batch = batch.reshape(-1, 1)
        if batch.ndim != 2 or batch.shape[1] != self.num_features:
            raise ValueError(
                f"{type(self).__name__}: expected a batch of shape (B, {self.num_features}), "
                f"got {tuple(batch.shape)}"
            )
        return batch

    @abc.abstractmethod
    def update_stats(self, batch: th.Tensor | np.ndarray) -> None:
        """Update the running statistics with ``batch`` of shape ``(B, num_features)``.

        Raises ValueError, changing nothing, when the batch holds NaN or inf (or values
        whose moments overflow): one bad sample would poison the statistics for good.
        """

    def _finite_moments(self, batch: th.Tensor | np.ndarray) -> Moments:
        """The moments of a checked batch; ValueError naming the rows if not finite."""
        batch_m = _batch_moments(self._check_batch(batch))
        if not (np.isfinite(batch_m.mean).all() and np.isfinite(batch_m.var).all()):
            raise self._non_finite(batch)
        return batch_m

    def _non_finite(self, batch: th.Tensor | np.ndarray) -> ValueError:
        rows = preprocessing.non_finite_rows(self._check_batch(batch))
        where = (
            f"NaN or inf at rows {preprocessing.format_rows(rows)}"
            if rows
            else "values whose moments overflow"
        )
        return ValueError(
            f"{type(self).__name__}.update_stats: expected finite values, got {where} of "
            f"{batch.shape[0]}; the statistics were left unchanged"
        )

    def moments(self) -> Moments:
        """The statistics as float64 numpy :class:`~ray_rewards.stats.Moments` (a copy)."""
        return Moments(
            self.count.item(),
            self.running_mean.numpy(force=True).astype(np.float64),
            self.running_var.numpy(force=True).astype(np.float64),
        )

    def stored(self, moments: Moments) -> Moments:
        """``moments`` as the buffers hold them once written: mean and var rounded to
        float32 (what :meth:`moments` reads back after :meth:`_write`).
        """
        np_dtype = th.empty(0, dtype=self.STATS_DTYPE).numpy().dtype
        return Moments(moments.count, moments.mean.astype(np_dtype), moments.var.astype(np_dtype))

    def _write(self, moments: Moments) -> None:
        """Overwrite the buffers, rounding the float64 moments to the buffers' dtype;
        through numpy views on CPU (several times cheaper).
        """
        if self.running_mean.device.type == "cpu":
            self.running_mean.numpy()[...] = moments.mean
            self.running_var.numpy()[...] = moments.var
            self.count.numpy()[...] = moments.count
        else:
            with th.no_grad():
                self.running_mean.copy_(th.from_numpy(moments.mean))
                self.running_var.copy_(th.from_numpy(moments.var))
                self.count.fill_(moments.count)

    def normalize(self, x: np.ndarray) -> np.ndarray:
        """Numpy twin of ``forward`` in eval mode: ``(x - mean) / sqrt(var + eps)``.

        For ``x`` of shape ``(B, num_features)`` (or ``(B,)`` with one feature); the
        result keeps ``x``'s dtype. Never updates the statistics.
        """
        mean, var = self._buffers["running_mean"], self._buffers["running_var"]
        if self.num_features == 1:  # a reward: Python floats keep x's dtype, and are cheap
            out = x - mean.item()
            out *= 1.0 / math.sqrt(var.item() + self.eps)
            return out
        mean = mean.numpy(force=True).astype(np.float64)
        var = var.numpy(force=True).astype(np.float64)
        return (x - mean.astype(x.dtype)) * (1.0 / np.sqrt(var + self.eps)).astype(x.dtype)

    def extra_repr(self) -> str:
        """Size and statistics summary shown by ``print(module)``."""
        return f"{self.num_features}, eps={self.eps}, count={int(self.count)}"


def _batch_moments(batch: th.Tensor | np.ndarray) -> Moments:
    if isinstance(batch, th.Tensor):
        if batch.shape[0] == 0:  # th.var_mean of no rows warns and gives NaN
            return Moments.empty(tuple(batch.shape[1:]))
        var, mean = th.var_mean(batch.detach().to(th.float64), dim=0, unbiased=False)
        return Moments(batch.shape[0], mean.cpu().numpy(), var.cpu().numpy())
    return Moments.of(batch)


class RunningNorm(BaseNorm):
    """Normalize by the exact mean and variance of every sample seen so far.

    Its statistics are :class:`~ray_rewards.stats.Moments`: ``moments()`` reads them,
    ``set_moments()`` writes them, and ``update_stats`` is ``Moments.merge``
    (computed in float64, stored as float32), so the statistics of many workers merge
    to what one RunningNorm would hold after seeing all of their data, to float32
    round-off.
    """

    def update_stats(self, batch: th.Tensor | np.ndarray) -> None:
        """Merge the moments of ``batch`` (tensor or numpy) into the running moments."""
        bufs = self._buffers
        on_cpu = bufs["running_mean"].is_cpu
        if on_cpu and isinstance(batch, np.ndarray) and batch.ndim == 1 and batch.shape[0]:
            if self.num_features != 1:
                self._check_batch(batch)  # raises
            # Hot path (a reward per step): the column's moments merged as Python floats
            # (float64) and rounded into numpy views of the buffers.
            n, batch_mean, batch_var = column_moments(batch)
            if not (math.isfinite(batch_mean) and math.isfinite(batch_var)):
                raise self._non_finite(batch)
            mean, var = bufs["running_mean"].numpy(), bufs["running_var"].numpy()
            count = bufs["count"].numpy()
            count[()], mean[0], var[0] = chan_merge(
                count.item(), mean.item(), var.item(), n, batch_mean, batch_var
            )
            return
        batch_m = self._finite_moments(batch)
        if batch_m.count:
            self._write(self.moments().merge(batch_m))

    def set_moments(self, moments: Moments) -> None:
        """Replace the statistics with ``moments`` (e.g. merged over workers), rounded
        to the buffers' float32.
        """
        if moments.mean.shape != (self.num_features,):
            raise ValueError(
                f"set_moments: expected mean of shape ({self.num_features},), "
                f"got {moments.mean.shape}"
            )
        self._write(moments)


class EMANorm(BaseNorm):
    """Normalize by exponentially weighted moving statistics (bias-corrected), as
    imitation's EMANorm (its Algorithm 3 of incremental batch EMA/EMV).

    Batch ``k`` (counting from 0) adds ``decay**k`` to ``inv_learning_rate``, which is
    then ``Z_k = sum(decay**i for i <= k)``, and moves the statistics towards the
    batch's with learning rate ``1 / Z_k``: the first batch replaces the initial
    statistics, and early batches are not under-weighted. Buffers beyond BaseNorm's:
    ``inv_learning_rate`` (float32 scalar) and ``num_batches`` (int64 scalar). Not
    mergeable across workers: use RunningNorm where statistics must be aggregated.
    """

    inv_learning_rate: th.Tensor
    num_batches: th.Tensor

    def __init__(self, num_features: int, decay: float = 0.99, eps: float = 1e-5):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be between 0 and 1 (exclusive), got {decay}")
        super().__init__(num_features, eps=eps)
        self.decay = decay
        self.register_buffer("inv_learning_rate", th.zeros((), dtype=self.STATS_DTYPE))
        self.register_buffer("num_batches", th.zeros((), dtype=self.COUNT_DTYPE))

    def reset_running_stats(self) -> None:
        """Forget everything, the batch counter and learning rate included."""
        super().reset_running_stats()
        self.inv_learning_rate.zero_()
        self.num_batches.zero_()

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Restore a pickled layer; one saved before ``inv_learning_rate`` existed gets
        it from ``num_batches`` (the sum of ``decay**i`` over the batches seen).
        """
        super().__setstate__(state)
        if "inv_learning_rate" not in self._buffers and "num_batches" in self._buffers:
            self._buffers["inv_learning_rate"] = self._sum_of_weights(self._buffers["num_batches"])

    def _sum_of_weights(self, num_batches: th.Tensor) -> th.Tensor:
        z = (1.0 - self.decay ** int(num_batches)) / (1.0 - self.decay)
        return th.tensor(z, dtype=type(self).STATS_DTYPE, device=num_batches.device)

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        # A state dict saved before inv_learning_rate existed: derive it (see __setstate__).
        key, batches = f"{prefix}inv_learning_rate", f"{prefix}num_batches"
        if key not in state_dict and batches in state_dict:
            state_dict[key] = self._sum_of_weights(th.as_tensor(state_dict[batches]))
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def update_stats(self, batch: th.Tensor | np.ndarray) -> None:
        """Move the statistics towards those of ``batch`` (computed in float64)."""
        batch_m = self._finite_moments(batch)
        if batch_m.count == 0:
            return
        inv_lr = self.inv_learning_rate.item() + self.decay ** self.num_batches.item()
        lr = 1.0 / inv_lr
        old = self.moments()
        delta = batch_m.mean - old.mean
        self._write(
            Moments(
                old.count + batch_m.count,
                old.mean + lr * delta,
                old.var + lr * (batch_m.var + (1 - lr) * delta**2 - old.var),
            )
        )
        self.inv_learning_rate.fill_(inv_lr)
        self.num_batches.add_(1)


def norm_moments(module: nn.Module) -> dict[str, Moments]:
    """Moments of every normalization layer in ``module``, by submodule name.

    The unit that crosses process boundaries when statistics are merged.
    """
    return {name: m.moments() for name, m in module.named_modules() if isinstance(m, BaseNorm)}


def set_norm_moments(module: nn.Module, moments: dict[str, Moments]) -> None:
    """Write ``moments`` (as from :func:`norm_moments`) into the RunningNorm layers.

    Raises KeyError naming missing/unknown layers and TypeError for layers that are
    not RunningNorm (EMANorm statistics do not merge).
    """
    norms = {name: m for name, m in module.named_modules() if isinstance(m, BaseNorm)}
    if set(norms) != set(moments):
        raise KeyError(
            f"set_norm_moments: expected moments for layers {sorted(norms)}, got {sorted(moments)}"
        )
    for name, norm in norms.items():
        if not isinstance(norm, RunningNorm):
            raise TypeError(
                f"set_norm_moments: layer {name!r} is {type(norm).__name__}; only RunningNorm "
                "statistics can be merged across workers"
            )
        norm.set_moments(moments[name])


def merge_norm_updates(
    base: dict[str, Moments], updated: Iterable[dict[str, Moments]]
) -> dict[str, Moments]:
    """Per layer, :meth:`Moments.merge_updates` of copies that all started from ``base``."""
    updated = list(updated)
    return merge_norm_reports(
        base, [{name: u[name].subtract(b) for name, b in base.items()} for u in updated]
    )


def merge_norm_reports(
    base: dict[str, Moments], reports: Iterable[dict[str, Moments]]
) -> dict[str, Moments]:
    """Per layer, ``base`` merged with what each copy added (:meth:`NormSync.report`)."""
    reports = list(reports)
    return {
        name: Moments.merge_all([base_m, *(r[name] for r in reports)])
        for name, base_m in base.items()
    }


def require_mergeable(module: nn.Module, what: str, error: type[Exception] = TypeError) -> None:
    """Raise ``error`` (naming ``what`` and the layer) unless every normalization layer
    of ``module`` is a RunningNorm: the only statistics that merge across copies.
    """
    for name, layer in module.named_modules():
        if isinstance(layer, BaseNorm) and not isinstance(layer, RunningNorm):
            raise error(
                f"{what}: layer {name!r} is a {type(layer).__name__}, whose statistics cannot "
                "be merged across copies of a net; use RunningNorm"
            )


class NormSync:
    """Keeps one copy of a net's normalization statistics in step with its other copies.

    Each copy (a learner's connector piece, an actor replica, a relabeling worker)
    holds a NormSync. A merge round is two calls: :meth:`report` gives the moments
    this copy added since the last merge; whoever merges combines the base with
    every copy's report (``Moments.merge_all``) and hands the result to each copy's
    :meth:`absorb`, which keeps what arrived between report and absorb. Merging is
    exact to the float32 the buffers store: the merged moments are what one
    RunningNorm would hold after seeing every copy's data. Layers other than
    RunningNorm may be present as long as their statistics never change (TypeError
    when they did).
    """

    def __init__(self, module: nn.Module):
        """Start in step with ``module``'s current statistics."""
        self.module = module
        self.reset()

    def reset(self) -> None:
        """Take the current statistics as merged (after a load or an explicit set)."""
        self._synced = norm_moments(self.module)
        self._reported: dict[str, Moments] | None = None

    @property
    def has_report(self) -> bool:
        """Whether :meth:`report` was called since the last merge."""
        return self._reported is not None

    @property
    def synced(self) -> dict[str, Moments]:
        """The statistics as of the last merge, as the buffers store them."""
        return dict(self._synced)

    def report(self) -> dict[str, Moments]:
        """Per normalization layer, the moments of the data added since the last merge."""
        current = norm_moments(self.module)
        layers = dict(self.module.named_modules())
        delta = {}
        for name, now in current.items():
            base = self._synced[name]
            if now.count == base.count:
                delta[name] = Moments.empty(base.mean.shape)
                continue
            if not isinstance(layers[name], RunningNorm):
                raise TypeError(
                    f"layer {name!r} is {type(layers[name]).__name__} and its statistics "
                    "changed; only RunningNorm statistics merge across copies of a net"
                )
            delta[name] = now.subtract(base)
        self._reported = current
        return delta

    def absorb(self, merged: dict[str, Moments]) -> None:
        """Adopt the statistics merged over all copies, plus what arrived since :meth:`report`.

        Without a report since the last merge, everything this copy added since then
        is kept on top of ``merged``.
        """
        current = norm_moments(self.module)
        since = self._synced if self._reported is None else self._reported
        for name, layer in self.module.named_modules():
            if isinstance(layer, RunningNorm):
                layer.set_moments(merged[name].merge(current[name].subtract(since[name])))
            elif isinstance(layer, BaseNorm) and not current[name].allclose(merged[name]):
                raise TypeError(
                    f"layer {name!r} is {type(layer).__name__}; only RunningNorm statistics "
                    "merge across copies of a net"
                )
        # The base of the next report is the merge as every copy stores it (rounded to
        # float32): the driver that merges next reads that same base from its own copy,
        # so each report carries only its copy's data, not the rounding.
        layers = dict(self.module.named_modules())
        self._synced = {name: layers[name].stored(m) for name, m in merged.items()}
        self._reported = None


def build_mlp(
    in_size: int,
    hid_sizes: Iterable[int],
    out_size: int = 1,
    name: str | None = None,
    activation: type[nn.Module] | None = nn.ReLU,
    dropout_prob: float = 0.0,
    squeeze_output: bool = False,
    flatten_input: bool = False,
    normalize_input_layer: type[nn.Module] | None = None,
) -> nn.Sequential:
    """Build an MLP ``in_size -> hid_sizes... -> out_size`` as an ``nn.Sequential``.

    Args:
        in_size: input features.
        hid_sizes: width of each hidden layer.
        out_size: output features.
        name: prefix for layer names.
        activation: activation class after each hidden layer (None for linear).
        dropout_prob: dropout after each hidden activation when > 0.
        squeeze_output: squeeze ``(B, 1)`` to ``(B,)``; requires ``out_size == 1``.
        flatten_input: flatten inputs to ``(B, -1)`` first.
        normalize_input_layer: a normalization layer class applied to the input,
            built as ``normalize_input_layer(in_size)`` (e.g. RunningNorm, EMANorm).

    Raises:
        ValueError: ``squeeze_output`` with ``out_size != 1``, or a
            ``normalize_input_layer`` that is not an ``nn.Module`` class built from
            the number of features alone (as imitation's ``build_mlp`` raises).
    """
    _check_squeeze(squeeze_output, out_size)
    prefix = f"{name}_" if name else ""
    layers: collections.OrderedDict[str, nn.Module] = collections.OrderedDict()
    if flatten_input:
        layers[f"{prefix}flatten"] = nn.Flatten()
    if normalize_input_layer is not None:
        layers[f"{prefix}normalize_input"] = _input_norm(normalize_input_layer, in_size)
    prev = in_size
    for i, size in enumerate(hid_sizes):
        layers[f"{prefix}dense{i}"] = nn.Linear(prev, size)
        prev = size
        if activation is not None:
            layers[f"{prefix}act{i}"] = activation()
        if dropout_prob > 0.0:
            layers[f"{prefix}dropout{i}"] = nn.Dropout(dropout_prob)
    layers[f"{prefix}dense_final"] = nn.Linear(prev, out_size)
    if squeeze_output:
        layers[f"{prefix}squeeze"] = SqueezeLayer()
    return nn.Sequential(layers)


def _check_squeeze(squeeze_output: bool, out_size: int) -> None:
    if squeeze_output and out_size != 1:
        raise ValueError(
            f"squeeze_output is only applicable when out_size=1, got out_size={out_size}"
        )


def _input_norm(layer_cls: Any, in_size: int) -> nn.Module:
    """``layer_cls(in_size)``; ValueError unless that builds an ``nn.Module``."""
    problem = None
    if not (isinstance(layer_cls, type) and issubclass(layer_cls, nn.Module)):
        problem = "it is not an nn.Module class"
    else:
        try:
            return layer_cls(in_size)
        except TypeError as err:
            problem = f"{layer_cls.__name__}({in_size}) failed: {err}"
    raise ValueError(
        f"normalize_input_layer={layer_cls!r} is not a valid normalization layer type "
        f"accepting only one argument (in_size): {problem}. Pass e.g. RunningNorm or EMANorm"
    )


def build_cnn(
    in_channels: int,
    hid_channels: Iterable[int],
    out_size: int = 1,
    name: str | None = None,
    activation: type[nn.Module] | None = nn.ReLU,
    kernel_size: int = 3,
    stride: int = 1,
    padding: int | str = "same",
    dropout_prob: float = 0.0,
    squeeze_output: bool = False,
) -> nn.Sequential:
    """Build a CNN over NCHW inputs: conv layers, global average pool, linear head.

    Output shape ``(B, out_size)``, or ``(B,)`` with ``squeeze_output``.
    """
    _check_squeeze(squeeze_output, out_size)
    prefix = f"{name}_" if name else ""
    layers: collections.OrderedDict[str, nn.Module] = collections.OrderedDict()
    prev = in_channels
    for i, channels in enumerate(hid_channels):
        layers[f"{prefix}conv{i}"] = nn.Conv2d(prev, channels, kernel_size, stride, padding)
        prev = channels
        if activation is not None:
            layers[f"{prefix}act{i}"] = activation()
        if dropout_prob > 0.0:
            layers[f"{prefix}dropout{i}"] = nn.Dropout(dropout_prob)
    layers[f"{prefix}avg_pool"] = nn.AdaptiveAvgPool2d(1)
    layers[f"{prefix}flatten"] = nn.Flatten()
    layers[f"{prefix}dense_final"] = nn.Linear(prev, out_size)
    if squeeze_output:
        layers[f"{prefix}squeeze"] = SqueezeLayer()
    return nn.Sequential(layers)


__all__ = [
    "BaseNorm",
    "EMANorm",
    "RunningNorm",
    "MODE_FREE_MODULES",
    "SqueezeLayer",
    "build_cnn",
    "NormSync",
    "merge_norm_reports",
    "merge_norm_updates",
    "require_mergeable",
    "norm_moments",
    "set_norm_moments",
    "walk_modules",
    "build_mlp",
    "evaluating",
    "training",
    "training_mode",
]
