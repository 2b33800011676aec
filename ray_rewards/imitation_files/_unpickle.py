"""The pickle of a ``th.save`` archive read as inert records; nothing it names is run.

imitation's files pickle whole modules of classes that are not installed here (and
must not be imported): torch's ``weights_only`` loader refuses them, and a full
unpickler would run whatever the file names. This unpickler resolves every global
through a fixed table (:data:`GLOBALS`): a class becomes a :class:`Record` (its name
and pickled state, nothing else), and the few functions a module pickle calls (to
rebuild tensors, numpy arrays and dtypes, ordered dicts) become our own
constructors that take plain data and make plain data. Any other global is refused
before anything is called.
"""

from __future__ import annotations

import collections
import functools
import io
import math
import pickle
import re
import zipfile
from typing import Any, ClassVar

import numpy as np
import torch as th
from torch import nn


class ImitationFileError(ValueError):
    """A file is not an imitation reward net we can read or convert."""


class UnsafeImitationFileError(ImitationFileError, pickle.UnpicklingError):
    """A file names a global outside the table; nothing from it was run."""


class Record:
    """An instance of a class the file names, kept as data: the class's global name
    (:attr:`name`) and the state pickle gave it (:attr:`state`). Made only with
    ``cls.__new__`` (NEWOBJ), never by calling the class, so no ``__init__`` runs.
    """

    name: ClassVar[str] = ""

    def __new__(cls, *args: Any) -> Record:
        obj = object.__new__(cls)
        obj.args = args
        obj.state = None
        return obj

    def __init__(self, *args: Any) -> None:
        # Reached only by REDUCE (a call), which a module pickle never makes of a class.
        raise UnsafeImitationFileError(
            f"the file asks to call {self.name}(...); a saved module is only ever rebuilt "
            "from its state"
        )

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<record of {self.name}>"


class _Inert:
    """A value only our code reads (a storage type, a numpy class marker): BUILD on it
    and calls to it are refused.
    """

    __slots__ = ("label", "value")

    def __init__(self, label: str, value: Any = None):
        self.label = label
        self.value = value

    def __setstate__(self, state: Any) -> None:
        raise UnsafeImitationFileError(f"the file asks to set the state of {self.label}")

    def __call__(self, *args: Any) -> None:
        raise UnsafeImitationFileError(f"the file asks to call {self.label}(...)")


class _SafeCall(_Inert):
    """One of our constructors, under the global name the file uses for it. Slotted,
    so a file cannot rewrite its attributes (a function's ``__defaults__`` it could).
    """

    __slots__ = ()

    def __call__(self, *args: Any) -> Any:
        return self.value(*args)


class TensorRecord(_Inert):
    """A tensor rebuilt from the archive (``value``); BUILD on it is refused."""

    __slots__ = ()


class _DtypeRecord:
    """``numpy.dtype(name, align, copy)`` plus the byte order its BUILD sets."""

    _NAME = re.compile(r"b1|[iuf][1248]")

    def __init__(self, name: Any, *_flags: Any):
        if not (isinstance(name, str) and self._NAME.fullmatch(name)):
            raise ImitationFileError(f"unsupported numpy dtype {name!r}")
        self.name = name
        self.order = "|"

    def __setstate__(self, state: Any) -> None:
        if not (isinstance(state, tuple) and len(state) >= 2 and state[1] in ("<", ">", "|", "=")):
            raise ImitationFileError(f"unsupported numpy dtype state {state!r:.100}")
        if any(x is not None for x in state[2:5]):
            raise ImitationFileError("structured or sub-array numpy dtypes are not supported")
        self.order = state[1]

    def dtype(self) -> np.dtype:
        return np.dtype(self.name if self.order == "|" else self.order + self.name)


class ArrayRecord:
    """``numpy.core.multiarray._reconstruct(ndarray, ...)`` plus the data its BUILD sets."""

    def __init__(self) -> None:
        self.array: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        ok = isinstance(state, tuple) and len(state) == 5
        version, shape, dtype, fortran, raw = state if ok else (None,) * 5
        if not (
            ok
            and isinstance(shape, tuple)
            and all(isinstance(n, int) and n >= 0 for n in shape)
            and isinstance(dtype, _DtypeRecord)
            and isinstance(raw, bytes)
        ):
            raise ImitationFileError(f"unsupported numpy array state {state!r:.100}")
        dt = dtype.dtype()
        if len(raw) != int(np.prod(shape, dtype=np.int64)) * dt.itemsize:
            raise ImitationFileError(f"numpy array of shape {shape} holds {len(raw)} bytes")
        order = "F" if fortran else "C"
        self.array = np.frombuffer(raw, dtype=dt).reshape(shape, order=order).copy()


