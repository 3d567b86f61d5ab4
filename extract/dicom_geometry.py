"""One mammogram's pixels -> the 8-bit, breast-cropped, resized PNG frame, and boxes with it.

The conversion follows Mammo-CLIP's VinDr script, step by step:

1. drop ``border`` (5) pixels on every side (scanner edge artefacts);
2. invert MONOCHROME1 (``max - x``) so that dense tissue is bright;
3. min-max scale to uint8: ``floor(255 * (x - min) / (max - min))``;
4. crop to the breast (rule below);
5. resize to ``out_height x out_width`` by exact area averaging (:func:`area_resize`: each
   output pixel is the mean of the input area it covers, fractional pixels weighted by their
   covered fraction, rounded to nearest), i.e. OpenCV's ``INTER_AREA`` that Mammo-CLIP used when
   shrinking. PIL's ``Resampling.BOX`` is not used: it weights each input pixel 0 or 1 by where
   its centre falls, which differs from the area average by up to ~37 grey levels at sharp edges
   (measured on the test phantom).

Breast rule (replaces Mammo-CLIP's "longest run of non-constant columns"): on a copy reduced by
an integer factor so that its longer side is at most ``analysis_side`` pixels (box averaging,
which also suppresses noise), threshold at ``min(Otsu, max_threshold)`` (Otsu separates the dark
background from tissue; the cap of 40/255, Mammo-CLIP's background level, keeps the faint skin
line inside), keep the largest 8-connected component (drops burnt-in labels and markers), take
its bounding box, map it back to full resolution and pad it by ``margin`` pixels plus the
reduction factor minus one (what the reduction may have shaved off), clipped to the image. A
component under ``min_area_fraction`` of the image, or a constant image, means "no breast found":
the whole image is kept and the record says so.

Coordinates are continuous pixel-edge coordinates: original pixel column ``i`` spans
``[i, i + 1)``. The crop box is stored in the original DICOM frame, so a finding box maps with
``x' = (x - crop_x0) * scale_x`` and ``y' = (y - crop_y0) * scale_y`` (then clipped to the PNG).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from PIL import Image
from scipy import sparse
from skimage.measure import label


@dataclass(frozen=True)
class CropConfig:
    """How an image is cropped and resized."""

    out_height: int = 1520  # PNG height (Mammo-CLIP: 1520)
    out_width: int = 912  # PNG width (Mammo-CLIP: 912)
    border: int = 5  # pixels dropped on every side before anything else
    margin: int = 4  # pixels of background kept around the breast's bounding box
    max_threshold: int = 40  # cap on the Otsu threshold (0-255)
    analysis_side: int = 1024  # longer side of the reduced copy the breast is found on
    min_area_fraction: float = 0.01  # smaller largest component: no breast found


class CropBox(NamedTuple):
    """A half-open region ``[x0, x1) x [y0, y1)`` in pixels (of the frame named where it is used)."""

    x0: int
    y0: int
    x1: int
    y1: int


class BreastRegion(NamedTuple):
    """The breast's padded bounding box in the frame it was searched in."""

    box: CropBox
    found: bool
    threshold: float  # the threshold used (NaN for a constant image)


class Converted(NamedTuple):
    """The PNG pixels and the crop that produced them."""

    image_HW: np.ndarray  # uint8, (out_height, out_width)
    crop: CropBox  # in the original DICOM frame
    breast_found: bool
    threshold: float
    scale_x: float  # output pixels per original pixel, horizontally
    scale_y: float


def to_uint8(pixels_HW: np.ndarray, *, monochrome1: bool) -> np.ndarray:
    """Invert MONOCHROME1, then min-max scale to uint8 (floor, as Mammo-CLIP). Constant -> 0.

    Integer pixels go through an exact integer lookup table over their value range; others
    (e.g. VOI LUT output) are scaled in float64.
    """
    lo, hi = pixels_HW.min(), pixels_HW.max()
    if hi == lo:
        return np.zeros(pixels_HW.shape, dtype=np.uint8)
    if np.issubdtype(pixels_HW.dtype, np.integer) and int(hi) - int(lo) <= 1 << 20:
        lo, hi = int(lo), int(hi)
        lut = (np.arange(hi - lo + 1, dtype=np.int64) * 255 // (hi - lo)).astype(np.uint8)
        if monochrome1:
            lut = lut[::-1]  # value v -> floor(255 * (hi - v) / (hi - lo))
        if np.issubdtype(pixels_HW.dtype, np.unsignedinteger):
            index = pixels_HW - pixels_HW.dtype.type(lo)  # stays unsigned: every value >= lo
        else:
            index = pixels_HW.astype(np.int64) - lo
        return lut[index]
    x_HW = pixels_HW.astype(np.float64)
    if monochrome1:
        np.subtract(float(hi), x_HW, out=x_HW)
    else:
        x_HW -= float(lo)
    x_HW *= 255.0 / (float(hi) - float(lo))
    return np.floor(x_HW).astype(np.uint8)


def otsu_threshold(img_HW: np.ndarray) -> float:
    """Otsu's threshold of a uint8 image: foreground is ``img > t``.

    Where several thresholds give the same (maximal) between-class variance, as on a clean
    phantom with an empty gap between background and tissue, the middle of that run is taken
    (``skimage.filters.threshold_otsu`` takes its first, just above the background).
    """
    hist = np.bincount(img_HW.ravel(), minlength=256).astype(np.float64)
    p = hist / hist.sum()
    omega = np.cumsum(p)  # weight of the class "<= t"
    mu = np.cumsum(p * np.arange(hist.size))
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mu[-1] * omega - mu) ** 2 / (omega * (1.0 - omega))
    between = np.nan_to_num(between, nan=-1.0, posinf=-1.0)
    best = np.flatnonzero(between >= between.max() * (1.0 - 1e-12))
    return (float(best[0]) + float(best[-1])) / 2.0


