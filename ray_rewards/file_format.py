"""The saved-net file format: ``th.save`` of the net, loaded only through an allowlist.

Reason for its length: the allowlist, the loader and the structure checks run on
what it loads are one safety boundary, kept in one file so that none is used alone.

Safety. A pickle can run arbitrary code, so every load goes through torch's
``weights_only=True`` unpickler, which imports nothing but an allowlist. At
``import ray_rewards`` this module adds exactly what a library net needs to that
allowlist (:func:`torch.serialization.add_safe_globals`): the ``nn.Module``
classes of :mod:`ray_rewards.reward_nets` and :mod:`ray_rewards.networks`, the
torch layers ``build_mlp``/``build_cnn`` create, and torch's activation modules
(what users pass as ``activation``). Only classes go on the list, never
functions, and a class is only instantiated with ``__new__`` and given its saved
attributes. So after ``import ray_rewards`` a plain ``th.save(net, path)`` /
``th.load(path)`` round-trips any library net, and a file that asks for anything
else (``os.system``, ``eval``, a class nobody registered) is refused.

Gymnasium spaces are saved as plain data (:mod:`ray_rewards._spaces`).

A user's own RewardNet subclass (or layer) goes on the allowlist explicitly with
:func:`register_safe_class`; :func:`save` refuses early, naming the class, when
one is missing, so a file that cannot be loaded safely is never written.

Nets cross process boundaries as these bytes (:func:`to_bytes` /
:func:`from_bytes`), never as pickled modules.
"""

from __future__ import annotations

import io
import os
import pickle
import re
import zipfile
from typing import Any, TypeVar

import pyarrow.fs as pafs
import torch as th
from torch import nn

from ray_rewards import networks, reward_nets, storage
from ray_rewards.storage import PathLike


class UnsafeRewardFileError(pickle.UnpicklingError):
    """A file asked to import or call something not allowed; nothing from it was run."""


_REFUSED = "the file asks to create"


# --------------------------------------------------------------------------------------
# The allowlist
# --------------------------------------------------------------------------------------

ModuleT = TypeVar("ModuleT", bound=type[nn.Module])

_SAFE_CLASSES: set[type] = set()

# Layers build_mlp/build_cnn create plus the containers nets are made of.
_TORCH_LAYERS: tuple[type[nn.Module], ...] = (
    nn.Sequential,
    nn.ModuleList,
    nn.ModuleDict,
    nn.Linear,
    nn.Conv2d,
    nn.Flatten,
    nn.AdaptiveAvgPool2d,
    nn.Dropout,
    nn.Identity,
)


def register_safe_class(cls: ModuleT) -> ModuleT:
    """Allow saved nets to contain instances of ``cls`` (use as a class decorator).

    ``cls`` must be an ``nn.Module`` subclass defined at module level (importable as
    ``module.qualname``). Loading only creates instances with ``cls.__new__`` and
    restores their attributes with ``__setstate__`` (``nn.Module``'s stores them), so
    register only classes whose ``__new__``/``__setstate__`` do nothing more than
    that. Functions and non-module classes are refused: they are what makes a pickle
    dangerous.

    Example::

        @ray_rewards.serialize.register_safe_class
        class MyRewardNet(RewardNet):
            ...

    Raises:
        TypeError: ``cls`` is not an ``nn.Module`` subclass, or is a local class.
    """
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise TypeError(
            "register_safe_class: expected a torch.nn.Module subclass (e.g. your RewardNet "
            f"subclass), got {cls!r}; functions and other classes are never allowlisted"
        )
    if "<locals>" in cls.__qualname__:
        raise TypeError(
            f"register_safe_class: {cls.__qualname__} is defined inside a function, so "
            "pickle cannot import it; define it at module level"
        )
    if cls not in _SAFE_CLASSES:
        _SAFE_CLASSES.add(cls)
        stand_in = _StandIn(cls)
        th.serialization.add_safe_globals(
            # The file's name for the class resolves to the stand-in. The class itself is
            # listed under a key no pickle can spell (GLOBAL names hold no newline), only
            # so that torch lets ``__setstate__`` restore its instances.
            [(stand_in, stand_in.name), (cls, f"{stand_in.name}\n(restore only)")]
        )
    return cls