def _reconstruct(subtype: Any, shape: Any, code: Any) -> ArrayRecord:
    if not (isinstance(subtype, _Inert) and subtype.label == "numpy.ndarray"):
        raise ImitationFileError("numpy _reconstruct of something other than ndarray")
    return ArrayRecord()


def _scalar(dtype: Any, raw: Any) -> Any:
    if not (isinstance(dtype, _DtypeRecord) and isinstance(raw, bytes)):
        raise ImitationFileError("malformed numpy scalar")
    dt = dtype.dtype()
    if len(raw) != dt.itemsize:
        raise ImitationFileError(f"numpy {dt} scalar of {len(raw)} bytes")
    return np.frombuffer(raw, dtype=dt)[0]


def _encode(text: Any, encoding: Any) -> bytes:
    # How protocol 2 writes bytes: ``_codecs.encode(str, "latin1")``.
    if not (isinstance(text, str) and encoding in ("latin1", "latin-1")):
        raise ImitationFileError("_codecs.encode used for something other than bytes")
    return text.encode("latin1")


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, *_: Any) -> TensorRecord:
    """Our ``torch._utils._rebuild_tensor_v2``: a strided view of a storage, bounds checked."""
    if not isinstance(storage, _Inert) or storage.label != "storage":
        raise ImitationFileError("a tensor whose storage is not one of the archive's")
    flat: th.Tensor = storage.value
    dims = (offset, *size, *stride) if isinstance(size, tuple) and isinstance(stride, tuple) else ()
    if not dims or len(size) != len(stride) or not all(isinstance(d, int) and d >= 0 for d in dims):
        raise ImitationFileError(f"malformed tensor layout {size!r:.60}/{stride!r:.60}")
    if all(size):
        last = offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= flat.numel():
            raise ImitationFileError(f"a tensor reaches past its storage of {flat.numel()}")
    # No broadcast views bigger than what the file holds: layer widths are read from
    # these shapes, and a few bytes must not make us build a huge layer.
    if math.prod(size) > flat.numel():
        raise ImitationFileError(
            f"a tensor of {math.prod(size)} elements over a storage of {flat.numel()}"
        )
    return TensorRecord("tensor", flat.as_strided(size, stride, offset))


def _rebuild_parameter(data: Any, requires_grad: Any = False, *_: Any) -> TensorRecord:
    if not isinstance(data, TensorRecord):
        raise ImitationFileError("a parameter that does not hold a tensor")
    return data


def _reconstructor(cls: Any, base: Any, state: Any) -> Record:
    # copyreg's way (protocol < 2) to make a bare instance of a class.
    is_object = isinstance(base, _Inert) and base.label == "builtins.object"
    if not (isinstance(cls, type) and issubclass(cls, Record) and is_object and state is None):
        raise ImitationFileError("copyreg._reconstructor of something other than a module")
    return cls.__new__(cls)


_STORAGE_DTYPES = {
    "DoubleStorage": th.float64,
    "FloatStorage": th.float32,
    "HalfStorage": th.float16,
    "BFloat16Storage": th.bfloat16,
    "LongStorage": th.int64,
    "IntStorage": th.int32,
    "ShortStorage": th.int16,
    "CharStorage": th.int8,
    "ByteStorage": th.uint8,
    "BoolStorage": th.bool,
}

