"""Latent heatmaps: where on an image each SAE latent fires.

A cached feature map (H, W, C) (48 x 29 x 2048 for a 1520 x 912 mammogram) is encoded position by
position; the map of latent j is its (H, W) activation grid. The heatmap shown on the PNG is that
grid upsampled bilinearly with half-pixel centres, exactly as PyTorch's
``interpolate(mode="bilinear", align_corners=False)``, with no normalisation (SPEC §5).
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from mammosae_jax.models.sae_io import SAE

ELEMENTWISE_VARIANTS = ("relu",)
"""Variants whose latent j depends only on encoder column j: they can be encoded for a few
latents only (d_in x L work instead of d_in x n_latents per position)."""


def bilinear_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) interpolation matrix of 1-D linear resampling, half-pixel centres.

    Output sample i reads the input at ``src = (i + 0.5) * n_in / n_out - 0.5`` clamped below at 0
    (PyTorch's ``align_corners=False`` rule); the upper neighbour is clamped to the last sample.
    """
    if n_in < 1 or n_out < 1:
        raise ValueError(f"sizes must be positive, got n_in={n_in}, n_out={n_out}")
    src = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    lo = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = src - lo
    weights = np.zeros((n_out, n_in), np.float64)
    rows = np.arange(n_out)
    np.add.at(weights, (rows, lo), 1.0 - frac)
    np.add.at(weights, (rows, hi), frac)
    return weights


def upsample_bilinear(maps: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Upsample (..., H, W) maps to (..., out_h, out_w), float32, half-pixel bilinear."""
    maps = np.asarray(maps)
    if maps.ndim < 2:
        raise ValueError(f"maps must have at least 2 dimensions (H, W), got shape {maps.shape}")
    out_h, out_w = (int(s) for s in size_hw)
    rows_OH = bilinear_weights(maps.shape[-2], out_h)
    cols_PW = bilinear_weights(maps.shape[-1], out_w)
    out = np.einsum("oh,...hw,pw->...op", rows_OH, maps.astype(np.float64), cols_PW, optimize=True)
    return out.astype(np.float32)


def latent_encoder(sae: SAE, latents: Sequence[int]) -> Callable[[np.ndarray], np.ndarray]:
    """A function mapping tokens (T, d_in) to the chosen latents' activations (T, L), float32.

    For element-wise variants (ReLU) the SAE is sliced to the chosen latents first, so encoding
    costs d_in x L per token; other variants (top-k) encode all latents and select.
    """
    idx = np.asarray(latents, dtype=np.int64).reshape(-1)
    n_latents = int(sae.config.n_latents)
    if idx.size == 0:
        raise ValueError("no latents chosen")
    bad = idx[(idx < 0) | (idx >= n_latents)]
    if bad.size:
        raise ValueError(f"latent {int(bad[0])} is out of range: the SAE has {n_latents} latents")
    if sae.config.variant in ELEMENTWISE_VARIANTS:
        small = _slice_sae(sae, idx)
        return lambda x_TD: np.asarray(small.encode(np.asarray(x_TD, np.float32)), np.float32)
    return lambda x_TD: np.asarray(sae.encode(np.asarray(x_TD, np.float32)), np.float32)[:, idx]


def _slice_sae(sae: SAE, idx: np.ndarray) -> SAE:
    """The same SAE restricted to latents ``idx`` (encoder columns, biases, decoder rows)."""
    from mammosae_jax.models.sae_io import SAE as SAEClass

    params = {k: np.asarray(v) for k, v in sae.params.items()}
    params["W_enc"] = params["W_enc"][:, idx]
    params["b_enc"] = params["b_enc"][idx]
    params["W_dec"] = params["W_dec"][idx, :]
    n = int(idx.size)
    aux_k = sae.config.aux_k
    # k and aux_k do not act on element-wise variants; keep them valid for the smaller dictionary
    k = sae.config.k
    config = dataclasses.replace(sae.config, n_latents=n, k=None if k is None else min(k, n),
                                 aux_k=None if aux_k is None else min(aux_k, n))
    return SAEClass(config, params)


def latent_maps(encode: Callable[[np.ndarray], np.ndarray], maps_BHWC: np.ndarray) -> np.ndarray:
    """Activation grids (B, L, H, W) of a batch of feature maps (B, H, W, C) (or one (H, W, C))."""
    maps_BHWC = np.asarray(maps_BHWC, np.float32)
    single = maps_BHWC.ndim == 3
    if single:
        maps_BHWC = maps_BHWC[None]
    b, h, w, c = maps_BHWC.shape
    z_TL = encode(maps_BHWC.reshape(b * h * w, c))
    out_BLHW = z_TL.reshape(b, h, w, -1).transpose(0, 3, 1, 2)
    return out_BLHW[0] if single else out_BLHW