class _StandIn:
    """What a saved file's name for an allowlisted class resolves to while loading.

    torch's safe unpickler creates objects in two ways: NEWOBJ (``cls.__new__(cls,
    *args)``, what ``th.save`` writes for a module) and REDUCE (``cls(*args)``, which
    would run the constructor with arguments chosen by the file: a registered class
    whose ``__init__`` writes files, or ``nn.Linear(20000, 20000)`` from a few bytes).
    The stand-in answers NEWOBJ with a bare instance of the class, to be given its
    saved state, and refuses every call.
    """

    def __init__(self, cls: type[nn.Module]):
        self.cls = cls
        self.name = f"{cls.__module__}.{cls.__qualname__}"
        # torch reads ``cls.__new__`` off the object it resolved the name to.
        self.__new__ = self._new

    def _new(self, _stand_in: Any, *args: Any) -> nn.Module:
        if args:
            raise UnsafeRewardFileError(
                f"{_REFUSED} {self.name} with {len(args)} constructor argument(s); saved "
                "nets are rebuilt only from their saved state"
            )
        return self.cls.__new__(self.cls)

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        raise UnsafeRewardFileError(
            f"{_REFUSED} {self.name}(...), i.e. to run its constructor with arguments chosen "
            "by the file; saved nets are rebuilt only from their saved state"
        )

    def __repr__(self) -> str:
        return f"<loading stand-in for {self.name}>"


def safe_classes() -> frozenset[type]:
    """The classes saved nets may contain: the library's and those registered since."""
    return frozenset(_SAFE_CLASSES)


def _module_classes(module: Any) -> list[type[nn.Module]]:
    return [
        c
        for c in vars(module).values()
        if isinstance(c, type) and issubclass(c, nn.Module) and c.__module__ == module.__name__
    ]


def _activation_classes() -> list[type[nn.Module]]:
    act = nn.modules.activation
    classes = (getattr(act, name) for name in act.__all__)
    # MultiheadAttention is a layer with parts of its own, not an activation.
    return [c for c in classes if issubclass(c, nn.Module) and c is not nn.MultiheadAttention]


_ACTIVATIONS = frozenset(_activation_classes())

for _cls in (
    *_module_classes(reward_nets),
    *_module_classes(networks),
    *_TORCH_LAYERS,
    *_ACTIVATIONS,
):
    register_safe_class(_cls)


# --------------------------------------------------------------------------------------
# save / load
# --------------------------------------------------------------------------------------


def _unsafe_contents(net: nn.Module, data: bytes) -> str | None:
    """Why ``data`` (``th.save`` of ``net``) would not load safely, or None if it would."""
    refused = sorted(th.serialization.get_unsafe_globals_in_checkpoint(io.BytesIO(data)))
    if not refused:
        return None
    classes = sorted(
        {f"{t.__module__}.{t.__qualname__}" for t in map(type, net.modules())} & set(refused)
    )
    others = [r for r in refused if r not in classes]
    parts = []
    if classes:
        parts.append(
            f"unregistered class(es) {', '.join(classes)}: register each with "
            "ray_rewards.serialize.register_safe_class (e.g. as a decorator on the class)"
        )
    if others:
        parts.append(
            f"attribute values of type(s) {', '.join(others)}, which are not on the "
            "allowlist: keep such data in tensors, buffers or plain Python values "
            "(gymnasium spaces only as attributes of a RewardNet)"
        )
    return "; ".join(parts)


def to_bytes(net: reward_nets.RewardNet) -> bytes:
    """The bytes of ``net`` in the saved format (what :func:`save` writes).

    Raises TypeError for a non-RewardNet, or one that could not be loaded safely
    (naming the unregistered classes or attribute types).
    """
    if not isinstance(net, reward_nets.RewardNet):
        raise TypeError(f"save: expected a RewardNet, got {type(net).__name__}")
    buf = io.BytesIO()
    th.save(net, buf)
    data = buf.getvalue()
    problem = _unsafe_contents(net, data)
    if problem is not None:
        raise TypeError(f"save: {type(net).__name__} could not be loaded safely: {problem}")
    return data


def save(
    net: reward_nets.RewardNet,
    path: PathLike,
    *,
    filesystem: pafs.FileSystem | None = None,
) -> None:
    """Save ``net`` (wrappers and normalization statistics included), atomically.

    Args:
        net: the reward net.
        path: a local path, or a URI ``pyarrow.fs.FileSystem.from_uri`` understands
            (``file://``, ``s3://``, ``gs://``, ``hdfs://``...); parent directories are
            created.
        filesystem: a pyarrow filesystem ``path`` lives in (e.g. with credentials);
            overrides URI parsing.

    The file is ``th.save(net)``, so a plain ``th.load`` reads it too. The net is
    serialized in memory and checked first: a net holding an unregistered class
    raises TypeError naming it and nothing is written. A local file is written to a
    temporary name in the same directory, fsync'ed and renamed over ``path``, so a
    crash never leaves a partial file under ``path``.
    """
    storage.write_bytes(path, to_bytes(net), filesystem=filesystem)


