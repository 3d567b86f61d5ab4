"""Checks of what a saved figure shows: the PNG's size, that it is not blank, and its axes."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

import mammosae_jax.viz.figures


def assert_png_drawn(path: Path, size: tuple[int, int] | None = None, min_colours: int = 16) -> np.ndarray:
    """The PNG at `path` has `size` (width, height) and is not blank; its RGB pixels."""
    with Image.open(path) as im:
        assert im.format == "PNG", f"{path} is {im.format}, not PNG"
        if size is not None:
            assert im.size == size, f"{path}: {im.size} pixels, expected {size}"
        rgb = np.asarray(im.convert("RGB"))
    drawn = (rgb != rgb[0, 0]).any(-1).mean()
    assert drawn > 0.02, f"{path} is blank ({drawn:.1%} of the pixels differ from the background)"
    assert len(np.unique(rgb.reshape(-1, 3), axis=0)) >= min_colours, f"{path} has almost no colours"
    return rgb


class SavedFigures:
    """Records every figure `mammosae_jax.viz.figures.save_figure` saves (see `record_figures`)."""

    def __init__(self) -> None:
        self.figures: dict[str, Any] = {}

    def axes_of(self, path: Path) -> list:
        return self.figures[str(Path(path).resolve())].axes


def record_figures(monkeypatch, *modules) -> SavedFigures:
    """Wrap `save_figure` in `modules` (those that imported it) so the tests can read the figures."""
    saved = SavedFigures()
    real = mammosae_jax.viz.figures.save_figure

    def save(fig, path, **kwargs):
        saved.figures[str(Path(path).resolve())] = fig
        real(fig, path, **kwargs)

    for module in modules:
        monkeypatch.setattr(module, "save_figure", save)
    return saved
