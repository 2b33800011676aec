"""A small animated-PNG (APNG) encoder: rendered frames to a looping clip, with zlib
and struct only.

Why APNG: every current browser plays it in a plain ``<img>`` (Chromium builds
without proprietary codecs cannot play H.264 video), it loops by itself, it is
lossless (fine lines of classic-control drawings stay sharp), and it needs no
dependency (no Pillow, no ffmpeg). Frames are full RGB frames, each row filtered
with PNG's "Up" filter (the difference to the row above), which suits the flat
colours of rendered envs: a 25-frame 125x125 Pendulum clip is a few tens of KB.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data and the CRC of type and data."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _image_data(frame: np.ndarray, level: int) -> bytes:
    """The zlib stream of one RGB frame (H, W, 3), every row with the Up filter (2)."""
    up = frame.astype(np.int16)
    up[1:] -= frame[:-1]
    rows = (up & 0xFF).astype(np.uint8).reshape(frame.shape[0], -1)
    filtered = np.concatenate([np.full((rows.shape[0], 1), 2, np.uint8), rows], axis=1)
    return zlib.compress(filtered.tobytes(), level)


def encode_apng(frames: np.ndarray, fps: float = 20.0, *, level: int = 6) -> bytes:
    """Frames ``(T, H, W, 3)`` uint8 as an APNG that loops forever at ``fps`` frames
    per second (a single frame gives a still PNG that any decoder shows).

    Raises:
        ValueError: not ``(T, H, W, 3)`` uint8 with ``T, H, W >= 1``, or ``fps <= 0``.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[3] != 3 or frames.dtype != np.uint8 or 0 in frames.shape:
        raise ValueError(
            f"encode_apng: expected frames (T, H, W, 3) uint8, got {frames.shape} {frames.dtype}"
        )
    if not fps > 0:
        raise ValueError(f"encode_apng: fps must be > 0, got {fps}")
    count, height, width = frames.shape[:3]
    # IHDR: 8-bit RGB, deflate, adaptive filtering, no interlace.
    out = [_SIGNATURE, _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))]
    if count > 1:
        out.append(_chunk(b"acTL", struct.pack(">II", count, 0)))  # 0 plays: loop forever
    # The delay as a fraction of a second, in milliseconds (APNG's numerator and
    # denominator are 16-bit).
    delay = max(1, min(65535, round(1000 / fps)))
    sequence = 0
    for t in range(count):
        data = _image_data(frames[t], level)
        if count > 1:
            # fcTL: the frame covers the whole image, replaces what was there.
            control = struct.pack(">IIIIIHHBB", sequence, width, height, 0, 0, delay, 1000, 0, 0)
            out.append(_chunk(b"fcTL", control))
            sequence += 1
        if t == 0:
            out.append(_chunk(b"IDAT", data))  # the default image is the first frame
        else:
            out.append(_chunk(b"fdAT", struct.pack(">I", sequence) + data))
            sequence += 1
    out.append(_chunk(b"IEND", b""))
    return b"".join(out)


__all__ = ["encode_apng"]
