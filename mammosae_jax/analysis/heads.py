"""Concept heads: linear maps on spatially pooled features, ``logit = W @ pooled + b``.

The type is `cache.head.Head` (one contract for the extractor's head and ours); this module adds
its validation, the logits and the error type of the JAX half.

File format (docs/CONTRACTS.md): safetensors with ``weight [K, C]`` and ``bias [K]`` (float32) and
string metadata ``label`` and ``class_names`` (a JSON list). Binary heads have ``K = 1`` (sigmoid),
density heads ``K = 4`` (softmax).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from cache.head import Head, write_head
from cache.safetensors_np import SafetensorsFormatError, read_tensors

__all__ = ["Head", "HeadError", "check_head_dim", "head_from_cache", "head_logits", "load_head", "make_head", "save_head"]


class HeadError(ValueError):
    """A head file that cannot be read, or a head that does not fit the features."""


def make_head(weight, bias, label: str, class_names) -> Head:
    """Validated ``Head`` from array-likes (``weight`` may be ``[C]`` for a binary head)."""
    w_KC = np.asarray(weight, dtype=np.float32)
    if w_KC.ndim == 1:
        w_KC = w_KC[None]
    b_K = np.asarray(bias, dtype=np.float32).reshape(-1)
    if w_KC.ndim != 2 or b_K.shape != (w_KC.shape[0],):
        raise HeadError(f"head weight must be [K, C] and bias [K]; got {w_KC.shape} and {b_K.shape}")
    names = tuple(str(c) for c in class_names)
    if w_KC.shape[0] == 1:  # binary: names of (negative, positive), or of the positive class only
        names = names or ("0", "1")
        if len(names) > 2:
            raise HeadError(f"a binary head (K=1) takes at most 2 class names, got {list(names)}")
    elif len(names) != w_KC.shape[0]:
        raise HeadError(f"a head with K={w_KC.shape[0]} outputs needs {w_KC.shape[0]} class names, got {list(names)}")
    return Head(w_KC, b_K, str(label), names)


def head_logits(head: Head, pooled_NC) -> np.ndarray:
    """Logits ``[N, K]`` of pooled features ``[N, C]`` (numpy or jax arrays)."""
    check_head_dim(head, int(np.shape(pooled_NC)[-1]))
    return pooled_NC @ head.weight.T + head.bias


def check_head_dim(head: Head, dim: int, what: str = "features") -> None:
    """Refuse a head whose input width differs from the features'."""
    if head.dim != dim:
        raise HeadError(f"head '{head.label}' expects {head.dim}-dim features but the {what} have {dim}")


def save_head(path: str | os.PathLike, head: Head) -> None:
    """Write ``head`` atomically as safetensors (the cache's head file format, `cache.head`)."""
    write_head(Path(path), head)


def load_head(path: str | os.PathLike) -> Head:
    """Read a head file written by ``save_head`` (or by the feature extractor)."""
    path = Path(path)
    if not path.is_file():
        raise HeadError(f"head file not found: {path}")
    try:
        tensors, meta = read_tensors(path)
    except (SafetensorsFormatError, OSError) as e:
        raise HeadError(f"cannot read head file {path}: {e}") from e
    missing = [k for k in ("weight", "bias") if k not in tensors] + [k for k in ("label", "class_names") if k not in meta]
    if missing:
        raise HeadError(f"head file {path} lacks {', '.join(missing)}")
    try:
        class_names = json.loads(meta["class_names"])
    except json.JSONDecodeError as e:
        raise HeadError(f"head file {path}: class_names metadata is not a JSON list") from e
    return make_head(tensors["weight"], tensors["bias"], meta["label"], class_names)


def head_from_cache(cache, label: str | None = None) -> Head:
    """The head stored in a feature cache (``cache.head()``), checked against ``label``."""
    stored = cache.head()
    if stored is None:
        raise HeadError("the cache stores no concept head; pass --head (fit one with python -m mammosae_jax.fit_head)")
    head = make_head(stored.weight, stored.bias, stored.label, stored.class_names)
    if label is not None and head.label != label:
        raise HeadError(f"the cache's head is for '{head.label}', not '{label}'")
    return head