def _map_location(device: str | th.device | None) -> str | th.device | None:
    if device is not None:
        return th.device(device)
    # None: where it was saved, unless that was a GPU this machine does not have.
    return None if th.cuda.is_available() else "cpu"


def _readable(data: str | bytes) -> str | io.BytesIO:
    """A local path as it is, bytes as a fresh file object (each reader consumes one)."""
    return data if isinstance(data, str) else io.BytesIO(data)


def _check_crcs(data: str | bytes) -> None:
    """Verify the CRC32 of every record of a ``th.save`` zip archive.

    ``th.load`` does not check them, so a file with damaged bytes in a tensor would
    load with wrong weights. Records saved without a CRC (torch's
    ``compute_crc32=False``) are skipped; non-zip (legacy) files are left to torch.
    """
    if not zipfile.is_zipfile(_readable(data)):
        return
    with zipfile.ZipFile(_readable(data)) as archive:
        for info in archive.infolist():
            if info.CRC:
                # Read to the end in chunks: zipfile raises BadZipFile on a mismatch.
                with archive.open(info) as member:
                    while member.read(1 << 20):
                        pass


# torch wraps the unpickler's own error in advice to load with weights_only=False,
# advice that would run whatever the file holds: only the unpickler's words are kept.
_TORCH_ADVICE = ("Weights only load failed", "Please file an issue", "Check the documentation")
_GLOBAL_NAME = re.compile(r"GLOBAL ([\w.]+)")


def _unpickler_message(err: Exception) -> str:
    text = str(err).split("WeightsUnpickler error:")[-1]
    kept = [p.strip() for p in text.split("\n\n") if p.strip()]
    kept = [p for p in kept if not p.startswith(_TORCH_ADVICE)]
    return " ".join(kept) or type(err).__name__


def _corrupt(source: str, err: Exception) -> ValueError:
    message = _unpickler_message(err) if isinstance(err, pickle.UnpicklingError) else str(err)
    if not message and isinstance(err, EOFError):
        message = "the file ends early"
    return ValueError(
        f"{source}: not a readable torch.save file (truncated or corrupt?): "
        f"{type(err).__name__}: {message}"
    )


def _refusal(source: str, data: str | bytes, err: pickle.UnpicklingError) -> Exception:
    """The error to raise when torch's safe unpickler rejected ``data``.

    Unsafe content (a global outside the allowlist, a constructor call) is always
    reported as unsafe, in a zip or a legacy-format file alike; anything else is a
    corrupt file. Neither message passes on torch's advice to load unsafely.
    """
    message = _unpickler_message(err)
    if _REFUSED in message:
        return UnsafeRewardFileError(
            f"refused to load {source}: {message}. Nothing from this file was run."
        )
    refused = set(_GLOBAL_NAME.findall(message))
    if zipfile.is_zipfile(_readable(data)):
        try:
            refused.update(th.serialization.get_unsafe_globals_in_checkpoint(_readable(data)))
        except Exception:  # noqa: BLE001 - an unreadable archive: corrupt unless named above
            pass
    if not refused:
        return _corrupt(source, err)
    names = sorted(refused)
    return UnsafeRewardFileError(
        f"refused to load {source}: it asks to import {', '.join(names)}, which "
        f"{'is' if len(names) == 1 else 'are'} not on ray_rewards' allowlist. A pickle "
        "can run arbitrary code, so loading a reward net never imports anything outside "
        "the allowlist and nothing from this file was run. If the file holds your own "
        "RewardNet subclass or layer, import it and register it with "
        "ray_rewards.serialize.register_safe_class before loading; never allowlist "
        "functions."
    )


