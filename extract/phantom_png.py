"""Minimal, fast, deterministic writer for 8-bit greyscale PNGs.

Pillow's PNG encoder tries every row filter and spends most of a phantom's generation time;
here every row uses the "Up" filter (computed in numpy) and one ``zlib`` stream with the
run-length strategy, which is 2-3x faster and gives byte-identical files for identical pixels.
"""
from __future__ import annotations

import struct
import zlib

import numpy as np

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_FILTER_UP = 2


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(data, zlib.crc32(kind)) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def _deflate(raw: np.ndarray, level: int) -> bytes:
    # Z_RLE only looks for runs (distance 1), which is what filtered image rows contain:
    # faster than the default strategy and smaller output on these images.
    compressor = zlib.compressobj(level, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
    return compressor.compress(memoryview(raw).cast("B")) + compressor.flush()


def encode_png_gray8(img_HW: np.ndarray, level: int = 1) -> bytes:
    """PNG bytes of a 2-D uint8 image (colour type 0, bit depth 8, no interlace)."""
    if img_HW.ndim != 2 or img_HW.dtype != np.uint8:
        raise ValueError(f"expected a 2-D uint8 image, got {img_HW.dtype} {img_HW.shape}")
    height, width = img_HW.shape
    if height == 0 or width == 0:
        raise ValueError("cannot encode an empty image")
    raw = np.empty((height, width + 1), dtype=np.uint8)
    raw[:, 0] = _FILTER_UP
    raw[0, 1:] = img_HW[0]  # the row above the first row is zero
    np.subtract(img_HW[1:], img_HW[:-1], out=raw[1:, 1:])  # uint8 arithmetic wraps mod 256
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"".join((
        _SIGNATURE,
        _chunk(b"IHDR", header),
        _chunk(b"IDAT", _deflate(raw, level)),
        _chunk(b"IEND", b""),
    ))


