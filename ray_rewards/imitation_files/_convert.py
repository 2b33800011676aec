"""Records of imitation's reward nets turned into the equivalent ray_rewards nets.

One adapter per imitation class reads the recorded attributes (spaces, ``use_*``
flags, discount factor, ...), infers what the constructor was given from the layers
it made (hidden sizes from weight shapes, the activation class, dropout, the norm
layer class), builds our net with our constructors, checks that our net has exactly
the recorded layers in the recorded order with the recorded hyperparameters, and
copies the recorded tensors in, each cast to the dtype of our own parameter or buffer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from torch import nn

from ray_rewards import networks, reward_nets
from ray_rewards.imitation_files._unpickle import (
    SPACE_CLASSES,
    TORCH_LAYERS,
    ArrayRecord,
    ImitationFileError,
    Record,
    TensorRecord,
    _DtypeRecord,
)

_NETS = "imitation.rewards.reward_nets."
_UTIL = "imitation.util.networks."
_GAIL = "imitation.algorithms.adversarial.gail.RewardNetFromDiscriminatorLogit"
_SEQUENTIAL = "torch.nn.modules.container.Sequential"
_MAX_DEPTH = 32

# Our class for each recorded layer class (an exact match is required).
_LAYERS: dict[str, type[nn.Module]] = {
    **TORCH_LAYERS,
    _UTIL + "RunningNorm": networks.RunningNorm,
    _UTIL + "EMANorm": networks.EMANorm,
    _UTIL + "SqueezeLayer": networks.SqueezeLayer,
}
_ACTIVATIONS = {
    k: v for k, v in TORCH_LAYERS.items() if k.startswith("torch.nn.modules.activation.")
}
_NORMS = {_UTIL + "RunningNorm": networks.RunningNorm, _UTIL + "EMANorm": networks.EMANorm}


def _short(rec: Any) -> str:
    return rec.name.rpartition(".")[2] if isinstance(rec, Record) else type(rec).__name__


def _state(rec: Record) -> dict[str, Any]:
    if not isinstance(rec.state, dict):
        raise ImitationFileError(f"{_short(rec)} was saved without its attributes")
    return rec.state


def _get(rec: Record, key: str, types: type | tuple[type, ...]) -> Any:
    state = _state(rec)
    if key not in state:
        raise ImitationFileError(f"{_short(rec)} lacks the attribute {key!r}")
    value = state[key]
    if not isinstance(value, types):
        raise ImitationFileError(
            f"{_short(rec)}.{key}: expected {types}, found {type(value).__name__}"
        )
    return value


def _flag(rec: Record, key: str) -> bool:
    return bool(_get(rec, key, (bool, np.bool_)))


def _number(rec: Record, key: str) -> float:
    value = _get(rec, key, (int, float, np.integer, np.floating))
    if isinstance(value, bool):
        raise ImitationFileError(f"{_short(rec)}.{key}: expected a number, found a bool")
    return float(value)


def _int(value: Any, what: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ImitationFileError(f"{what}: expected an int, found {type(value).__name__}")
    return int(value)


def _children(rec: Record, expected: set[str] | None = None) -> dict[str, Record]:
    modules = _get(rec, "_modules", dict)
    for name, child in modules.items():
        if not isinstance(child, Record):
            raise ImitationFileError(f"{_short(rec)}.{name}: expected a module, found {child!r}")
    if expected is not None and set(modules) != expected:
        raise ImitationFileError(
            f"{_short(rec)} holds the modules {sorted(modules)} where imitation's class makes "
            f"{sorted(expected)}"
        )
    return dict(modules)


def _tensors(rec: Record) -> dict[str, th.Tensor]:
    out = {}
    for kind in ("_parameters", "_buffers"):
        for name, value in _get(rec, kind, dict).items():
            if value is None:
                continue
            if not isinstance(value, TensorRecord):
                raise ImitationFileError(f"{_short(rec)}.{name}: expected a tensor")
            out[name] = value.value
    return out


def _expect(rec: Any, names: tuple[str, ...], what: str) -> Record:
    if not (isinstance(rec, Record) and rec.name in names):
        raise ImitationFileError(f"expected {what}, found {_short(rec)}")
    return rec


# --------------------------------------------------------------------------------------
# Spaces
# --------------------------------------------------------------------------------------


def _array(value: Any, what: str) -> np.ndarray:
    if not (isinstance(value, ArrayRecord) and value.array is not None):
        raise ImitationFileError(f"{what}: expected a numpy array")
    return value.array


def _dtype(value: Any, what: str) -> np.dtype:
    if not isinstance(value, _DtypeRecord):
        raise ImitationFileError(f"{what}: expected a numpy dtype")
    return value.dtype()


def _space(rec: Any) -> spaces.Space:
    """The gymnasium space a recorded Box/Discrete/MultiDiscrete/MultiBinary describes."""
    rec = _expect(rec, SPACE_CLASSES, "a Box, Discrete, MultiDiscrete or MultiBinary space")
    state, kind = _state(rec), _short(rec)
    what = f"saved {kind} space"
    try:
        if kind == "Box":
            dtype = _dtype(state.get("dtype"), what)
            low, high = _array(state.get("low"), what), _array(state.get("high"), what)
            return spaces.Box(low.astype(dtype), high.astype(dtype), dtype=dtype)
        if kind == "Discrete":
            return spaces.Discrete(
                _int(state.get("n"), what), start=_int(state.get("start", 0), what)
            )
        if kind == "MultiDiscrete":
            nvec = _array(state.get("nvec"), what)
            start = state.get("start")
            start = np.zeros_like(nvec) if start is None else _array(start, what)
            return spaces.MultiDiscrete(nvec, dtype=_dtype(state.get("dtype"), what), start=start)
        n = state.get("n")
        return spaces.MultiBinary(_array(n, what) if isinstance(n, ArrayRecord) else _int(n, what))
    except (TypeError, ValueError, AssertionError) as err:
        raise ImitationFileError(f"{what}: {err}") from err


# --------------------------------------------------------------------------------------
# Layers: what build_mlp/build_cnn were given, and copying the tensors
# --------------------------------------------------------------------------------------


def _layer_class(rec: Record, table: dict[str, type[nn.Module]], what: str) -> type[nn.Module]:
    cls = table.get(rec.name)
    if cls is None:
        raise ImitationFileError(f"expected {what}, found {_short(rec)}")
    return cls


def _built_with(seq: Record, unit: str) -> tuple[str, dict[str, Any]]:
    """The layer-name prefix and the options (hidden widths, activation, dropout, name)
    imitation's build_mlp (``unit="dense"``) or build_cnn (``"conv"``) was given.
    """
    children = _children(_expect(seq, (_SEQUENTIAL,), "an nn.Sequential"))
    finals = [k for k in children if k.endswith("dense_final")]
    prefix = finals[0][: -len("dense_final")] if len(finals) == 1 else "?"
    if prefix and not prefix.endswith("_"):
        raise ImitationFileError(f"unrecognized layer names {list(children)}")
    widths = []
    while f"{prefix}{unit}{len(widths)}" in children:
        weight = _tensors(children[f"{prefix}{unit}{len(widths)}"]).get("weight")
        if weight is None or weight.dim() < 2:
            raise ImitationFileError(f"layer {prefix}{unit}{len(widths)} has no weight matrix")
        widths.append(int(weight.shape[0]))
    options: dict[str, Any] = {"name": prefix[:-1] or None}
    act = children.get(f"{prefix}act0")
    if act is not None:
        options["activation"] = _layer_class(act, _ACTIVATIONS, "an activation")
    elif widths:
        options["activation"] = None
    dropout = children.get(f"{prefix}dropout0")
    if dropout is not None:
        options["dropout_prob"] = _number(dropout, "p")
    return prefix, {**options, "hid": tuple(widths)}


def _mlp_options(seq: Record) -> dict[str, Any]:
    """build_mlp's options (``hid_sizes``, ``normalize_input_layer``, ...) for ``seq``."""
    prefix, options = _built_with(seq, "dense")
    children = _children(seq)
    options["hid_sizes"] = options.pop("hid")
    options["flatten_input"] = f"{prefix}flatten" in children
    norm = children.get(f"{prefix}normalize_input")
    if norm is not None:
        options["normalize_input_layer"] = _layer_class(norm, _NORMS, "RunningNorm or EMANorm")
    return options


