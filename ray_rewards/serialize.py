"""Saving and loading reward nets safely, and turning saved nets into reward functions.

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

Gymnasium spaces hold numpy arrays and random generators, which we do not
allowlist: :class:`~ray_rewards.reward_nets.RewardNet` pickles its spaces as
plain data (type name, tensors, ints; see :func:`space_to_data`) and rebuilds them
on load. A space's sampling RNG state is not saved (a reward net never samples).

A user's own RewardNet subclass (or layer) goes on the allowlist explicitly with
:func:`register_safe_class`; :func:`save` refuses early, naming the class, when
one is missing, so a file that cannot be loaded safely is never written.

Reward functions. :func:`load_reward` loads a saved net and returns a
``RewardFn`` ``(obs, acts, next_obs, dones) -> np.ndarray[B]`` as
``imitation.rewards.serialize.load_reward`` does; :data:`reward_registry` holds
the reward types and takes new ones.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import pickle
import uuid
import zipfile
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import pyarrow.fs as pafs
import torch as th
from gymnasium import spaces
from torch import nn

from ray_rewards import networks, reward_nets
from ray_rewards.reward_wrapper import RewardFn
from ray_rewards.stats import Moments

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
        th.serialization.add_safe_globals([cls])
    return cls


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


for _cls in (
    *_module_classes(reward_nets),
    *_module_classes(networks),
    *_TORCH_LAYERS,
    *_activation_classes(),
):
    register_safe_class(_cls)


# --------------------------------------------------------------------------------------
# Gymnasium spaces as plain data
# --------------------------------------------------------------------------------------

_SPACES_KEY = "_ray_rewards_spaces"


def _dtype_name(dtype: Any) -> str:
    return np.dtype(dtype).name


def _numeric_dtype(name: Any, kinds: str, what: str) -> np.dtype:
    if not isinstance(name, str):
        raise TypeError(f"{what}: expected a dtype name, got {type(name).__name__}")
    dtype = np.dtype(name)
    if dtype.kind not in kinds:
        raise ValueError(f"{what}: expected a numeric dtype, got {name!r}")
    return dtype


def _array(x: Any, what: str) -> np.ndarray:
    if isinstance(x, th.Tensor):
        return x.numpy(force=True)
    raise TypeError(f"{what}: expected a tensor, got {type(x).__name__}")


def _int(x: Any, what: str) -> int:
    if isinstance(x, bool) or not isinstance(x, int):
        raise TypeError(f"{what}: expected an int, got {type(x).__name__}")
    return x


def space_to_data(space: spaces.Space) -> dict[str, Any]:
    """A gymnasium space as plain data (str/int/tuple/dict and tensors) that loads safely.

    Supports Box, Discrete, MultiDiscrete, MultiBinary, and Tuple/Dict of those.
    Raises TypeError for other spaces.
    """
    if isinstance(space, spaces.Box):
        return {
            "type": "Box",
            "low": th.from_numpy(np.ascontiguousarray(space.low)),
            "high": th.from_numpy(np.ascontiguousarray(space.high)),
            "dtype": _dtype_name(space.dtype),
        }
    if isinstance(space, spaces.Discrete):
        return {
            "type": "Discrete",
            "n": int(space.n),
            "start": int(space.start),
            "dtype": _dtype_name(space.dtype),
        }
    if isinstance(space, spaces.MultiDiscrete):
        return {
            "type": "MultiDiscrete",
            "nvec": th.from_numpy(np.ascontiguousarray(space.nvec)),
            "start": th.from_numpy(np.ascontiguousarray(space.start)),
            "dtype": _dtype_name(space.dtype),
        }
    if isinstance(space, spaces.MultiBinary):
        n = space.n
        return {"type": "MultiBinary", "n": int(n) if np.ndim(n) == 0 else tuple(map(int, n))}
    if isinstance(space, spaces.Tuple):
        return {"type": "Tuple", "spaces": tuple(space_to_data(s) for s in space.spaces)}
    if isinstance(space, spaces.Dict):
        return {"type": "Dict", "spaces": {k: space_to_data(s) for k, s in space.spaces.items()}}
    raise TypeError(
        f"cannot save {type(space).__name__} spaces; supported: Box, Discrete, MultiDiscrete, "
        "MultiBinary, Tuple, Dict"
    )


def space_from_data(data: Any) -> spaces.Space:
    """Rebuild a space from :func:`space_to_data`'s output, validating every field.

    The data comes from a file, so nothing in it is called: the space type is looked
    up in a fixed table and every field is type-checked. Raises TypeError/ValueError
    on malformed data.
    """
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        raise TypeError(f"saved space: expected a dict with a 'type' name, got {data!r:.200}")
    kind = data["type"]
    what = f"saved {kind} space"
    if kind == "Box":
        dtype = _numeric_dtype(data["dtype"], "iuf", what)
        return spaces.Box(_array(data["low"], what), _array(data["high"], what), dtype=dtype)
    if kind == "Discrete":
        dtype = _numeric_dtype(data["dtype"], "iu", what)
        return spaces.Discrete(_int(data["n"], what), start=_int(data["start"], what), dtype=dtype)
    if kind == "MultiDiscrete":
        dtype = _numeric_dtype(data["dtype"], "iu", what)
        return spaces.MultiDiscrete(
            _array(data["nvec"], what), dtype=dtype, start=_array(data["start"], what)
        )
    if kind == "MultiBinary":
        n = data["n"]
        n = tuple(_int(i, what) for i in n) if isinstance(n, tuple) else _int(n, what)
        return spaces.MultiBinary(n)
    if kind == "Tuple" and isinstance(data.get("spaces"), tuple):
        return spaces.Tuple([space_from_data(s) for s in data["spaces"]])
    if kind == "Dict" and isinstance(data.get("spaces"), dict):
        return spaces.Dict({str(k): space_from_data(s) for k, s in data["spaces"].items()})
    raise ValueError(f"saved space: unknown or malformed space type {kind!r}")


def encode_spaces(state: dict[str, Any]) -> dict[str, Any]:
    """Pickle state of a module with each gymnasium-space attribute as plain data.

    Used by ``RewardNet.__getstate__``; :func:`decode_spaces` inverts it.
    """
    encoded = {k: space_to_data(v) for k, v in state.items() if isinstance(v, spaces.Space)}
    if not encoded:
        return state
    out = {k: v for k, v in state.items() if k not in encoded}
    out[_SPACES_KEY] = encoded
    return out


def decode_spaces(state: dict[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`encode_spaces` (used by ``RewardNet.__setstate__``)."""
    if _SPACES_KEY not in state:
        return state
    out = dict(state)
    encoded = out.pop(_SPACES_KEY)
    if not isinstance(encoded, dict) or not all(isinstance(k, str) for k in encoded):
        raise TypeError(f"saved spaces: expected a dict of attribute names, got {encoded!r:.200}")
    out.update({k: space_from_data(v) for k, v in encoded.items()})
    return out


