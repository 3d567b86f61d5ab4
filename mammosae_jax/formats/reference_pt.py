"""The published Mammo-SAE PyTorch checkpoint (``sparse_autoencoder_final.pt``), SPEC §3.

A bare float32 state_dict whose tensors all carry a leading component axis of size 1:

=====================================  ====================  ==========================
key                                    shape                 our array
=====================================  ====================  ==========================
``tied_bias``                          (1, d_in)             ``b_dec``
``pre_encoder_bias._bias_reference``   (1, d_in)             alias of ``tied_bias``
``encoder._weight``                    (1, n, d_in)          ``W_enc.T``
``encoder._bias``                      (1, n)                ``b_enc``
``decoder._weight``                    (1, d_in, n)          ``W_dec.T`` (unit columns)
``post_decoder_bias._bias_reference``  (1, d_in)             alias of ``tied_bias``
=====================================  ====================  ==========================

PyTorch is imported only inside these functions, and files are read with
``torch.load(weights_only=True, map_location="cpu")`` only: a file that needs anything but
tensors to unpickle is refused, never executed.
"""
from __future__ import annotations

import os
import pickle
import re
import warnings
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from mammosae_jax.formats.common import FormatError, SAEWeights, atomic_path, warn_if_not_unit_norm

TIED_BIAS = "tied_bias"
PRE_ALIAS = "pre_encoder_bias._bias_reference"
POST_ALIAS = "post_decoder_bias._bias_reference"
ENC_W = "encoder._weight"
ENC_B = "encoder._bias"
DEC_W = "decoder._weight"
#: The six keys, in the reference module's state_dict order.
REFERENCE_KEYS = (TIED_BIAS, PRE_ALIAS, ENC_W, ENC_B, DEC_W, POST_ALIAS)
ALIAS_KEYS = (PRE_ALIAS, POST_ALIAS)
REQUIRED_KEYS = (TIED_BIAS, ENC_W, ENC_B, DEC_W)


def _import_torch() -> Any:
    try:
        import torch
    except ImportError as e:
        raise FormatError(
            "the reference .pt format needs PyTorch, which is not importable here "
            f"({e}); install it (`pip install torch`, the CPU build is enough) or use .safetensors"
        ) from None
    return torch


def _check_keys(keys: set[str], source: str) -> None:
    missing = [k for k in REQUIRED_KEYS if k not in keys]
    if missing:
        raise FormatError(f"{source}: missing key(s) {', '.join(map(repr, missing))}")
    unexpected = sorted(keys - set(REFERENCE_KEYS))
    if unexpected:
        raise FormatError(
            f"{source}: unexpected key(s) {', '.join(map(repr, unexpected))}; "
            f"the reference layout has exactly {', '.join(REFERENCE_KEYS)}"
        )
    present = [k for k in ALIAS_KEYS if k in keys]
    if len(present) == 1:
        absent = next(k for k in ALIAS_KEYS if k not in keys)
        raise FormatError(f"{source}: missing key {absent!r} (alias keys come both or neither; {present[0]!r} is present)")


