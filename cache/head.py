"""Concept head file: a minimal safetensors writer/reader (numpy + stdlib only).

Layout (the safetensors format): 8-byte little-endian header length, a JSON header mapping each
tensor name to {dtype, shape, data_offsets} plus `__metadata__` (string values only), then the raw
little-endian tensor bytes. Files written here load with the `safetensors` package and vice versa.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .errors import CacheChecksumError, CacheInputError
from .format import atomic_write_bytes

_DTYPES = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "F64": np.dtype("<f8"), "I64": np.dtype("<i8")}


class Head(NamedTuple):
    """A linear concept head on pooled features: logits = pooled @ weight.T + bias."""

    weight: np.ndarray  # (K, C) float32
    bias: np.ndarray  # (K,) float32
    label: str
    class_names: list[str]


def write_head(path: Path, head: Head) -> None:
    """Atomically write `head` as safetensors (`weight`, `bias`, metadata `label`, `class_names`)."""
    w_KC = np.ascontiguousarray(head.weight, dtype="<f4")
    b_K = np.ascontiguousarray(head.bias, dtype="<f4")
    if w_KC.ndim != 2 or b_K.shape != (w_KC.shape[0],):
        raise CacheInputError(f"head weight must be (K, C) and bias (K,), got {w_KC.shape} and {b_K.shape}")
    if w_KC.shape[0] > 1 and len(head.class_names) != w_KC.shape[0]:
        raise CacheInputError(f"{w_KC.shape[0]} head outputs but {len(head.class_names)} class names")
    header = {
        "__metadata__": {"label": str(head.label), "class_names": json.dumps(list(head.class_names))},
        "weight": {"dtype": "F32", "shape": list(w_KC.shape), "data_offsets": [0, w_KC.nbytes]},
        "bias": {"dtype": "F32", "shape": list(b_K.shape), "data_offsets": [w_KC.nbytes, w_KC.nbytes + b_K.nbytes]},
    }
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    atomic_write_bytes(path, struct.pack("<Q", len(text)) + text + w_KC.tobytes() + b_K.tobytes())


def read_head(path: Path) -> Head:
    """Read a head written by `write_head` (or by the `safetensors` package)."""
    data = path.read_bytes()
    try:
        (n,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8:8 + n])
        body = memoryview(data)[8 + n:]
        arrays = {}
        for name in ("weight", "bias"):
            spec = header[name]
            begin, end = spec["data_offsets"]
            arrays[name] = np.frombuffer(body[begin:end], dtype=_DTYPES[spec["dtype"]]).reshape(spec["shape"])
        meta = header.get("__metadata__", {})
        return Head(arrays["weight"].astype(np.float32), arrays["bias"].astype(np.float32),
                    meta.get("label", ""), json.loads(meta.get("class_names", "[]")))
    except (KeyError, ValueError, TypeError, struct.error) as e:
        raise CacheChecksumError(f"{path} is not a valid safetensors head file ({e}); save the head again") from None
