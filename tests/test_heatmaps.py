"""Heatmap upsampling equals PyTorch's bilinear (align_corners=False); latent maps keep positions."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mammosae_jax.viz.heatmaps import bilinear_weights, latent_maps, upsample_bilinear


def torch_bilinear(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    x = torch.from_numpy(maps.reshape(-1, 1, *maps.shape[-2:]).astype(np.float32))
    y = torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return y.numpy().reshape(*maps.shape[:-2], *size)


@pytest.mark.parametrize("in_hw,out_hw", [
    ((6, 4), (19, 13)),     # non-integer factors, as 48x29 -> 1520x912
    ((48, 29), (152, 91)),  # the real grid, a tenth of the PNG
    ((5, 3), (5, 3)),       # identity
    ((7, 9), (3, 4)),       # downsampling
    ((1, 1), (4, 6)),       # constant
])
def test_upsample_matches_torch(in_hw, out_hw):
    maps = np.random.default_rng(0).normal(size=(3, *in_hw)).astype(np.float32)
    ours = upsample_bilinear(maps, out_hw)
    assert ours.shape == (3, *out_hw) and ours.dtype == np.float32
    # torch places samples in float32 arithmetic, we in float64: agree to ~1e-6 of the range
    np.testing.assert_allclose(ours, torch_bilinear(maps, out_hw), rtol=0, atol=4e-6 * np.abs(maps).max())


def test_upsample_full_size_and_no_normalisation():
    grid = np.zeros((48, 29), np.float32)
    grid[10, 20] = 7.0
    heat = upsample_bilinear(grid, (1520, 912))
    assert heat.shape == (1520, 912)
    np.testing.assert_allclose(heat, torch_bilinear(grid, (1520, 912)), rtol=0, atol=4e-6 * 7.0)
    assert 6.5 < heat.max() <= 7.0  # not rescaled to [0, 1]
    # the peak lies in the grid cell's footprint: rows 10*1520/48.., cols 20*912/29..
    r, c = np.unravel_index(np.argmax(heat), heat.shape)
    assert 10 * 1520 / 48 <= r < 11 * 1520 / 48 and 20 * 912 / 29 <= c < 21 * 912 / 29


def test_bilinear_weights_rows_sum_to_one():
    w = bilinear_weights(29, 912)
    np.testing.assert_allclose(w.sum(axis=1), 1.0)
    with pytest.raises(ValueError, match="sizes must be positive"):
        bilinear_weights(0, 3)


def test_latent_maps_keep_row_major_positions():
    rng = np.random.default_rng(3)
    fmaps = rng.normal(size=(2, 3, 5, 4)).astype(np.float32)   # (B, H, W, C)
    w_CL = rng.normal(size=(4, 2)).astype(np.float32)

    def encode(x_TC):
        return np.maximum(x_TC @ w_CL, 0)

    maps = latent_maps(encode, fmaps)
    assert maps.shape == (2, 2, 3, 5)
    for b in range(2):
        for h in range(3):
            for w in range(5):
                np.testing.assert_allclose(maps[b, :, h, w], np.maximum(fmaps[b, h, w] @ w_CL, 0),
                                           rtol=1e-6)
    np.testing.assert_allclose(latent_maps(encode, fmaps[1]), maps[1])


@pytest.mark.parametrize("variant", ["relu", "topk"])
def test_latent_encoder_equals_full_encode(variant):
    from mammosae_jax.viz.heatmaps import latent_encoder
    from mammosae_jax.models.sae_io import SAE
    from mammosae_jax.models.sae import SAEConfig

    rng = np.random.default_rng(1)
    w_dec = rng.normal(size=(40, 6)).astype(np.float32)
    w_dec /= np.linalg.norm(w_dec, axis=1, keepdims=True)
    params = {"W_enc": w_dec.T.copy(), "b_enc": (0.1 * rng.normal(size=40)).astype(np.float32), "W_dec": w_dec,
              "b_dec": (0.1 * rng.normal(size=6)).astype(np.float32)}
    sae = SAE(SAEConfig(d_in=6, n_latents=40, variant=variant, k=None if variant == "relu" else 3), params)
    x_TD = np.random.default_rng(2).normal(size=(30, 6)).astype(np.float32)
    chosen = [39, 0, 7, 7]
    full = np.asarray(sae.encode(x_TD))[:, chosen]
    np.testing.assert_allclose(latent_encoder(sae, chosen)(x_TD), full, rtol=1e-5, atol=1e-6)
    assert (full > 0).any()
    with pytest.raises(ValueError, match="latent 40 is out of range: the SAE has 40 latents"):
        latent_encoder(sae, [40])