def _cnn_options(seq: Record) -> dict[str, Any]:
    """build_cnn's options (``hid_channels``, kernel size, stride, padding, ...)."""
    prefix, options = _built_with(seq, "conv")
    options["hid_channels"] = options.pop("hid")
    conv = _children(seq).get(f"{prefix}conv0")
    if conv is not None:
        for key in ("kernel_size", "stride", "padding"):
            value = _get(conv, key, (tuple, str))
            if isinstance(value, tuple):
                if len(set(value)) != 1:
                    raise ImitationFileError(f"non-square convolution {key} {value}")
                value = _int(value[0], f"Conv2d.{key}")
            options[key] = value
    return options


_PLAIN = (bool, int, float, str, tuple, np.bool_, np.integer, np.floating)


def _load_into(ours: nn.Module, rec: Record, where: str) -> None:
    """Check our layer ``ours`` matches the recorded one, then copy its tensors in."""
    cls = _layer_class(rec, _LAYERS, "a torch layer")
    if type(ours) is not cls:
        raise ImitationFileError(
            f"{where}: the file has {cls.__name__}, ours {type(ours).__name__}"
        )
    state = _state(rec)
    if isinstance(ours, networks.BaseNorm):
        ours.eps = _number(rec, "eps")
        if isinstance(ours, networks.EMANorm):
            ours.decay = _number(rec, "decay")
    for key, value in state.items():
        if key.startswith("_") or key == "training" or not isinstance(value, _PLAIN):
            continue
        if hasattr(ours, key) and getattr(ours, key) != value:
            raise ImitationFileError(
                f"{where}: {key}={value!r} in the file, {getattr(ours, key)!r} in ours"
            )
    children = _children(rec)
    if list(children) != list(ours._modules):
        raise ImitationFileError(
            f"{where}: the file's layers {list(children)} are not ours {list(ours._modules)}"
        )
    tensors = _tensors(rec)
    targets = {k: v for k, v in {**ours._parameters, **ours._buffers}.items() if v is not None}
    if set(tensors) != set(targets):
        raise ImitationFileError(
            f"{where}: the file has tensors {sorted(tensors)}, ours {sorted(targets)}"
        )
    with th.no_grad():
        for key, tensor in tensors.items():
            target = targets[key]
            if tensor.shape != target.shape:
                raise ImitationFileError(
                    f"{where}.{key}: shape {tuple(tensor.shape)} in the file, "
                    f"{tuple(target.shape)} in ours"
                )
            target.copy_(tensor.to(target.dtype))
    for name, child in children.items():
        _load_into(ours._modules[name], child, f"{where}.{name}")


