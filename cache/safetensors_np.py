"""A minimal safetensors writer/reader in numpy + the standard library (no `safetensors` package).

Layout (the safetensors format): 8-byte little-endian header length, a JSON header mapping each
tensor name to {dtype, shape, data_offsets} plus `__metadata__` (string values only), then the raw
little-endian tensor bytes. Files written here load with the `safetensors` package and vice versa.
"""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import BinaryIO, Mapping

import numpy as np

from .atomic import write_chunks_atomic

DTYPES = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "F64": np.dtype("<f8"), "I64": np.dtype("<i8")}
_CODES = {v: k for k, v in DTYPES.items()}


class SafetensorsFormatError(ValueError):
    """Bytes that are not a safetensors file (or use a dtype this reader does not know)."""


def _layout(tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str]) -> tuple[bytes, list[np.ndarray]]:
    """The padded header and the arrays in file order: tensors sorted by name, header keys sorted,
    so the same tensors and metadata always give the same bytes."""
    header: dict = {"__metadata__": {str(k): str(v) for k, v in sorted(metadata.items())}}
    arrays, offset = [], 0
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        a = a.astype(a.dtype.newbyteorder("<"), copy=False)
        if a.dtype not in _CODES:
            raise SafetensorsFormatError(f"tensor {name!r}: dtype {a.dtype} is not supported")
        header[name] = {"dtype": _CODES[a.dtype], "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        arrays.append(a)
        offset += a.nbytes
    text = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text, arrays


def _chunks(tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str]) -> list:
    """The file's bytes in pieces: header (keys sorted, padded to 8), then each tensor's data (sorted by name)."""
    head, arrays = _layout(tensors, metadata)
    return [head, *(memoryview(a.reshape(-1)).cast("B") for a in arrays)]


def write_tensors(path: str | os.PathLike, tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str]) -> None:
    """Write a safetensors file atomically, streaming each array (no copy of the whole file in memory)."""
    write_chunks_atomic(Path(path), _chunks(tensors, metadata))


def write_stream(f: BinaryIO, tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str]) -> None:
    """Write the file's bytes (`_chunks`) to the open binary file ``f``, one array at a time."""
    for chunk in _chunks(tensors, metadata):
        f.write(chunk)


def read_tensors(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(tensors, metadata) of a safetensors file; `SafetensorsFormatError` if it is not one."""
    data = Path(path).read_bytes()
    try:
        (n,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8:8 + n])
        body = memoryview(data)[8 + n:]
        tensors = {}
        for name, spec in header.items():
            if name == "__metadata__":
                continue
            begin, end = spec["data_offsets"]
            tensors[name] = np.frombuffer(body[begin:end], dtype=DTYPES[spec["dtype"]]).reshape(spec["shape"]).copy()
        return tensors, dict(header.get("__metadata__") or {})
    except (KeyError, ValueError, TypeError, struct.error) as e:
        raise SafetensorsFormatError(f"{path} is not a valid safetensors file ({e})") from None
