"""One streamed pass over a feature cache: per-image latent statistics and top-N patch galleries.

For each chosen latent the pass keeps, per cache image, the spatial mean and the max of its
activation grid (what ranks images for localisation AP) and a running top-N of images by that
max, with the grid cell where it is reached. A gallery shows, for each of those N images, a
window of the PNG centred on that cell: what a user opens first to see what a latent means.
One patch per image, so a latent that fires strongly all over one image cannot fill its gallery.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, NamedTuple

import numpy as np
from tqdm import tqdm

from mammosae_jax.viz.heatmaps import latent_maps


class TopPatches(NamedTuple):
    """Top-N images per latent by max activation; unused slots (fewer than N images) hold -1."""

    value_LN: np.ndarray  # float32 max activation, descending along N (-inf in unused slots)
    image_LN: np.ndarray  # int64 cache image index
    row_LN: np.ndarray  # int64 grid row of the max
    col_LN: np.ndarray  # int64 grid column of the max


class LatentScan(NamedTuple):
    """What one pass over the cache learns about the chosen latents."""

    mean_NL: np.ndarray  # float32 spatial mean activation per cache image (z̄ of SPEC §4)
    max_NL: np.ndarray  # float32 spatial max activation per cache image
    top: TopPatches


def merge_top(top: TopPatches, value_BL: np.ndarray, image_B: np.ndarray, row_BL: np.ndarray,
              col_BL: np.ndarray) -> TopPatches:
    """Merge a batch (value / row / col (B, L), image (B,)) into the running top-N.

    Ties keep the earlier entry (already kept, then lower batch position).
    """
    n = top.value_LN.shape[1]
    values = np.concatenate([top.value_LN, value_BL.T], axis=1)
    images = np.concatenate([top.image_LN, np.broadcast_to(np.asarray(image_B)[None, :], value_BL.T.shape)], axis=1)
    rows = np.concatenate([top.row_LN, row_BL.T], axis=1)
    cols = np.concatenate([top.col_LN, col_BL.T], axis=1)
    keep = np.argsort(-values, axis=1, kind="stable")[:, :n]
    take = lambda a: np.take_along_axis(a, keep, axis=1)  # noqa: E731
    return TopPatches(take(values).astype(np.float32), take(images), take(rows), take(cols))


def empty_top(n_latents: int, top_n: int) -> TopPatches:
    """A top-N with every slot unused."""
    shape = (n_latents, top_n)
    return TopPatches(np.full(shape, -np.inf, np.float32), np.full(shape, -1, np.int64),
                      np.full(shape, -1, np.int64), np.full(shape, -1, np.int64))


def scan_batches(batches: Iterable[tuple[np.ndarray, np.ndarray]], encode: Callable[[np.ndarray], np.ndarray],
                 n_images: int, n_latents: int, top_n: int) -> LatentScan:
    """Consume ``(indices (b,), maps (b, H, W, C))`` batches; see ``LatentScan``.

    ``encode`` maps tokens (T, C) to the chosen latents (T, L) (``heatmaps.latent_encoder``).
    Images never seen keep NaN statistics.
    """
    mean_NL = np.full((n_images, n_latents), np.nan, np.float32)
    max_NL = np.full((n_images, n_latents), np.nan, np.float32)
    top = empty_top(n_latents, top_n)
    for indices, maps_BHWC in batches:
        idx_B = np.asarray(indices, np.int64)
        z_BLHW = latent_maps(encode, maps_BHWC)
        b, l, h, w = z_BLHW.shape
        flat_BLP = z_BLHW.reshape(b, l, h * w)
        mean_NL[idx_B] = flat_BLP.mean(axis=2)
        arg_BL = flat_BLP.argmax(axis=2)
        peak_BL = np.take_along_axis(flat_BLP, arg_BL[..., None], axis=2)[..., 0]
        max_NL[idx_B] = peak_BL
        top = merge_top(top, peak_BL, idx_B, arg_BL // w, arg_BL % w)
    return LatentScan(mean_NL, max_NL, top)


def scan_cache(cache: Any, encode: Callable[[np.ndarray], np.ndarray], n_latents: int, *, top_n: int = 16,
               batch_size: int = 8, progress: bool = True) -> LatentScan:
    """Stream every image of ``cache`` (``cache.iter_images``) through ``encode``."""
    n = len(cache)
    batches = cache.iter_images(batch_size)
    bar = tqdm(total=n, desc="scanning cache", unit="img", disable=not progress)

    def counted():
        for indices, maps in batches:
            yield indices, maps
            bar.update(len(indices))

    try:
        return scan_batches(counted(), encode, n, n_latents, top_n)
    finally:
        bar.close()


def patch_window(row: int, col: int, grid_hw: tuple[int, int], image_hw: tuple[int, int],
                 size: int) -> tuple[int, int, int, int]:
    """Pixel window ``(x1, y1, x2, y2)`` of side ``size`` centred on grid cell (row, col).

    The cell's centre maps to ``((col + 0.5) * W / grid_w, (row + 0.5) * H / grid_h)``; the
    window is shifted (not shrunk) to stay inside the image, unless the image is smaller.
    """
    gh, gw = grid_hw
    h, w = image_hw
    cx, cy = (col + 0.5) * w / gw, (row + 0.5) * h / gh
    sw, sh = min(size, w), min(size, h)
    x1 = int(np.clip(round(cx - sw / 2), 0, w - sw))
    y1 = int(np.clip(round(cy - sh / 2), 0, h - sh))
    return x1, y1, x1 + sw, y1 + sh


def cell_box(row: int, col: int, grid_hw: tuple[int, int], image_hw: tuple[int, int]) -> tuple[float, ...]:
    """Pixel footprint ``(x1, y1, x2, y2)`` of grid cell (row, col) on the image."""
    gh, gw = grid_hw
    h, w = image_hw
    return col * w / gw, row * h / gh, (col + 1) * w / gw, (row + 1) * h / gh