# --------------------------------------------------------------------------------------
# Reward nets
# --------------------------------------------------------------------------------------


def _spaces_of(rec: Record) -> tuple[spaces.Space, spaces.Space]:
    return _space(_state(rec).get("observation_space")), _space(_state(rec).get("action_space"))


def _uses(rec: Record) -> dict[str, bool]:
    return {k: _flag(rec, k) for k in ("use_state", "use_action", "use_next_state", "use_done")}


def _no_tensors(rec: Record) -> None:
    if _tensors(rec):
        raise ImitationFileError(f"{_short(rec)} holds unexpected tensors {sorted(_tensors(rec))}")


def _build(make: Callable[[], Any], rec: Record) -> Any:
    try:
        return make()
    except (TypeError, ValueError) as err:
        raise ImitationFileError(f"cannot rebuild {_short(rec)}: {err}") from err


def _basic(rec: Record, depth: int) -> reward_nets.RewardNet:
    mlp = _children(rec, {"mlp"})["mlp"]
    obs, act = _spaces_of(rec)
    options = _mlp_options(mlp)
    net = _build(lambda: reward_nets.BasicRewardNet(obs, act, **_uses(rec), **options), rec)
    _load_into(net.mlp, mlp, "mlp")
    net.normalize_images = _flag(rec, "normalize_images")
    return net


def _cnn(rec: Record, depth: int) -> reward_nets.RewardNet:
    cnn = _children(rec, {"cnn"})["cnn"]
    obs, act = _spaces_of(rec)
    hwc = _flag(rec, "hwc_format")
    options = _cnn_options(cnn)
    net = _build(
        lambda: reward_nets.CNNRewardNet(obs, act, **_uses(rec), hwc_format=hwc, **options), rec
    )
    _load_into(net.cnn, cnn, "cnn")
    net.normalize_images = _flag(rec, "normalize_images")
    return net


def _potential(rec: Any, obs: spaces.Space) -> nn.Module:
    rec = _expect(rec, (_NETS + "BasicPotentialMLP", _NETS + "BasicPotentialCNN"), "a potential")
    seq = _children(rec, {"_potential_net"})["_potential_net"]
    if rec.name.endswith("MLP"):
        options = _mlp_options(seq)
        if not options.pop("flatten_input"):
            raise ImitationFileError("BasicPotentialMLP without its flatten layer")
        hid = options.pop("hid_sizes")
        pot = _build(lambda: reward_nets.BasicPotentialMLP(obs, hid, **options), rec)
    else:
        options = _cnn_options(seq)
        hid, hwc = options.pop("hid_channels"), _flag(rec, "hwc_format")
        pot = _build(lambda: reward_nets.BasicPotentialCNN(obs, hid, hwc, **options), rec)
    _load_into(pot._potential_net, seq, "potential._potential_net")
    return pot


def _shaped(rec: Record, depth: int) -> reward_nets.RewardNet:
    children = _children(rec, {"_base", "potential"})
    base = _net(children["_base"], depth)
    potential = _potential(children["potential"], base.observation_space)
    gamma = _number(rec, "discount_factor")
    return _build(lambda: reward_nets.ShapedRewardNet(base, potential, gamma), rec)