# The imitation classes an adapter converts; the gymnasium spaces; torch's layers.
IMITATION_CLASSES = (
    "imitation.rewards.reward_nets.BasicRewardNet",
    "imitation.rewards.reward_nets.BasicShapedRewardNet",
    "imitation.rewards.reward_nets.ShapedRewardNet",
    "imitation.rewards.reward_nets.NormalizedRewardNet",
    "imitation.rewards.reward_nets.RewardEnsemble",
    "imitation.rewards.reward_nets.AddSTDRewardWrapper",
    "imitation.rewards.reward_nets.CnnRewardNet",
    "imitation.rewards.reward_nets.BasicPotentialMLP",
    "imitation.rewards.reward_nets.BasicPotentialCNN",
    "imitation.algorithms.adversarial.gail.RewardNetFromDiscriminatorLogit",
    "imitation.util.networks.RunningNorm",
    "imitation.util.networks.EMANorm",
    "imitation.util.networks.SqueezeLayer",
)
SPACE_CLASSES = (
    "gymnasium.spaces.box.Box",
    "gymnasium.spaces.discrete.Discrete",
    "gymnasium.spaces.multi_discrete.MultiDiscrete",
    "gymnasium.spaces.multi_binary.MultiBinary",
)
TORCH_LAYERS: dict[str, type[nn.Module]] = {
    f"{cls.__module__}.{cls.__qualname__}": cls
    for cls in (
        nn.Sequential,
        nn.ModuleList,
        nn.Linear,
        nn.Identity,
        nn.Conv2d,
        nn.Flatten,
        nn.AdaptiveAvgPool2d,
        nn.Dropout,
        *(
            getattr(nn.modules.activation, n)
            for n in nn.modules.activation.__all__
            if n != "MultiheadAttention"
        ),
    )
}
# A sampled space holds a numpy Generator; its record is read past, never built.
_RNG_CTORS = ("__generator_ctor", "__bit_generator_ctor", "__randomstate_ctor")


def _record_class(name: str) -> type[Record]:
    return type(name.rpartition(".")[2], (Record,), {"name": name, "__module__": __name__})


def _global_table() -> dict[str, Any]:
    table: dict[str, Any] = {
        name: _record_class(name) for name in (*IMITATION_CLASSES, *SPACE_CLASSES, *TORCH_LAYERS)
    }
    for n in _RNG_CTORS:
        rng = _record_class(f"numpy.random._pickle.{n}")
        table[f"numpy.random._pickle.{n}"] = _SafeCall(
            rng.name, functools.partial(rng.__new__, rng)
        )
    calls = {
        "collections.OrderedDict": collections.OrderedDict,
        "builtins.set": set,
        "_codecs.encode": _encode,
        "numpy.dtype": _DtypeRecord,
        "torch._utils._rebuild_tensor_v2": _rebuild_tensor,
        "torch._utils._rebuild_parameter": _rebuild_parameter,
        "torch._utils._rebuild_parameter_with_state": _rebuild_parameter,
        "copyreg._reconstructor": _reconstructor,
    }
    for core in ("numpy.core.multiarray", "numpy._core.multiarray"):
        calls[f"{core}._reconstruct"] = _reconstruct
        calls[f"{core}.scalar"] = _scalar
    table.update({name: _SafeCall(name, fn) for name, fn in calls.items()})
    table["numpy.ndarray"] = _Inert("numpy.ndarray")
    table["builtins.object"] = _Inert("builtins.object")  # only _reconstructor reads it
    table.update({f"torch.{n}": _Inert(f"torch.{n}", dt) for n, dt in _STORAGE_DTYPES.items()})
    return table


GLOBALS: dict[str, Any] = _global_table()
"""What each global a file may name resolves to; every other name is refused."""

# Python 2 names that protocol 2 pickles use for builtins (pickle's fix_imports).
_PY2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: bytes, storages: _Storages):
        super().__init__(io.BytesIO(data))
        self.storages = storages

    def find_class(self, module: str, name: str) -> Any:
        full = f"{_PY2_MODULES.get(module, module)}.{name}"
        try:
            return GLOBALS[full]
        except KeyError:
            raise UnsafeImitationFileError(
                f"it asks for the global {full}, which is not among the imitation reward-net "
                "classes and torch/numpy/gymnasium helpers this importer reads"
            ) from None

    def persistent_load(self, pid: Any) -> _Inert:
        ok = isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
        kind = pid[1] if ok else None
        label = kind.label if isinstance(kind, _Inert) else ""
        if not (label.startswith("torch.") and label[len("torch.") :] in _STORAGE_DTYPES):
            raise UnsafeImitationFileError(
                f"it refers to an unknown persistent object {pid!r:.100}"
            )
        _, kind, key, _location, numel = pid
        if not (isinstance(key, str) and isinstance(numel, int) and numel >= 0):
            raise ImitationFileError(f"malformed storage reference {pid!r:.100}")
        return self.storages.get(key, kind.value, numel)