# --------------------------------------------------------------------------------------
# save / load
# --------------------------------------------------------------------------------------


class UnsafeRewardFileError(pickle.UnpicklingError):
    """A file asked to import something outside the allowlist; nothing was run."""


PathLike = str | os.PathLike


def _resolve(
    path: PathLike, filesystem: pafs.FileSystem | None
) -> tuple[pafs.FileSystem | None, str]:
    """``(None, local path)`` for local files, else ``(filesystem, path within it)``."""
    path = os.fspath(path)
    if filesystem is None:
        if "://" not in path:
            return None, path
        filesystem, path = pafs.FileSystem.from_uri(path)
    if isinstance(filesystem, pafs.LocalFileSystem):
        return None, path
    return filesystem, path


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


def _to_bytes(net: reward_nets.RewardNet) -> bytes:
    if not isinstance(net, reward_nets.RewardNet):
        raise TypeError(f"save: expected a RewardNet, got {type(net).__name__}")
    buf = io.BytesIO()
    th.save(net, buf)
    data = buf.getvalue()
    problem = _unsafe_contents(net, data)
    if problem is not None:
        raise TypeError(f"save: {type(net).__name__} could not be loaded safely: {problem}")
    return data


def _write_local(path: str, data: bytes) -> None:
    path = os.path.abspath(path)
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
    # os.open with 0o666 lets the umask decide the final file's mode, as open() would.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    # Make the rename itself durable. Best effort: some filesystems cannot fsync a
    # directory, and the file is complete under its name either way.
    with contextlib.suppress(OSError):
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _write_remote(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    # Object stores publish an object only when its upload completes; writing a temp
    # name first and moving it keeps a failed upload from touching the final name.
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    if parent:
        fs.create_dir(parent, recursive=True)
    tmp = f"{path}.{uuid.uuid4().hex}.tmp"
    try:
        with fs.open_output_stream(tmp) as out:
            out.write(data)
        try:
            fs.move(tmp, path)
        except NotImplementedError:
            fs.copy_file(tmp, path)
            fs.delete_file(tmp)
    except BaseException:
        if fs.get_file_info(tmp).type != pafs.FileType.NotFound:
            fs.delete_file(tmp)
        raise


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
    write_bytes(path, _to_bytes(net), filesystem=filesystem)


def write_bytes(path: PathLike, data: bytes, *, filesystem: pafs.FileSystem | None = None) -> None:
    """Write ``data`` to a local path or URI as :func:`save` writes a net: atomically.

    A local file goes to a temporary name in the same directory, is fsync'ed and
    renamed; a remote one is uploaded under a temporary name and moved. Parent
    directories are created. Used for job results that sit beside saved nets.
    """
    fs, fs_path = _resolve(path, filesystem)
    if fs is None:
        _write_local(fs_path, data)
    else:
        _write_remote(fs, fs_path, data)


def _read(path: PathLike, filesystem: pafs.FileSystem | None) -> bytes:
    fs, fs_path = _resolve(path, filesystem)
    if fs is None:
        if os.path.isdir(fs_path):
            raise IsADirectoryError(f"no saved reward net at {fs_path}: it is a directory")
        try:
            with open(fs_path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise FileNotFoundError(f"no saved reward net at {fs_path}: no such file") from None
    if fs.get_file_info(fs_path).type != pafs.FileType.File:
        raise FileNotFoundError(f"no saved reward net at {os.fspath(path)}: no such file")
    with fs.open_input_stream(fs_path) as f:
        return f.read()


def _map_location(device: str | th.device | None) -> str | th.device | None:
    if device is not None:
        return th.device(device)
    # None: where it was saved, unless that was a GPU this machine does not have.
    return None if th.cuda.is_available() else "cpu"


def _check_crcs(data: bytes) -> None:
    """Verify the CRC32 of every record of a ``th.save`` zip archive.

    ``th.load`` does not check them, so a file with damaged bytes in a tensor would
    load with wrong weights. Records saved without a CRC (torch's
    ``compute_crc32=False``) are skipped; non-zip (legacy) files are left to torch.
    """
    buf = io.BytesIO(data)
    if not zipfile.is_zipfile(buf):
        return
    with zipfile.ZipFile(buf) as archive:
        for info in archive.infolist():
            if info.CRC:
                archive.read(info)  # raises BadZipFile on a CRC mismatch


def _corrupt(source: str, err: Exception) -> ValueError:
    return ValueError(
        f"{source}: not a readable torch.save file (truncated or corrupt?): "
        f"{type(err).__name__}: {err}"
    )


def _refusal(source: str, data: bytes, err: Exception) -> Exception:
    """The error to raise when torch's safe unpickler rejected ``data``."""
    try:
        refused = sorted(th.serialization.get_unsafe_globals_in_checkpoint(io.BytesIO(data)))
    except Exception:  # noqa: BLE001 - not even a readable checkpoint: corrupt
        refused = []
    if not refused:
        return _corrupt(source, err)
    return UnsafeRewardFileError(
        f"refused to load {source}: it asks to import {', '.join(refused)}, which "
        f"{'is' if len(refused) == 1 else 'are'} not on ray_rewards' allowlist. A pickle "
        "can run arbitrary code, so loading a reward net never imports anything outside "
        "the allowlist (torch weights_only=True) and nothing from this file was run. If "
        "the file holds your own RewardNet subclass or layer, import it and register it "
        "with ray_rewards.serialize.register_safe_class before loading; never allowlist "
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
    source = os.fspath(path)
    data = _read(path, filesystem)
    try:
        _check_crcs(data)
        obj = th.load(io.BytesIO(data), map_location=_map_location(device), weights_only=True)
    except pickle.UnpicklingError as err:
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
    return obj


# --------------------------------------------------------------------------------------
# Describing a net
# --------------------------------------------------------------------------------------


def wrapper_chain(net: reward_nets.RewardNet) -> list[reward_nets.RewardNet]:
    """``net``, its base, its base's base, ... down to the innermost net."""
    chain = [net]
    while isinstance(chain[-1], reward_nets.RewardNetWrapper):
        chain.append(chain[-1].base)
    return chain


def format_chain(net: reward_nets.RewardNet) -> str:
    """The wrapper chain as nested calls, e.g. ``NormalizedRewardNet(BasicRewardNet)``.

    An ensemble shows its members: ``RewardEnsemble[BasicRewardNet, BasicRewardNet]``.
    """
    names = []
    for n in wrapper_chain(net):
        name = type(n).__name__
        if isinstance(n, reward_nets.RewardEnsemble):
            name += "[" + ", ".join(format_chain(m) for m in n.members) + "]"
        names.append(name)
    return "(".join(names) + ")" * (len(names) - 1)


@dataclasses.dataclass(frozen=True)
class NormStats:
    """Statistics of one normalization layer: its name in the net, class and moments."""

    layer: str
    kind: str
    moments: Moments


@dataclasses.dataclass(frozen=True)
class NetDescription:
    """What :func:`describe` reports about a net (printed by ``ray-rewards inspect``)."""

    chain: str
    observation_space: str
    action_space: str
    num_parameters: int
    num_trainable: int
    device: str
    dtype: str
    norm_stats: tuple[NormStats, ...]

    def format(self) -> str:
        """Human-readable multi-line report."""

        def arr(x: np.ndarray) -> str:
            return np.array2string(x, precision=4, threshold=8, edgeitems=3)

        lines = [
            f"wrapper chain:     {self.chain}",
            f"observation space: {self.observation_space}",
            f"action space:      {self.action_space}",
            f"parameters:        {self.num_parameters:,} ({self.num_trainable:,} trainable), "
            f"{self.dtype} on {self.device}",
        ]
        if not self.norm_stats:
            lines.append("normalization:     none")
        else:
            lines.append("normalization statistics:")
            for s in self.norm_stats:
                m = s.moments
                lines.append(
                    f"  {s.layer} ({s.kind}): count={m.count} mean={arr(m.mean)} std={arr(m.std)}"
                )
        return "\n".join(lines)


def describe(net: reward_nets.RewardNet) -> NetDescription:
    """Wrapper chain, spaces, parameter counts and per-layer normalization statistics."""
    params = list(net.parameters())
    moments = networks.norm_moments(net)
    return NetDescription(
        chain=format_chain(net),
        observation_space=str(net.observation_space),
        action_space=str(net.action_space),
        num_parameters=sum(p.numel() for p in params),
        num_trainable=sum(p.numel() for p in params if p.requires_grad),
        device=str(net.device),
        dtype=str(net.dtype),
        norm_stats=tuple(
            NormStats(name, type(net.get_submodule(name)).__name__, m)
            for name, m in moments.items()
        ),
    )


# --------------------------------------------------------------------------------------
# load_reward
# --------------------------------------------------------------------------------------

RewardFnLoader = Callable[..., RewardFn]
"""``loader(reward_path, venv, **kwargs) -> RewardFn``, as kept in :data:`reward_registry`."""


class RewardRegistry:
    """Reward types by name: what :func:`load_reward` can load.

    ``reward_registry.register("my_type", value=loader)`` (or as a decorator,
    ``@reward_registry.register("my_type")``) adds a type; ``loader(reward_path,
    venv, **kwargs)`` returns a RewardFn.
    """

    def __init__(self) -> None:
        self._loaders: dict[str, RewardFnLoader] = {}

    def register(
        self, key: str, value: RewardFnLoader | None = None, *, overwrite: bool = False
    ) -> Any:
        """Add ``value`` under ``key``; without ``value``, return a decorator that does.

        Raises KeyError when ``key`` is taken, unless ``overwrite``.
        """
        if value is None:
            return lambda fn: self.register(key, fn, overwrite=overwrite)
        if not callable(value):
            raise TypeError(f"register({key!r}): expected a callable loader, got {value!r}")
        if key in self._loaders and not overwrite:
            raise KeyError(f"reward type {key!r} is already registered (pass overwrite=True)")
        self._loaders[key] = value
        return value

    def get(self, key: str) -> RewardFnLoader:
        """The loader for ``key``; KeyError naming the valid types otherwise."""
        try:
            return self._loaders[key]
        except KeyError:
            raise KeyError(
                f"unknown reward type {key!r}; valid types: {', '.join(self.keys())}"
            ) from None

    def keys(self) -> list[str]:
        """Registered reward types, in registration order."""
        return list(self._loaders)

    def __contains__(self, key: object) -> bool:
        return key in self._loaders


reward_registry = RewardRegistry()


class NetRewardFn:
    """A RewardFn calling one prediction method of a reward net with fixed kwargs.

    Picklable with plain pickle (the net pickles safely; no closures), so it can be
    shipped to Ray workers. Checks that the net returns one reward per transition.
    """

    def __init__(self, net: reward_nets.RewardNet, method: str, kwargs: dict[str, Any]):
        self.net = net
        self.method = method
        self.kwargs = dict(kwargs)

    def __call__(
        self,
        obs: np.ndarray,
        acts: np.ndarray,
        next_obs: np.ndarray | None,
        dones: np.ndarray | None,
    ) -> np.ndarray:
        """Rewards of shape ``(B,)`` for a batch of ``B`` transitions."""
        rew = getattr(self.net, self.method)(obs, acts, next_obs, dones, **self.kwargs)
        if rew.shape != (len(obs),):
            raise ValueError(
                f"{type(self.net).__name__}.{self.method}: expected rewards of shape "
                f"({len(obs)},), got {rew.shape}"
            )
        return rew

    def __repr__(self) -> str:
        kw = "".join(f", {k}={v!r}" for k, v in self.kwargs.items())
        return f"NetRewardFn({format_chain(self.net)}.{self.method}{kw})"


def _env_spaces(venv: Any) -> tuple[spaces.Space, spaces.Space]:
    """A vector env's single-env spaces (a plain env's own spaces)."""
    if hasattr(venv, "single_observation_space"):
        return venv.single_observation_space, venv.single_action_space
    return venv.observation_space, venv.action_space


def _load_for_env(path: PathLike, venv: Any) -> reward_nets.RewardNet:
    """Load a net and check its spaces are ``venv``'s (None skips the check)."""
    net = load(path)
    if venv is not None:
        for what, net_space, env_space in zip(
            ("observation", "action"),
            (net.observation_space, net.action_space),
            _env_spaces(venv),
        ):
            if net_space != env_space:
                raise ValueError(
                    f"{os.fspath(path)}: the net's {what} space {net_space} does not match "
                    f"the environment's {env_space}"
                )
    return net


def _expect(net: reward_nets.RewardNet, ok: bool, reward_type: str, expected: str) -> None:
    if not ok:
        raise TypeError(
            f"{reward_type}: expected a net of the form {expected}, found {format_chain(net)}"
        )


def _frozen_stats(net: reward_nets.RewardNet, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` with ``update_stats=False`` unless given, where ``net`` normalizes.

    A loaded reward is for evaluation or RL on a fixed reward: statistics fitted in
    training stay frozen unless the caller says ``update_stats=True``. Nets without a
    NormalizedRewardNet anywhere (ensemble members included) do not get the
    keyword, so custom nets need not accept it.
    """
    if any(isinstance(m, reward_nets.NormalizedRewardNet) for m in net.modules()):
        return {"update_stats": False, **kwargs}
    return kwargs


def _no_kwargs(reward_type: str, kwargs: dict[str, Any]) -> None:
    if kwargs:
        raise TypeError(
            f"{reward_type} takes no keyword arguments (it calls predict), got {sorted(kwargs)}"
        )


def _load_normalized(path: PathLike, venv: Any, **kwargs: Any) -> RewardFn:
    net = _load_for_env(path, venv)
    _expect(
        net,
        isinstance(net, reward_nets.NormalizedRewardNet),
        "RewardNet_normalized",
        "NormalizedRewardNet(...)",
    )
    return NetRewardFn(net, "predict_processed", _frozen_stats(net, kwargs))


def _load_unnormalized(path: PathLike, venv: Any, **kwargs: Any) -> RewardFn:
    net = _load_for_env(path, venv)
    if isinstance(net, reward_nets.NormalizedRewardNet):
        net = net.base
    return NetRewardFn(net, "predict_processed", _frozen_stats(net, kwargs))


def _load_shaped(path: PathLike, venv: Any, **kwargs: Any) -> RewardFn:
    _no_kwargs("RewardNet_shaped", kwargs)
    net = _load_for_env(path, venv)
    _expect(
        net,
        any(isinstance(n, reward_nets.ShapedRewardNet) for n in wrapper_chain(net)),
        "RewardNet_shaped",
        "ShapedRewardNet(...) or a wrapper of one (e.g. NormalizedRewardNet(ShapedRewardNet(...)))",
    )
    return NetRewardFn(net, "predict", {})


def _load_unshaped(path: PathLike, venv: Any, **kwargs: Any) -> RewardFn:
    _no_kwargs("RewardNet_unshaped", kwargs)
    net = _load_for_env(path, venv)
    if isinstance(net, reward_nets.NormalizedRewardNet):
        net = net.base
    if isinstance(net, reward_nets.ShapedRewardNet):
        net = net.base
    return NetRewardFn(net, "predict", {})


def _load_std_added(path: PathLike, venv: Any, **kwargs: Any) -> RewardFn:
    net = _load_for_env(path, venv)
    inner = net.base if isinstance(net, reward_nets.NormalizedRewardNet) else net
    _expect(
        net,
        isinstance(inner, reward_nets.AddSTDRewardWrapper),
        "RewardNet_std_added",
        "AddSTDRewardWrapper(...) or NormalizedRewardNet(AddSTDRewardWrapper(...))",
    )
    return NetRewardFn(inner, "predict_processed", _frozen_stats(inner, kwargs))


class _ZeroReward:
    """Zero reward for every transition (a baseline; picklable)."""

    def __call__(
        self, obs: np.ndarray, acts: Any = None, next_obs: Any = None, dones: Any = None
    ) -> np.ndarray:
        # float32 like the nets' rewards at torch's default dtype.
        return np.zeros(len(obs), dtype=np.float32)


def _load_zero(path: PathLike | None, venv: Any, **kwargs: Any) -> RewardFn:
    _no_kwargs("zero", kwargs)
    return _ZeroReward()


reward_registry.register("RewardNet_normalized", _load_normalized)
reward_registry.register("RewardNet_unnormalized", _load_unnormalized)
reward_registry.register("RewardNet_shaped", _load_shaped)
reward_registry.register("RewardNet_unshaped", _load_unshaped)
reward_registry.register("RewardNet_std_added", _load_std_added)
reward_registry.register("zero", _load_zero)


def load_reward(
    reward_type: str, reward_path: PathLike | None, venv: Any, **kwargs: Any
) -> RewardFn:
    """Load a saved reward as a RewardFn ``(obs, acts, next_obs, dones) -> (B,)``.

    Built-in types (``reward_registry.keys()`` lists all):

    - ``RewardNet_normalized``: the net must be ``NormalizedRewardNet(...)``; calls
      ``predict_processed`` with ``update_stats=False`` unless ``kwargs`` says
      ``update_stats=True``; other kwargs pass down.
    - ``RewardNet_unnormalized``: strips an outer NormalizedRewardNet if present;
      the base's ``predict_processed(**kwargs)``.
    - ``RewardNet_shaped``: the net as is (``predict``); its chain must contain a
      ShapedRewardNet.
    - ``RewardNet_unshaped``: strips a NormalizedRewardNet, then a ShapedRewardNet
      (each if present); the rest's ``predict``.
    - ``RewardNet_std_added``: ``AddSTDRewardWrapper(...)``, optionally under a
      NormalizedRewardNet (stripped); ``predict_processed`` with ``alpha=`` from kwargs.
    - ``zero``: zeros; ``reward_path`` is ignored.

    Wherever normalization layers remain, their statistics stay frozen unless
    ``update_stats=True`` is passed.

    Args:
        reward_type: a key of :data:`reward_registry`.
        reward_path: where the net was saved (local path or URI).
        venv: the (vector) env the reward will be used with: the net's spaces must
            match its single observation/action spaces (ValueError otherwise). None
            skips the check (e.g. relabeling offline data).
        **kwargs: passed to the reward type's loader.

    Raises:
        KeyError: unknown ``reward_type`` (the message lists the valid ones).
        TypeError: the saved wrapper chain does not fit ``reward_type`` (the message
            shows the expected and the found chain), or unexpected kwargs.
    """
    return reward_registry.get(reward_type)(reward_path, venv, **kwargs)


__all__ = [
    "NetDescription",
    "NetRewardFn",
    "NormStats",
    "RewardFn",
    "RewardRegistry",
    "UnsafeRewardFileError",
    "decode_spaces",
    "describe",
    "encode_spaces",
    "format_chain",
    "load",
    "load_reward",
    "register_safe_class",
    "reward_registry",
    "safe_classes",
    "save",
    "space_from_data",
    "space_to_data",
    "wrapper_chain",
    "write_bytes",
]