def load(
    path: PathLike,
    device: str | th.device | None = None,
    *,
    filesystem: pafs.FileSystem | None = None,
) -> reward_nets.RewardNet:
    """Load a reward net saved by :func:`save` or ``th.save``, safely.

    Args:
        path: local path or URI (see :func:`save`).
        device: where to put the net; None keeps the device it was saved from,
            falling back to CPU on a machine without CUDA.
        filesystem: optional pyarrow filesystem ``path`` lives in.

    Raises:
        FileNotFoundError: nothing at ``path``.
        UnsafeRewardFileError: the file asks for a global outside the allowlist
            (a ``pickle.UnpicklingError``); nothing from it was run.
        ValueError: a truncated or corrupt file, or one that is not from ``th.save``.
        TypeError: a readable file that does not hold a RewardNet.
    """
    fs, local = storage.resolve(path, filesystem)
    location = _map_location(device)
    if fs is None and os.path.isfile(local) and zipfile.is_zipfile(local) and _on_cpu(location):
        # Memory-mapped: no second copy of the file in memory while it loads.
        return _load(local, local, location, source=str(path), mmap=True)
    data = storage.read_bytes(path, filesystem=filesystem, what="saved reward net")
    return from_bytes(data, device, source=str(path))


def from_bytes(
    data: bytes, device: str | th.device | None = None, *, source: str = "<bytes>"
) -> reward_nets.RewardNet:
    """The net in ``data`` (as :func:`to_bytes` makes), loaded safely like :func:`load`.

    ``source`` names the data in error messages.
    """
    return _load(io.BytesIO(data), data, _map_location(device), source=source, mmap=False)


def _on_cpu(location: str | th.device | None) -> bool:
    return location is not None and th.device(location).type == "cpu"


def _from_imitation(
    data: str | bytes, location: str | th.device | None, source: str
) -> reward_nets.RewardNet | None:
    """The ray_rewards equivalent of a file imitation's ``th.save(net)`` wrote (which
    torch's safe loader refuses: it pickles whole modules), or None for any other file.
    Converted without running code from it (:mod:`ray_rewards.imitation_files`).
    """
    from ray_rewards import imitation_files  # never imports this module: no cycle

    raw = data if isinstance(data, bytes) else storage.read_bytes(data)
    if not imitation_files.is_imitation_file(raw):
        return None
    try:
        return imitation_files.load_imitation_bytes(raw, str(location or "cpu"), source=source)
    except imitation_files.UnsafeImitationFileError as unsafe:
        raise UnsafeRewardFileError(str(unsafe)) from None


