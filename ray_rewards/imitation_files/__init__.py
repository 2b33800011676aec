"""Reward nets saved by the imitation library (1.0.1), read without imitation and
without running anything from the file.

imitation users save a reward net with ``th.save(reward_net, path)``: a pickle of the
whole module inside torch's zip format. Loading that with ``torch.load`` would need
imitation installed and would run whatever the pickle names; torch's safe loader
refuses it. Here the pickle is read by a restricted unpickler that turns every class
into an inert record and refuses every global outside a fixed table (see
:mod:`._unpickle`), and one adapter per imitation class builds the equivalent
:mod:`ray_rewards.reward_nets` net from those records and copies the tensors in
(:mod:`._convert`).

Supported: ``BasicRewardNet``, ``BasicShapedRewardNet``, ``ShapedRewardNet`` (with a
``BasicPotentialMLP``/``BasicPotentialCNN``), ``NormalizedRewardNet`` (``RunningNorm``
or ``EMANorm``), ``RewardEnsemble``, ``AddSTDRewardWrapper``, ``CnnRewardNet`` and
GAIL's ``RewardNetFromDiscriminatorLogit``, over Box/Discrete/MultiDiscrete/
MultiBinary spaces. ``ray-rewards import-imitation IN OUT`` converts a file into
ray_rewards' own format.

This package imports nothing of :mod:`ray_rewards.file_format`, so that module may
import it (to recognize imitation files in ``load``) without an import cycle.
"""

from __future__ import annotations

import pyarrow.fs as pafs
import torch as th

from ray_rewards import reward_nets, storage
from ray_rewards.imitation_files._convert import convert
from ray_rewards.imitation_files._unpickle import (
    ImitationFileError,
    UnsafeImitationFileError,
    global_names,
    pickle_of,
    read_records,
)
from ray_rewards.storage import PathLike

__all__ = [
    "ImitationFileError",
    "UnsafeImitationFileError",
    "is_imitation_file",
    "load_imitation",
    "load_imitation_bytes",
]


def is_imitation_file(data: bytes) -> bool:
    """Whether ``data`` is a torch zip archive whose pickle names ``imitation.`` globals.

    A cheap sniff (the pickle's opcodes are listed, never executed), for choosing a
    loader; it does not say the file is safe or convertible.
    """
    try:
        archive, _, pkl = pickle_of(data)
        archive.close()
        return any(name.startswith("imitation.") for name in global_names(pkl))
    except Exception:  # noqa: BLE001 - anything unreadable is not an imitation file
        return False


def load_imitation_bytes(
    data: bytes, device: str | th.device = "cpu", *, source: str = "<bytes>"
) -> reward_nets.RewardNet:
    """The ray_rewards net equivalent to the imitation net saved in ``data``.

    Args:
        data: the bytes of a file imitation's users wrote with ``th.save(net, path)``.
        device: where to put the net.
        source: names the data in error messages.

    Raises:
        UnsafeImitationFileError: the file names a global outside the importer's table
            (a ``pickle.UnpicklingError`` and an ImitationFileError); nothing from the
            file was run.
        ImitationFileError: not a torch zip archive, a malformed pickle, or a net
            whose classes or layout the adapters cannot rebuild exactly (a ValueError).
    """
    try:
        net = convert(read_records(data))
    except UnsafeImitationFileError as err:
        hint = "" if is_imitation_file(data) else " The file names no imitation class at all."
        raise UnsafeImitationFileError(
            f"refused to load {source}: {err}. Nothing from this file was run.{hint}"
        ) from None
    except ImitationFileError as err:
        raise ImitationFileError(
            f"{source}: not a convertible imitation reward net: {err}"
        ) from err
    return net.to(device)


def load_imitation(
    path: PathLike,
    device: str | th.device = "cpu",
    *,
    filesystem: pafs.FileSystem | None = None,
) -> reward_nets.RewardNet:
    """:func:`load_imitation_bytes` of the file at ``path``: a local path, or a URI
    ``pyarrow.fs`` understands (``s3://``, ``gs://``, ...), optionally in ``filesystem``.

    Raises FileNotFoundError when nothing is at ``path``, else as
    :func:`load_imitation_bytes` does.
    """
    data = storage.read_bytes(path, filesystem=filesystem, what="imitation reward net")
    return load_imitation_bytes(data, device, source=str(path))