def find_breast(img_HW: np.ndarray, config: CropConfig) -> BreastRegion:
    """The padded bounding box of the largest bright component of a uint8 image (see module doc)."""
    height, width = img_HW.shape
    whole = CropBox(0, 0, width, height)
    if img_HW.min() == img_HW.max():
        return BreastRegion(whole, False, math.nan)
    factor = max(1, math.ceil(max(height, width) / config.analysis_side))
    small_hw = np.asarray(Image.fromarray(img_HW).reduce(factor)) if factor > 1 else img_HW
    if small_hw.min() == small_hw.max():
        return BreastRegion(whole, False, math.nan)
    threshold = min(otsu_threshold(small_hw), float(config.max_threshold))
    labels_hw = label(small_hw > threshold, connectivity=2)
    sizes = np.bincount(labels_hw.ravel())
    sizes[0] = 0
    biggest = int(np.argmax(sizes))
    if biggest == 0 or sizes[biggest] < config.min_area_fraction * labels_hw.size:
        return BreastRegion(whole, False, threshold)
    component_hw = labels_hw == biggest
    rows = np.flatnonzero(component_hw.any(axis=1))
    cols = np.flatnonzero(component_hw.any(axis=0))
    pad = config.margin + factor - 1
    box = CropBox(
        x0=max(0, int(cols[0]) * factor - pad),
        y0=max(0, int(rows[0]) * factor - pad),
        x1=min(width, (int(cols[-1]) + 1) * factor + pad),
        y1=min(height, (int(rows[-1]) + 1) * factor + pad),
    )
    return BreastRegion(box, True, threshold)


def area_weights(n_in: int, n_out: int) -> sparse.csr_array:
    """(n_out, n_in) matrix of area-average weights: each output pixel covers ``n_in / n_out``
    input pixels, and an input pixel weighs the part of it that the output pixel covers."""
    i = np.arange(n_out)
    lo = i * n_in / n_out
    hi = (i + 1) * n_in / n_out
    first = np.floor(lo).astype(np.int64)
    span = int(np.max(np.ceil(hi).astype(np.int64) - first))
    cols_OS = first[:, None] + np.arange(span)[None, :]
    covered_OS = np.minimum(hi[:, None], cols_OS + 1) - np.maximum(lo[:, None], cols_OS)
    weight_OS = np.clip(covered_OS, 0.0, None) * (n_out / n_in)
    keep_OS = (cols_OS < n_in) & (weight_OS > 0)
    rows_OS = np.broadcast_to(i[:, None], cols_OS.shape)
    return sparse.csr_array((weight_OS[keep_OS], (rows_OS[keep_OS], cols_OS[keep_OS])), shape=(n_out, n_in))


def area_resize(img_HW: np.ndarray, out_height: int, out_width: int) -> np.ndarray:
    """Resize a uint8 image by exact area averaging, rounded to nearest (ties to even)."""
    height, width = img_HW.shape
    rows_hW = area_weights(height, out_height) @ img_HW.astype(np.float64)
    out_hw = (area_weights(width, out_width) @ rows_hW.T).T
    return np.clip(np.rint(out_hw), 0, 255).astype(np.uint8)


def convert_pixels(pixels_HW: np.ndarray, *, monochrome1: bool, config: CropConfig) -> Converted:
    """Border crop, polarity, uint8, breast crop and area resize of one image."""
    height, width = pixels_HW.shape
    b = config.border
    if height <= 2 * b or width <= 2 * b:
        raise ValueError(f"image of {height}x{width} pixels is too small for a {b}-pixel border crop")
    img_HW = to_uint8(pixels_HW[b : height - b, b : width - b], monochrome1=monochrome1)
    region = find_breast(img_HW, config)
    inner = region.box
    crop_HW = img_HW[inner.y0 : inner.y1, inner.x0 : inner.x1]
    resized_HW = area_resize(crop_HW, config.out_height, config.out_width)
    crop = CropBox(inner.x0 + b, inner.y0 + b, inner.x1 + b, inner.y1 + b)
    return Converted(
        image_HW=resized_HW,
        crop=crop,
        breast_found=region.found,
        threshold=region.threshold,
        scale_x=config.out_width / (crop.x1 - crop.x0),
        scale_y=config.out_height / (crop.y1 - crop.y0),
    )


def map_boxes(boxes_N4: np.ndarray, *, origin_N2, scale_N2, size_N2) -> np.ndarray:
    """Map ``(xmin, ymin, xmax, ymax)`` boxes from the DICOM frame into the PNG frame, clipped.

    ``origin_N2`` is the crop's ``(x0, y0)``, ``scale_N2`` its ``(scale_x, scale_y)`` and
    ``size_N2`` the PNG's ``(width, height)``; each is one pair for every box or one per box.
    NaN coordinates (rows without a box) stay NaN.
    """
    boxes_N22 = np.asarray(boxes_N4, dtype=np.float64).reshape(-1, 2, 2)  # [(xmin, ymin), (xmax, ymax)]
    origin_N12 = np.asarray(origin_N2, dtype=np.float64).reshape(-1, 1, 2)
    scale_N12 = np.asarray(scale_N2, dtype=np.float64).reshape(-1, 1, 2)
    size_N12 = np.asarray(size_N2, dtype=np.float64).reshape(-1, 1, 2)
    mapped_N22 = np.clip((boxes_N22 - origin_N12) * scale_N12, 0.0, size_N12)
    return mapped_N22.reshape(-1, 4)
