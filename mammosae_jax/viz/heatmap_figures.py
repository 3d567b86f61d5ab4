"""Figures of latent heatmaps, predicted and ground-truth boxes, and patch galleries.

Colour code everywhere: ground truth in lime (solid), predicted boxes in cyan (dashed), the
heatmap in ``inferno`` drawn over the grey mammogram with opacity growing with the activation
(zero activation is fully transparent). Colour scales are in activation units, never rescaled.
Figures use ``matplotlib.figure.Figure`` directly (no pyplot state) and are written atomically.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from PIL import Image

from mammosae_jax.viz.figures import save_figure

GT_COLOUR = "#39ff14"
PRED_COLOUR = "#00e5ff"
CMAP = "inferno"
DPI = 100
PANEL_HEIGHT_IN = 5.5
DISPLAY_HEIGHT = 600
"""Images and heatmaps are drawn from copies at most this many pixels high (panels are 550 px)."""


def read_grey(path: str | os.PathLike) -> np.ndarray:
    """A PNG as float32 (H, W) in [0, 1] (8- or 16-bit grey, or RGB converted to grey)."""
    with Image.open(path) as img:
        arr = np.asarray(img.convert("L") if img.mode not in ("L", "I;16", "I") else img)
    arr = arr.astype(np.float32)
    lo, hi = float(arr.min()), float(arr.max())
    return (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)


def image_hw(path: str | os.PathLike) -> tuple[int, int]:
    """(height, width) of an image file, from its header."""
    with Image.open(path) as img:
        return img.height, img.width


def _draw_boxes(ax, boxes: np.ndarray, colour: str, dashed: bool, width: float = 1.6) -> None:
    for x1, y1, x2, y2 in np.asarray(boxes, float).reshape(-1, 4):
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=colour,
                               linewidth=width, linestyle="--" if dashed else "-"))


def _overlay(ax, grey: np.ndarray, heat: np.ndarray, vmax: float, extent: tuple | None = None):
    ax.imshow(grey, cmap="gray", vmin=0, vmax=1, extent=extent)
    scale = max(vmax, 1e-12)
    alpha = np.clip(heat / scale, 0, 1) * 0.75
    return ax.imshow(heat, cmap=CMAP, vmin=0, vmax=scale, alpha=alpha, extent=extent)


def _bare(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def image_latent_figsize(image_hw_: tuple[int, int]) -> tuple[float, float]:
    """Figure size (inches) of ``plot_image_latent`` for an image of that (height, width)."""
    h, w = image_hw_
    panel_w = PANEL_HEIGHT_IN * w / h
    return 3 * panel_w + 1.6, PANEL_HEIGHT_IN + 1.15


def display_hw(image_hw_: tuple[int, int], height: int = DISPLAY_HEIGHT) -> tuple[int, int]:
    """Size of the display copy of an image: at most ``height`` rows, same aspect."""
    h, w = image_hw_
    if h <= height:
        return h, w
    return height, max(1, round(w * height / h))


def shrink_grey(grey: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """An image resized (area-averaged) to (height, width) for display."""
    if grey.shape == tuple(size_hw):
        return grey
    img = Image.fromarray(grey.astype(np.float32), mode="F")
    return np.asarray(img.resize((size_hw[1], size_hw[0]), Image.Resampling.BOX), np.float32)


def plot_image_latent(path: str | os.PathLike, grey: np.ndarray, heat: np.ndarray, image_hw_: tuple[int, int],
                      gt_boxes: np.ndarray, pred_boxes: np.ndarray, *, latent: int, image_name: str, label: str,
                      mean_act: float, max_act: float, threshold: float, max_iou: float, hit: bool) -> None:
    """Three panels: image + ground truth; heatmap overlay + colourbar; heatmap + predicted boxes.

    ``grey`` and ``heat`` may be display copies (any size); boxes are in ``image_hw_`` pixels.
    """
    h, w = image_hw_
    extent = (0, w, h, 0)
    fig_w, fig_h = image_latent_figsize((h, w))
    fig = Figure(figsize=(fig_w, fig_h))
    panel_w = PANEL_HEIGHT_IN * w / h
    bottom, height = 0.2 / fig_h, PANEL_HEIGHT_IN / fig_h
    axes = [fig.add_axes((0.1 / fig_w + i * (panel_w + 0.2) / fig_w, bottom, panel_w / fig_w, height))
            for i in range(3)]
    cax = fig.add_axes(((0.1 + 3 * (panel_w + 0.2)) / fig_w, bottom, 0.18 / fig_w, height))
    vmax = max(max_act, 1e-12)

    axes[0].imshow(grey, cmap="gray", vmin=0, vmax=1, extent=extent)
    _draw_boxes(axes[0], gt_boxes, GT_COLOUR, dashed=False)
    axes[0].set_title(f"Mammogram\n{label.replace('_', ' ')}: {len(gt_boxes)} ground-truth box(es)", fontsize=9)

    im = _overlay(axes[1], grey, heat, vmax, extent=extent)
    axes[1].set_title(f"Latent {latent} activation over the image\nmax {max_act:.3g}, mean {mean_act:.3g}",
                      fontsize=9)
    fig.colorbar(im, cax=cax).set_label("latent activation (middle and right panels)", fontsize=8)

    axes[2].imshow(heat, cmap=CMAP, vmin=0, vmax=vmax, extent=extent)
    _draw_boxes(axes[2], gt_boxes, GT_COLOUR, dashed=False, width=1.2)
    _draw_boxes(axes[2], pred_boxes, PRED_COLOUR, dashed=True)
    where = "inside" if hit else "outside"
    axes[2].set_title(f"Predicted: activation > {threshold:g}·max ({len(pred_boxes)} box(es))\n"
                      f"best IoU {max_iou:.2f}; peak {where} ground truth", fontsize=9)
    axes[2].legend(handles=[Line2D([], [], color=GT_COLOUR, lw=2, label="ground truth"),
                            Line2D([], [], color=PRED_COLOUR, lw=2, ls="--", label="predicted")],
                   loc="best", fontsize=7, framealpha=0.7)
    for ax in axes:
        _bare(ax)
    fig.suptitle(f"Latent {latent} on {image_name}", fontsize=11, y=1 - 0.12 / fig_h, va="top")
    save_figure(fig, path, dpi=DPI)


class GridView(NamedTuple):
    """One image column of the summary grid."""

    name: str
    image_hw: tuple[int, int]  # full PNG size; boxes are in its pixel coordinates
    grey: np.ndarray  # the image, possibly downsized for display
    heats_L: list[np.ndarray]  # one heatmap per latent, same size as ``grey``
    gt_boxes: np.ndarray
    pred_boxes_L: list[np.ndarray]


def plot_summary_grid(path: str | os.PathLike, views: Sequence[GridView], latents: Sequence[int],
                      ious_LI: np.ndarray, hits_LI: np.ndarray, *, label: str, threshold: float) -> None:
    """Top latents (rows) x images (columns): overlay, ground truth and predicted boxes per cell.

    Each row shares one colour scale (0 to the row's max activation, given in the row label).
    """
    n_l, n_i = len(latents), len(views)
    h, w = views[0].image_hw
    cell_h = 2.4
    cell_w = cell_h * w / h
    fig_w, fig_h = max(n_i * (cell_w + 0.08) + 1.2, 5.0), n_l * (cell_h + 0.3) + 1.0
    fig = Figure(figsize=(fig_w, fig_h))
    axes = fig.subplots(n_l, n_i, squeeze=False)
    for li, latent in enumerate(latents):
        vmax = max(float(np.max(v.heats_L[li])) for v in views)
        for ii, view in enumerate(views):
            ax = axes[li, ii]
            vh, vw = view.image_hw
            _overlay(ax, view.grey, view.heats_L[li], vmax, extent=(0, vw, vh, 0))
            _draw_boxes(ax, view.gt_boxes, GT_COLOUR, dashed=False, width=1.0)
            _draw_boxes(ax, view.pred_boxes_L[li], PRED_COLOUR, dashed=True, width=1.0)
            ax.set_title(f"IoU {ious_LI[li, ii]:.2f} · {'hit' if hits_LI[li, ii] else 'miss'}", fontsize=7, pad=2)
            _bare(ax)
            if ii == 0:
                ax.set_ylabel(f"latent {latent}\n(colour max {vmax:.3g})", fontsize=8)
            if li == 0:
                ax.set_xlabel(short_name(view.name), fontsize=6)
                ax.xaxis.set_label_position("top")
    fig.suptitle(f"{label.replace('_', ' ')}: latents (rows) on ground-truth images (columns)\n"
                 f"lime = ground truth; cyan dashed = activation > {threshold:g}·max\n"
                 f"above each cell: best IoU; hit = activation peak inside a ground-truth box",
                 fontsize=9, y=1 - 0.06 / fig_h, va="top")
    fig.subplots_adjust(left=1.0 / fig_w, right=1 - 0.2 / fig_w, bottom=0.1 / fig_h, top=1 - 0.85 / fig_h,
                        wspace=0.05, hspace=0.12)
    save_figure(fig, path, dpi=DPI)


def plot_gallery(path: str | os.PathLike, crops: Sequence[np.ndarray], cells: Sequence[tuple[float, ...]],
                 values: Sequence[float], captions: Sequence[str], *, latent: int, n_scanned: int,
                 columns: int = 8) -> None:
    """Grid of the top activating patches of one latent, best first.

    ``cells`` are the peak grid cell's footprint in crop coordinates, outlined in cyan;
    ``captions`` go under each patch (image, split, label).
    """
    n = len(crops)
    cols = max(1, min(columns, n))
    rows = int(np.ceil(n / cols)) if n else 1
    fig = Figure(figsize=(cols * 1.9 + 0.2, rows * 2.3 + 0.6))
    axes = fig.subplots(rows, cols, squeeze=False)
    for k, ax in enumerate(axes.ravel()):
        _bare(ax)
        if k >= n:
            ax.set_axis_off()
            continue
        ax.imshow(crops[k], cmap="gray", vmin=0, vmax=1)
        _draw_boxes(ax, np.asarray([cells[k]]), PRED_COLOUR, dashed=False, width=1.2)
        ax.set_title(f"#{k + 1}  max z = {values[k]:.3g}", fontsize=8, pad=2)
        ax.set_xlabel(captions[k], fontsize=6, labelpad=1)
    if n == 0:
        axes[0, 0].text(0.5, 0.5, "never fires", ha="center", va="center", transform=axes[0, 0].transAxes)
    fig.suptitle(f"Latent {latent}: the {n} images where it peaks highest (of {n_scanned} cached)\n"
                 f"cyan square = the feature-grid cell of the peak", fontsize=9, y=1 - 0.08 / fig.get_figheight(),
                 va="top")
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.25 / fig.get_figheight(), top=1 - 0.6 / fig.get_figheight(),
                        wspace=0.08, hspace=0.35)
    save_figure(fig, path, dpi=DPI)


def short_name(name: str, n: int = 12) -> str:
    """An image id without ``.png``, cut to ``n`` characters."""
    stem = Path(str(name)).stem
    return stem if len(stem) <= n else stem[:n] + "…"