class _Storages:
    """The tensor storages of a torch zip archive (``<root>/data/<key>``), read once each."""

    def __init__(self, archive: zipfile.ZipFile, root: str):
        self.archive = archive
        self.root = root
        self.cache: dict[str, _Inert] = {}

    def get(self, key: str, dtype: th.dtype, numel: int) -> _Inert:
        if key in self.cache:
            return self.cache[key]
        member = f"{self.root}data/{key}"
        try:
            info = self.archive.getinfo(member)
        except KeyError:
            raise ImitationFileError(f"the archive lacks the storage {member}") from None
        size = numel * th.empty((), dtype=dtype).element_size()
        if info.file_size != size:
            raise ImitationFileError(f"storage {member} holds {info.file_size} bytes, not {size}")
        raw = bytearray(self.archive.read(member))  # checks the CRC
        flat = th.frombuffer(raw, dtype=dtype) if raw else th.empty(0, dtype=dtype)
        self.cache[key] = _Inert("storage", flat)
        return self.cache[key]


def pickle_of(data: bytes) -> tuple[zipfile.ZipFile, str, bytes]:
    """The open archive, its root folder (``"name/"``) and its ``data.pkl`` bytes.

    Raises ImitationFileError unless ``data`` is a torch zip archive.
    """
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, ValueError) as err:
        raise ImitationFileError(f"not a torch.save zip archive ({err})") from err
    roots = [
        n[: -len("data.pkl")] for n in archive.namelist() if re.fullmatch(r"[^/]+/data\.pkl", n)
    ]
    if len(roots) != 1:
        raise ImitationFileError("not a torch.save zip archive: expected one <name>/data.pkl")
    try:
        return archive, roots[0], archive.read(f"{roots[0]}data.pkl")
    except (zipfile.BadZipFile, OSError, ValueError) as err:
        raise ImitationFileError(f"damaged archive: {err}") from err


def read_records(data: bytes) -> Any:
    """The object a ``th.save`` zip archive holds, with classes as :class:`Record` s and
    tensors as :class:`TensorRecord` s (on the CPU).

    Raises UnsafeImitationFileError for a global outside :data:`GLOBALS`, and
    ImitationFileError for a malformed archive or pickle.
    """
    archive, root, pkl = pickle_of(data)
    with archive:
        try:
            order = (
                archive.read(f"{root}byteorder").decode()
                if f"{root}byteorder" in archive.namelist()
                else "little"
            )
        except (zipfile.BadZipFile, OSError, UnicodeDecodeError) as err:
            raise ImitationFileError(f"damaged archive: {err}") from err
        if order != "little":
            raise ImitationFileError(f"tensors saved in {order!r} byte order are not supported")
        try:
            return _Unpickler(pkl, _Storages(archive, root)).load()
        except ImitationFileError:
            raise
        except Exception as err:  # noqa: BLE001 - any other failure of the pickle: malformed
            raise ImitationFileError(
                f"unreadable pickle in the archive: {type(err).__name__}: {err}"
            ) from err


def global_names(pkl: bytes) -> set[str]:
    """The globals a pickle names (GLOBAL opcodes, and STACK_GLOBAL after two string
    pushes), read with :mod:`pickletools` without unpickling. Best effort: for sniffing.
    """
    import pickletools

    names: set[str] = set()
    strings: list[str] = []  # the strings pushed so far, memo fetches included
    memo: dict[Any, Any] = {}
    last: Any = None  # what the previous opcode pushed, if a string
    for op, arg, _ in pickletools.genops(pkl):
        if op.name == "GLOBAL":
            module, _, name = str(arg).partition(" ")
            names.add(f"{_PY2_MODULES.get(module, module)}.{name}")
        elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
            names.add(f"{strings[-2]}.{strings[-1]}")
        if op.name == "MEMOIZE":
            memo[len(memo)] = last
        elif op.name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[arg] = last
        else:
            if op.name in ("GET", "BINGET", "LONG_BINGET"):
                last = memo.get(arg)
            else:
                last = arg if isinstance(arg, str) and "UNICODE" in op.name else None
            if isinstance(last, str):
                strings.append(last)
    return names
