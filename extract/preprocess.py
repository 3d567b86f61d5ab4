"""PNG -> encoder input, exactly as the reference evaluates (SPEC §2), plus its train augmentation.

Evaluation: 8-bit grey PNG (no resize) -> float32 -> `x -= x.min(); x /= x.max()` ->
`(x - 0.3089279) / 0.25053555408335154` -> 3 identical channels, CHW.

`augment_grey` reproduces the reference's training-split augmentation (albumentations in the
reference: horizontal flip, vertical flip, Affine(rotate=20, translate_percent=0.1, scale=0.8-1.2,
shear=20), ElasticTransform(alpha=10, sigma=15), each with p=0.5), reimplemented with numpy/scipy/
torch and seeded per image so that any worker or rank draws the same transform for an image.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from scipy.ndimage import gaussian_filter

MEAN = 0.3089279
STD = 0.25053555408335154


class ImageError(Exception):
    """An input image is missing, unreadable or has the wrong size; the message names the file."""


def read_grey(path: str | os.PathLike, expected_hw: tuple[int, int] | None = None) -> np.ndarray:
    """Decode a grey PNG to a float32 (H, W) array of its raw values; check its size."""
    if not os.path.isfile(path):
        raise ImageError(f"missing PNG: {path}")
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode not in ("L", "I;16", "I", "F"):
                img = img.convert("L")
            grey_HW = np.asarray(img, dtype=np.float32)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"corrupt PNG {path}: {exc}") from None
    if expected_hw is not None and grey_HW.shape != tuple(expected_hw):
        h, w = grey_HW.shape
        raise ImageError(f"image {path} is {h}x{w} (HxW) but the data set's images are "
                         f"{expected_hw[0]}x{expected_hw[1]}; all images must share one size")
    return grey_HW


def normalise(grey_HW: np.ndarray) -> np.ndarray:
    """Per-image min-max to [0, 1], then the Mammo-CLIP mean/std; returns (3, H, W) float32.

    A constant image (max == min) maps to 0 before the mean/std step instead of NaN.
    """
    x = grey_HW.astype(np.float32, copy=True)
    x -= x.min()
    peak = x.max()
    if peak > 0:
        x /= peak
    x = (x - np.float32(MEAN)) / np.float32(STD)
    return np.broadcast_to(x, (3, *x.shape)).copy()


@dataclass(frozen=True)
class AugmentConfig:
    """The reference's training augmentation (probabilities and ranges)."""

    p_hflip: float = 0.5
    p_vflip: float = 0.5
    p_affine: float = 0.5
    rotate_deg: float = 20.0
    translate_frac: float = 0.1
    scale: tuple[float, float] = (0.8, 1.2)
    shear_deg: float = 20.0
    p_elastic: float = 0.5
    elastic_alpha: float = 10.0
    elastic_sigma: float = 15.0


def _affine_inverse(rng: np.random.Generator, cfg: AugmentConfig, h: int, w: int) -> np.ndarray:
    """2x3 matrix mapping output pixel (x, y) to input pixel, for a random affine about the centre."""
    theta = math.radians(rng.uniform(-cfg.rotate_deg, cfg.rotate_deg))
    shear = math.radians(rng.uniform(-cfg.shear_deg, cfg.shear_deg))
    s = rng.uniform(*cfg.scale)
    tx, ty = rng.uniform(-cfg.translate_frac, cfg.translate_frac, size=2) * (w, h)
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    forward = rot @ np.array([[1.0, math.tan(shear)], [0.0, 1.0]]) * s
    inverse = np.linalg.inv(forward)
    centre = np.array([(w - 1) / 2, (h - 1) / 2])
    offset = centre - inverse @ (centre + np.array([tx, ty]))
    return np.concatenate([inverse, offset[:, None]], axis=1)


def augment_grey(grey_HW: np.ndarray, seed: int, image_index: int,
                 cfg: AugmentConfig = AugmentConfig()) -> np.ndarray:
    """Seeded random flips, affine and elastic warp of one grey image (zero fill outside)."""
    rng = np.random.default_rng([seed, image_index])
    h, w = grey_HW.shape
    x = grey_HW
    if rng.random() < cfg.p_hflip:
        x = x[:, ::-1]
    if rng.random() < cfg.p_vflip:
        x = x[::-1, :]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    warped = False
    if rng.random() < cfg.p_affine:
        m = _affine_inverse(rng, cfg, h, w)
        xs, ys = m[0, 0] * xs + m[0, 1] * ys + m[0, 2], m[1, 0] * xs + m[1, 1] * ys + m[1, 2]
        warped = True
    if rng.random() < cfg.p_elastic:
        dx = gaussian_filter(rng.uniform(-1, 1, size=(h, w)), cfg.elastic_sigma) * cfg.elastic_alpha
        dy = gaussian_filter(rng.uniform(-1, 1, size=(h, w)), cfg.elastic_sigma) * cfg.elastic_alpha
        xs, ys = xs + dx, ys + dy
        warped = True
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not warped:
        return x
    # grid_sample with align_corners=False: pixel index i -> normalised (2i + 1) / n - 1
    grid = np.stack([(2 * xs + 1) / w - 1, (2 * ys + 1) / h - 1], axis=-1).astype(np.float32)
    out = F.grid_sample(torch.from_numpy(x)[None, None], torch.from_numpy(grid)[None],
                        mode="bilinear", padding_mode="zeros", align_corners=False)
    return out[0, 0].numpy()


def load_model_input(path: str | os.PathLike, expected_hw: tuple[int, int] | None = None,
                     augment_seed: int | None = None, image_index: int = 0) -> np.ndarray:
    """PNG file -> (3, H, W) float32 encoder input; augmented when `augment_seed` is given."""
    grey_HW = read_grey(path, expected_hw)
    if augment_seed is not None:
        grey_HW = augment_grey(grey_HW, augment_seed, image_index)
    return normalise(grey_HW)
