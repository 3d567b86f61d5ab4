"""What the dashboard shows of every latent that fires, from one pass over the cache.

The pass is `viz.galleries.scan_cache` with every latent: per image the spatial mean (z̄) and max
of each latent, and each latent's top images by max activation with the grid cell of the peak.
From z̄ the rest is vectorised: firing frequency, mean activation, class means per concept
(`analysis.ranking.class_means` over the ranking's units), activation histograms, and the
single-latent attribution: the test AUROC of the concept head through the SAE with one latent
removed, for every firing latent at once (`analysis.interventions.fold_head`: removing latent j
moves image i's logit by ``-z̄_ij u_j``).
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mammosae_jax.analysis.concept_data import split_images, units
from mammosae_jax.analysis.heads import Head
from mammosae_jax.analysis.interventions import fold_head
from mammosae_jax.analysis.metrics import auroc
from mammosae_jax.analysis.ranking import class_means, unit_weights
from mammosae_jax.viz.galleries import LatentScan
from mammosae_jax.viz.heatmaps import latent_encoder, latent_maps

HIST_BINS = 16
ATTRIBUTION_CHUNK = 1024
"""Latents whose ablated logits are evaluated together (bounds memory at chunk × test units)."""


class Firing(NamedTuple):
    """The latents that fire on at least one position of the cache, and their statistics."""

    latents: np.ndarray  # [L] int64 latent indices, ascending
    frequency: np.ndarray  # [L] fraction of cache images on which the latent fires somewhere
    mean: np.ndarray  # [L] mean over cache images of the spatial-mean activation z̄
    max: np.ndarray  # [L] largest activation on any position
    hist_counts: np.ndarray  # [L, HIST_BINS] images per bin of z̄ over the images where it fires
    hist_max: np.ndarray  # [L] upper edge of the histogram (the largest z̄)


class TopImages(NamedTuple):
    """Per firing latent, its top images by max activation (-1 = unused slot) and their grids."""

    image: np.ndarray  # [L, T] cache image index
    value: np.ndarray  # [L, T] max activation on that image
    row: np.ndarray  # [L, T] grid row of the peak
    col: np.ndarray  # [L, T] grid column of the peak
    grids: np.ndarray  # [L, T, H, W] float32 activation grid of the latent on that image (0 if unused)


def all_latents_encoder(sae: Any):
    """Tokens (T, d_in) to every latent's activation (T, n) (`viz.heatmaps.latent_encoder`)."""
    return latent_encoder(sae, range(int(sae.config.n_latents)))


def firing_stats(scan: LatentScan) -> Firing:
    """Statistics of the latents whose max over the cache is above zero."""
    max_n = np.nanmax(scan.max_NL, axis=0)
    latents = np.flatnonzero(max_n > 0)
    z_NL = scan.mean_NL[:, latents].astype(np.float64)
    hist_max = z_NL.max(axis=0)
    # bin b of latent l holds the images with z̄ in (b, b+1] × hist_max / HIST_BINS
    bins_NL = np.clip(np.ceil(z_NL / hist_max * HIST_BINS).astype(np.int64) - 1, -1, HIST_BINS - 1)
    counts = np.zeros((len(latents), HIST_BINS), np.int64)
    rows, cols = np.nonzero(bins_NL >= 0)
    np.add.at(counts, (cols, bins_NL[rows, cols]), 1)
    return Firing(latents, (z_NL > 0).mean(axis=0), z_NL.mean(axis=0), max_n[latents], counts, hist_max)


def top_images(cache: Any, encode, scan: LatentScan, latents: np.ndarray, batch_size: int = 8,
               progress: bool = True) -> TopImages:
    """The top images of `latents` from the scan, with each latent's activation grid on them
    (`encode` from `all_latents_encoder`; the images read in batches, in cache order)."""
    from tqdm import tqdm

    top = scan.top
    image, value = top.image_LN[latents], top.value_LN[latents]
    used = (image >= 0) & (value > 0)
    image = np.where(used, image, -1)
    h, w = cache.grid
    grids = np.zeros((*image.shape, h, w), np.float32)
    wanted = np.unique(image[used])
    batches = cache.iter_images(batch_size, images=wanted)
    bar = tqdm(total=len(wanted), desc="grids of top images", unit="img", disable=not progress)
    try:
        for idx_B, maps_B in batches:
            for i, grid_nHW in zip(idx_B, latent_maps(encode, maps_B)):
                where_l, where_t = np.nonzero(image == i)
                grids[where_l, where_t] = grid_nHW[latents[where_l]]
            bar.update(len(idx_B))
    finally:
        batches.close()
        bar.close()
    return TopImages(image, np.where(used, value, 0.0), np.where(used, top.row_LN[latents], -1),
                     np.where(used, top.col_LN[latents], -1), grids)


def concept_class_means(cache: Any, scan: LatentScan, latents: np.ndarray, label: str,
                        split: str = "training", per: str = "row") -> np.ndarray:
    """``[2, L]`` mean z̄ of the class-0 and class-1 units of `split` (the ranking's defaults)."""
    images = split_images(cache, split)
    u = units(cache, label, images, per)
    weights = unit_weights(u.labels_U, u.image_pos_U, len(images), 2)
    return class_means(scan.mean_NL[images][:, latents], weights).means_Cn


class Attribution(NamedTuple):
    """The head's AUROC through the SAE, and with each latent removed alone."""

    sae_auroc: float
    ablated_auroc: np.ndarray  # [L]


@jax.jit
def _ablated_logits(zbar_NL: jax.Array, u_L: jax.Array, base_N: jax.Array) -> jax.Array:
    """``[L, N]`` logits with latent l removed: ``base - z̄_:l u_l``."""
    return base_N[None, :] - (zbar_NL * u_L[None, :]).T


def single_latent_attribution(cache: Any, sae: Any, scan: LatentScan, latents: np.ndarray, head: Head,
                              label: str, split: str = "test", per: str = "row") -> Attribution:
    """Test AUROC with every latent in `latents` removed alone (binary heads), error term dropped
    as in the intervention sweep's default."""
    if head.n_outputs != 1:
        raise ValueError(f"single-latent attribution needs a binary head; '{head.label}' has {head.n_outputs} outputs")
    images = split_images(cache, split)
    u = units(cache, label, images, per)
    folded = fold_head(sae.decode, int(sae.config.n_latents), head)
    zbar_Nn = jnp.asarray(scan.mean_NL[images])
    base_N = (zbar_Nn @ folded.u_nK + folded.c_K)[:, 0]
    sae_auroc = float(auroc(u.labels_U, np.asarray(base_N)[u.image_pos_U]))
    u_n = folded.u_nK[:, 0]
    out = np.zeros(len(latents), np.float64)
    for a in range(0, len(latents), ATTRIBUTION_CHUNK):
        chunk = jnp.asarray(latents[a:a + ATTRIBUTION_CHUNK])
        logits_LN = np.asarray(_ablated_logits(zbar_Nn[:, chunk], u_n[chunk], base_N))
        out[a:a + len(chunk)] = auroc(u.labels_U, logits_LN[:, u.image_pos_U])
    return Attribution(sae_auroc, out)