def _load(
    file: str | io.BytesIO,
    data: str | bytes,
    location: str | th.device | None,
    *,
    source: str,
    mmap: bool,
) -> reward_nets.RewardNet:
    """``th.load`` through the allowlist, with CRC and structure checks; ``data`` (a
    path or the bytes) is what the error messages are worked out from.
    """
    try:
        _check_crcs(data)
        obj = th.load(file, map_location=location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        obj = _from_imitation(data, location, source)
        if obj is None:
            raise _refusal(source, data, err) from err
    except Exception as err:  # noqa: BLE001 - any other unpickling failure: a bad file
        raise _corrupt(source, err) from err
    if not isinstance(obj, reward_nets.RewardNet):
        hint = (
            " (a state_dict? load it into a net with load_state_dict)"
            if isinstance(obj, dict)
            else ""
        )
        raise TypeError(f"{source}: expected a saved RewardNet, found {type(obj).__name__}{hint}")
    _check_structure(obj, source)
    return obj


_Spec = tuple[tuple[int, ...], th.dtype | None, bool]
"""What a tensor of a layer must be: shape, dtype (None: any), required."""


def _expected_tensors(module: nn.Module) -> dict[str, _Spec]:
    """The parameters and buffers a layer's own attributes say it has.

    Normalization statistics must be present with the buffers' dtypes (float64
    statistics of older files were cast to float32 as they loaded, by
    ``BaseNorm.__setstate__``): a file cannot make ``count`` a float or the mean a
    complex number.
    """
    if isinstance(module, nn.Linear):
        return {
            "weight": ((module.out_features, module.in_features), None, True),
            "bias": ((module.out_features,), None, False),
        }
    if isinstance(module, nn.Conv2d):
        kernel = (module.out_channels, module.in_channels // module.groups, *module.kernel_size)
        return {"weight": (kernel, None, True), "bias": ((module.out_channels,), None, False)}
    if not isinstance(module, networks.BaseNorm):
        return {}
    # dtypes from the class, never from the instance's attributes (the file sets those).
    n, stats, count = module.num_features, type(module).STATS_DTYPE, type(module).COUNT_DTYPE
    specs: dict[str, _Spec] = {
        "running_mean": ((n,), stats, True),
        "running_var": ((n,), stats, True),
        "count": ((), count, True),
    }
    if isinstance(module, networks.EMANorm):
        specs.update(inv_learning_rate=((), stats, True), num_batches=((), count, True))
    return specs


# The child modules each library class makes, by exact class. A file that gives one of
# them others (a hidden layer never run, yet shipped and re-saved with the net) or
# leaves one out is refused. Containers hold what they were given; a user's registered
# class is the user's to check.
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
_CHILDREN: dict[type, frozenset[str]] = {
    cls: frozenset()
    for cls in (*_TORCH_LAYERS, *_ACTIVATIONS, *_module_classes(networks))
    if cls not in _CONTAINERS
}
_CHILDREN.update(
    {
        reward_nets.BasicRewardNet: frozenset({"mlp"}),
        reward_nets.CNNRewardNet: frozenset({"cnn"}),
        reward_nets.BasicPotentialMLP: frozenset({"_potential_net"}),
        reward_nets.BasicPotentialCNN: frozenset({"_potential_net"}),
        reward_nets.RewardEnsemble: frozenset({"members"}),
        reward_nets.NormalizedRewardNet: frozenset({"_base", "normalize_output_layer"}),
        reward_nets.ShapedRewardNet: frozenset({"_base", "potential"}),
        reward_nets.BasicShapedRewardNet: frozenset({"_base", "potential"}),
        **{
            cls: frozenset({"_base"})
            for cls in (
                reward_nets.ForwardWrapper,
                reward_nets.PredictProcessedWrapper,
                reward_nets.AddSTDRewardWrapper,
                reward_nets.RewardNetFromDiscriminatorLogit,
            )
        },
    }
)


def _layer_widths(seq: nn.Sequential, width: int | None) -> str | None:
    """Why the dense layers of ``seq`` do not chain (each takes what the one before
    gives; ``width`` is what ``seq`` is fed, None when unknown), or None when they do.
    """
    for name, layer in seq.named_children():
        if isinstance(layer, nn.Linear):
            if width is not None and layer.in_features != width:
                return f"layer {name!r} takes {layer.in_features} features but is given {width}"
            width = layer.out_features
        elif isinstance(layer, networks.BaseNorm):
            if width is not None and layer.num_features != width:
                return f"layer {name!r} normalizes {layer.num_features} features of {width}"
        elif type(layer) not in _ACTIVATIONS and not isinstance(
            layer, (networks.SqueezeLayer, nn.Dropout, nn.Identity)
        ):
            width = None  # convolutions, pooling, flattening: not followed here
    return None


def _check_structure(net: nn.Module, source: str) -> None:
    """ValueError unless every library module holds the children its class makes, dense
    layers chain, and every layer's tensors have the shapes (and normalization
    statistics the dtypes) its attributes record.

    A file can pair a small layer description with other tensors, or carry layers the
    net never runs; such a file is refused on load, before the net is used or re-saved.
    """
    for name, module in net.named_modules():
        where = f"{source}: {name or '<root>'!r} ({type(module).__name__})"
        expected = _CHILDREN.get(type(module))
        if expected is not None and set(module._modules) != expected:
            raise ValueError(
                f"{where} holds the modules {sorted(module._modules)} where its class makes "
                f"{sorted(expected)}; the file does not match its recorded architecture"
            )
        if isinstance(module, nn.Sequential):
            width = None
            parent = net.get_submodule(name.rpartition(".")[0]) if name else None
            if isinstance(parent, reward_nets.BasicRewardNet) and parent.mlp is module:
                width = parent.input_size
            problem = _layer_widths(module, width)
            if problem:
                raise ValueError(f"{where}: {problem}; the file does not match its architecture")
        tensors = {**module._parameters, **module._buffers}
        for attr, (shape, dtype, required) in _expected_tensors(module).items():
            tensor = tensors.get(attr)
            if tensor is None:
                if required:
                    raise ValueError(
                        f"{where} has no {attr}; the file does not match its recorded architecture"
                    )
                continue
            if tuple(tensor.shape) != shape:
                raise ValueError(
                    f"{where} records {attr} of shape {shape} but holds "
                    f"{tuple(tensor.shape)}; the file does not match its recorded architecture"
                )
            if dtype is not None and tensor.dtype != dtype:
                raise ValueError(
                    f"{where} holds {attr} of dtype {tensor.dtype} where the layer keeps "
                    f"{dtype}; the file does not match its recorded architecture"
                )
