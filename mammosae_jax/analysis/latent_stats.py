"""One streamed pass of an SAE over cached feature maps.

For each image it keeps only the spatial means: ``zbar`` (mean latent vector) and ``xbar`` (mean
feature vector, of the same float32 maps the SAE saw). Everything after the SAE's activation is
affine, so these two vectors determine every pooled quantity downstream exactly:
``mean_p decode(z_p) = decode(zbar)`` and the pooled error term is ``xbar - decode(zbar)``.
Reconstruction statistics (MSE, FVU, L0, firing counts) are accumulated along the way.

One jit-compiled function handles a fixed-size batch of images (the last batch is padded and
masked), so a whole split compiles once and never holds more than one batch of positions.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from mammosae_jax.models import sae as sae_lib


class LatentMeans(NamedTuple):
    """Per-image spatial means, in the order of ``images``."""

    images: np.ndarray  # [N] cache image indices
    zbar_Nn: np.ndarray  # [N, n_latents] float32
    xbar_NC: np.ndarray  # [N, C] float32


class ReconStats(NamedTuple):
    """Reconstruction quality over every position of the images."""

    mse: float  # mean over positions and dims of (x_hat - x)^2
    fvu: float  # sum (x_hat - x)^2 / sum (x - per-dim mean)^2
    l0: float  # mean number of active latents per position
    dead_fraction: float  # latents that never fire on these positions
    dense_fraction: float  # latents firing on more than dense_threshold of positions
    n_ever_active: int
    n_tokens: int
    dense_threshold: float


class _BatchOut(NamedTuple):
    zbar_Bn: jax.Array
    xbar_BC: jax.Array
    sq_err: jax.Array  # summed over valid positions and dims
    n_active: jax.Array  # summed over valid positions
    fires_n: jax.Array  # positions on which each latent fired
    mean_C: jax.Array  # per-dim mean of the valid positions
    m2_C: jax.Array  # per-dim sum of squared deviations from mean_C


@functools.lru_cache(maxsize=8)
def make_batch_fn(config: sae_lib.SAEConfig):
    """Jit-compiled ``(params, maps [B,H,W,C], valid [B]) -> _BatchOut`` for one SAE config.

    The params are an argument (not closed-over constants), so one compilation serves any
    weights and XLA never embeds a 128 MB decoder in the program; cached per (hashable) config.
    """

    @jax.jit
    def batch_fn(params, maps_BHWC, valid_B):
        b, h, w, c = maps_BHWC.shape
        x_TC = maps_BHWC.reshape(b * h * w, c)
        z_Tn = sae_lib.encode(config, params, x_TC).z
        xhat_TC = sae_lib.decode(config, params, z_Tn)
        valid_T = jnp.repeat(valid_B, h * w).astype(jnp.float32)
        n_valid = jnp.maximum(valid_T.sum(), 1.0)
        active_Tn = (z_Tn > 0).astype(jnp.float32)
        mean_C = (x_TC * valid_T[:, None]).sum(0) / n_valid
        m2_C = (((x_TC - mean_C) ** 2) * valid_T[:, None]).sum(0)
        return _BatchOut(
            zbar_Bn=z_Tn.reshape(b, h * w, -1).mean(1),
            xbar_BC=x_TC.reshape(b, h * w, c).mean(1),
            sq_err=(((xhat_TC - x_TC) ** 2).sum(1) * valid_T).sum(),
            n_active=(active_Tn.sum(1) * valid_T).sum(),
            fires_n=(active_Tn * valid_T[:, None]).sum(0),
            mean_C=mean_C,
            m2_C=m2_C,
        )

    return batch_fn


def stream_latent_means(
    cache,
    sae,
    images: np.ndarray | None = None,
    *,
    batch_size: int = 2,
    dense_threshold: float = 0.1,
    desc: str = "encoding",
) -> tuple[LatentMeans, ReconStats]:
    """Encode every position of ``images`` (default: all) once; keep per-image means and stats."""
    images = np.arange(len(cache)) if images is None else np.asarray(images, np.int64)
    n_latents = int(sae.config.n_latents)
    batch_fn = make_batch_fn(sae.config)
    zbar = np.zeros((len(images), n_latents), np.float32)
    xbar = np.zeros((len(images), cache.dim), np.float32)
    position = {int(i): k for k, i in enumerate(images)}
    fires = np.zeros(n_latents, np.float64)
    sq_err = n_active = 0.0
    n_tok = 0
    mean_C = np.zeros(cache.dim, np.float64)
    m2_C = np.zeros(cache.dim, np.float64)
    with tqdm(total=len(images), desc=desc, unit="img") as bar:
        for idx, maps in cache.iter_images(batch_size, images=images):
            b = len(idx)
            if b < batch_size:  # pad so that the compiled shape never changes
                maps = np.concatenate([maps, np.zeros((batch_size - b, *maps.shape[1:]), maps.dtype)])
            valid = np.arange(batch_size) < b
            out = jax.device_get(batch_fn(sae.params, jnp.asarray(maps, jnp.float32), jnp.asarray(valid)))
            rows = [position[int(i)] for i in idx]
            zbar[rows] = out.zbar_Bn[:b]
            xbar[rows] = out.xbar_BC[:b]
            sq_err += float(out.sq_err)
            n_active += float(out.n_active)
            fires += out.fires_n
            # Chan et al.'s parallel update of per-dim mean and sum of squared deviations.
            t_b = b * maps.shape[1] * maps.shape[2]
            delta = out.mean_C.astype(np.float64) - mean_C
            total = n_tok + t_b
            mean_C += delta * t_b / total
            m2_C += out.m2_C + delta**2 * n_tok * t_b / total
            n_tok = total
            bar.update(b)
    freq = fires / max(n_tok, 1)
    stats = ReconStats(
        mse=sq_err / max(n_tok * cache.dim, 1),
        fvu=sq_err / max(m2_C.sum(), np.finfo(np.float64).tiny),
        l0=n_active / max(n_tok, 1),
        dead_fraction=float((fires == 0).mean()),
        dense_fraction=float((freq > dense_threshold).mean()),
        n_ever_active=int((fires > 0).sum()),
        n_tokens=int(n_tok),
        dense_threshold=dense_threshold,
    )
    return LatentMeans(images, zbar, xbar), stats