def weights_from_state_dict(state: Mapping[str, Any], source: str = "state_dict") -> SAEWeights:
    """Validate a reference-layout state_dict and convert it to our layout (float32 numpy)."""
    torch = _import_torch()
    if not isinstance(state, Mapping):
        raise FormatError(f"{source}: expected a bare state_dict (a dict of tensors), got {type(state).__name__}")
    keys = set(state)
    non_str = [k for k in keys if not isinstance(k, str)]
    if non_str:
        raise FormatError(f"{source}: state_dict keys must be strings, got {non_str[0]!r}")
    _check_keys(keys, source)
    for k in sorted(keys):
        t = state[k]
        if not isinstance(t, torch.Tensor):
            raise FormatError(f"{source}: key {k!r} holds a {type(t).__name__}, expected a tensor")
        if not t.is_floating_point():
            raise FormatError(f"{source}: key {k!r} has dtype {t.dtype}, expected float32")

    tied = state[TIED_BIAS]
    if tied.ndim != 2 or tied.shape[0] != 1:
        raise FormatError(f"{source}: key {TIED_BIAS!r} has shape {tuple(tied.shape)}, expected (1, d_in)")
    enc_b = state[ENC_B]
    if enc_b.ndim != 2 or enc_b.shape[0] != 1:
        raise FormatError(f"{source}: key {ENC_B!r} has shape {tuple(enc_b.shape)}, expected (1, n_latents)")
    d_in, n = int(tied.shape[1]), int(enc_b.shape[1])
    expected = {
        ENC_W: ((1, n, d_in), "(1, n_latents, d_in)"),
        DEC_W: ((1, d_in, n), "(1, d_in, n_latents)"),
        PRE_ALIAS: ((1, d_in), "(1, d_in)"),
        POST_ALIAS: ((1, d_in), "(1, d_in)"),
    }
    for k, (shape, names) in expected.items():
        if k in state and tuple(state[k].shape) != shape:
            raise FormatError(
                f"{source}: key {k!r} has shape {tuple(state[k].shape)}, expected {shape} = {names} "
                f"(d_in={d_in} from {TIED_BIAS!r}, n_latents={n} from {ENC_B!r})"
            )
    if not bool(torch.isfinite(tied).all()):
        raise FormatError(f"{source}: key {TIED_BIAS!r} contains NaN or infinite values")
    for k in ALIAS_KEYS:
        if k in state and not torch.equal(state[k], tied):
            diff = float((state[k].double() - tied.double()).abs().max())
            raise FormatError(f"{source}: key {k!r} differs from {TIED_BIAS!r} (max abs difference {diff:.3g}); they must be the same tensor")

    def as_np(k: str, transpose: bool = False) -> np.ndarray:
        t = state[k].detach().to("cpu")[0]
        if t.dtype != torch.float32:
            warnings.warn(f"{source}: key {k!r} is {t.dtype}; converting to float32", UserWarning, stacklevel=3)
            t = t.float()
        a = (t.T if transpose else t).contiguous().numpy()  # torch's transposing copy is the fast one
        if not np.isfinite(a).all():
            raise FormatError(f"{source}: key {k!r} contains NaN or infinite values")
        return a

    w = SAEWeights(W_enc=as_np(ENC_W, transpose=True), b_enc=as_np(ENC_B),
                   W_dec=as_np(DEC_W, transpose=True), b_dec=as_np(TIED_BIAS))
    warn_if_not_unit_norm(w.W_dec, source)
    return w


def state_dict_from_weights(w: SAEWeights) -> dict[str, Any]:
    """Our layout -> the reference state_dict: six keys, component axis, aliases = ``tied_bias``."""
    torch = _import_torch()

    def t(a: np.ndarray, transpose: bool = False) -> Any:  # float32 tensor with its own compact storage
        a = np.asarray(a, dtype=np.float32)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # read-only source: we only read it
            src = torch.from_numpy(a)
            return (src.T.contiguous() if transpose else src.clone())[None]

    tied_1D = t(w.b_dec)
    return {
        TIED_BIAS: tied_1D,
        PRE_ALIAS: tied_1D,  # the same tensor, as in the reference module
        ENC_W: t(w.W_enc, transpose=True),
        ENC_B: t(w.b_enc),
        DEC_W: t(w.W_dec, transpose=True),
        POST_ALIAS: tied_1D,
    }


def _refusal_reason(message: str) -> str:
    m = re.search(r"(Unsupported global: [^\n]*|Trying to load unsupported GLOBAL [^\n]*|Unsupported operand [^\n]*)", message)
    return m.group(1).strip().rstrip(".") if m else "it holds objects other than tensors"


def read_reference_pt(path: str | os.PathLike) -> SAEWeights:
    """Load a reference ``.pt`` state_dict safely and return our-layout weights."""
    torch = _import_torch()
    path = Path(path)
    if not path.is_file():
        raise FormatError(f"{path}: no such file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # torch's pickle-protocol chatter
            state = torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as e:
        raise FormatError(
            f"{path}: refused to unpickle: {_refusal_reason(str(e))} (only tensors are loaded, "
            "with torch.load(weights_only=True); this is not a bare state_dict of tensors)"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise FormatError(f"{path}: not a readable PyTorch checkpoint (truncated or corrupt?): {first}") from None
    return weights_from_state_dict(state, source=str(path))


def write_reference_pt(path: str | os.PathLike, w: SAEWeights) -> None:
    """Write ``w`` as a reference state_dict that the reference code loads with strict=True."""
    torch = _import_torch()
    state = state_dict_from_weights(w)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            torch.save(state, f)
