"""The concept head file (safetensors via `safetensors_np`, numpy only) and its reader."""
from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .errors import CacheChecksumError, CacheInputError
from .safetensors_np import read_tensors, write_tensors

class Head(NamedTuple):
    """A linear concept head on pooled features: logits = pooled @ weight.T + bias (the one Head type)."""

    weight: np.ndarray  # (K, C) float32
    bias: np.ndarray  # (K,) float32
    label: str
    class_names: tuple[str, ...]

    @property
    def n_outputs(self) -> int:
        return int(self.weight.shape[0])

    @property
    def dim(self) -> int:
        return int(self.weight.shape[1])


def write_head(path: Path, head: Head) -> None:
    """Atomically write `head` as safetensors (`weight`, `bias`, metadata `label`, `class_names`)."""
    w_KC = np.ascontiguousarray(head.weight, dtype="<f4")
    b_K = np.ascontiguousarray(head.bias, dtype="<f4")
    if w_KC.ndim != 2 or b_K.shape != (w_KC.shape[0],):
        raise CacheInputError(f"head weight must be (K, C) and bias (K,), got {w_KC.shape} and {b_K.shape}")
    if w_KC.shape[0] > 1 and len(head.class_names) != w_KC.shape[0]:
        raise CacheInputError(f"{w_KC.shape[0]} head outputs but {len(head.class_names)} class names")
    write_tensors(path, {"weight": w_KC, "bias": b_K},
                  {"label": str(head.label), "class_names": json.dumps(list(head.class_names))})


def read_head(path: Path) -> Head:
    """Read a head written by `write_head` (or by the `safetensors` package)."""
    try:
        tensors, meta = read_tensors(path)
        return Head(tensors["weight"].astype(np.float32), tensors["bias"].astype(np.float32),
                    meta.get("label", ""), tuple(json.loads(meta.get("class_names", "[]"))))
    except (KeyError, ValueError, TypeError) as e:
        raise CacheChecksumError(f"{path} is not a valid safetensors head file ({e}); save the head again") from None
