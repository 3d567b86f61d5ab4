"""Compact encodings of what the page embeds: image thumbnails as data URIs, activation grids as
base64 bytes, the heatmap colour map as a lookup table, and JSON that a ``<script>`` can hold."""
from __future__ import annotations

import base64
import io
import json
import math
from typing import Any

import numpy as np
from PIL import Image

from mammosae_jax.viz.heatmap_figures import CMAP, display_hw, read_grey, shrink_grey
from mammosae_jax.viz.localize_run import _clean

THUMB_HEIGHT = 256
"""Embedded copies of the images are at most this many pixels high."""
JPEG_QUALITY = 82


def thumbnail_uri(png_path: Any, height: int = THUMB_HEIGHT) -> tuple[str, tuple[int, int]]:
    """A grey JPEG data URI of the image (at most `height` high) and the original (height, width)."""
    grey = read_grey(png_path)
    h, w = grey.shape
    small = shrink_grey(grey, display_hw((h, w), height))
    buf = io.BytesIO()
    Image.fromarray(np.clip(np.round(small * 255), 0, 255).astype(np.uint8), mode="L").save(
        buf, format="JPEG", quality=JPEG_QUALITY)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii"), (h, w)


def quantise_grids(grids_LTHW: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Per latent: its grids as base64 uint8 (value = byte / 255 × scale) and the scale (its max)."""
    flat = grids_LTHW.reshape(len(grids_LTHW), -1).astype(np.float64)
    scale = flat.max(axis=1) if flat.size else np.zeros(len(grids_LTHW))
    safe = np.where(scale > 0, scale, 1.0)
    q = np.clip(np.round(flat / safe[:, None] * 255), 0, 255).astype(np.uint8)
    return [base64.b64encode(row.tobytes()).decode("ascii") for row in q], scale


def colour_lut(n: int = 256) -> list[list[int]]:
    """The heatmap colour map of the figures (`viz.heatmap_figures.CMAP`) as ``n`` RGB triples."""
    from matplotlib import colormaps

    rgb = colormaps[CMAP](np.linspace(0, 1, n))[:, :3]
    return np.round(rgb * 255).astype(int).tolist()


def script_json(obj: Any) -> str:
    """JSON safe inside ``<script type="application/json">`` (no ``</`` can close the tag)."""
    return json.dumps(_clean(obj), separators=(",", ":"), allow_nan=False).replace("</", "<\\/")


def rounded(a: np.ndarray, digits: int = 5) -> list:
    """A float array as a list rounded to `digits` significant digits (keeps the page small)."""
    a = np.asarray(a, np.float64)
    out = [float(f"{v:.{digits}g}") if math.isfinite(v) else None for v in a.reshape(-1)]
    return np.array(out, dtype=object).reshape(a.shape).tolist()