def _basic_shaped(rec: Record, depth: int) -> reward_nets.RewardNet:
    children = _children(rec, {"_base", "potential"})
    base = _expect(children["_base"], (_NETS + "BasicRewardNet",), "a BasicRewardNet base")
    pot = _expect(children["potential"], (_NETS + "BasicPotentialMLP",), "a BasicPotentialMLP")
    base_mlp = _children(base, {"mlp"})["mlp"]
    pot_mlp = _children(pot, {"_potential_net"})["_potential_net"]
    options, pot_options = _mlp_options(base_mlp), _mlp_options(pot_mlp)
    reward_hid, pot_hid = options.pop("hid_sizes"), pot_options.pop("hid_sizes")
    if options.pop("flatten_input") or not pot_options.pop("flatten_input"):
        raise ImitationFileError("BasicShapedRewardNet's MLPs do not flatten as imitation's do")
    if options != pot_options:
        raise ImitationFileError(
            f"BasicShapedRewardNet's reward MLP ({options}) and potential MLP ({pot_options}) "
            "were built with different options"
        )
    obs, act = _spaces_of(base)
    gamma = _number(rec, "discount_factor")
    net = _build(
        lambda: reward_nets.BasicShapedRewardNet(
            obs,
            act,
            reward_hid_sizes=reward_hid,
            potential_hid_sizes=pot_hid,
            discount_factor=gamma,
            **_uses(base),
            **options,
        ),
        rec,
    )
    _load_into(net.base.mlp, base_mlp, "_base.mlp")
    _load_into(net.potential._potential_net, pot_mlp, "potential._potential_net")
    net.base.normalize_images = net.normalize_images = _flag(base, "normalize_images")
    return net


def _normalized(rec: Record, depth: int) -> reward_nets.RewardNet:
    children = _children(rec, {"_base", "normalize_output_layer"})
    norm = children["normalize_output_layer"]
    norm_cls = _layer_class(norm, _NORMS, "RunningNorm or EMANorm as normalize_output_layer")
    base = _net(children["_base"], depth)
    net = _build(lambda: reward_nets.NormalizedRewardNet(base, norm_cls), rec)
    _load_into(net.normalize_output_layer, norm, "normalize_output_layer")
    return net


def _ensemble(rec: Record, depth: int) -> reward_nets.RewardNet:
    members = _children(rec, {"members"})["members"]
    _expect(members, ("torch.nn.modules.container.ModuleList",), "an nn.ModuleList of members")
    nets = [_net(m, depth) for m in _children(members).values()]
    obs, act = _spaces_of(rec)
    return _build(lambda: reward_nets.RewardEnsemble(obs, act, nets), rec)


def _add_std(rec: Record, depth: int) -> reward_nets.RewardNet:
    base = _net(_children(rec, {"_base"})["_base"], depth)
    alpha = _number(rec, "default_alpha")
    return _build(lambda: reward_nets.AddSTDRewardWrapper(base, alpha), rec)


def _gail(rec: Record, depth: int) -> reward_nets.RewardNet:
    # imitation's GAIL wrapper is no RewardNetWrapper: it keeps its net as ``base``.
    base = _net(_children(rec, {"base"})["base"], depth)
    return _build(lambda: reward_nets.RewardNetFromDiscriminatorLogit(base), rec)


_ADAPTERS: dict[str, Callable[[Record, int], reward_nets.RewardNet]] = {
    _NETS + "BasicRewardNet": _basic,
    _NETS + "CnnRewardNet": _cnn,
    _NETS + "ShapedRewardNet": _shaped,
    _NETS + "BasicShapedRewardNet": _basic_shaped,
    _NETS + "NormalizedRewardNet": _normalized,
    _NETS + "RewardEnsemble": _ensemble,
    _NETS + "AddSTDRewardWrapper": _add_std,
    _GAIL: _gail,
}


def _net(rec: Any, depth: int) -> reward_nets.RewardNet:
    if depth > _MAX_DEPTH:
        raise ImitationFileError(f"reward nets nested more than {_MAX_DEPTH} deep")
    adapter = _ADAPTERS.get(rec.name) if isinstance(rec, Record) else None
    if adapter is None:
        raise ImitationFileError(f"expected an imitation reward net, found {_short(rec)}")
    _no_tensors(rec)
    return adapter(rec, depth + 1)


def convert(obj: Any) -> reward_nets.RewardNet:
    """The ray_rewards net equivalent to the recorded imitation net ``obj`` (on the CPU,
    in the training mode it was saved in).

    Raises ImitationFileError when ``obj`` is not an imitation reward net, or holds
    something the adapters cannot rebuild exactly.
    """
    if not isinstance(obj, Record):
        found = "a tensor" if isinstance(obj, TensorRecord) else type(obj).__name__
        if isinstance(obj, dict):
            found += " (a state_dict? it holds no architecture to rebuild)"
        raise ImitationFileError(f"expected a saved reward net, found {found}")
    net = _net(obj, 0)
    net.train(_flag(obj, "training"))
    return net
