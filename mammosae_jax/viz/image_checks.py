"""Checks of the PNGs a visualize run reads, made before it writes anything.

The heatmaps are drawn in the PNG frame the cache was extracted from (`preprocessing.input_hw`
in its manifest), so a PNG of another size is refused rather than scored in the wrong frame;
every PNG that will be drawn is decoded once up front, so a truncated file stops the run before
`images/` or `galleries/` exist instead of leaving them half written.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from PIL import Image


def png_size_problem(png: Path, hw: tuple[int, int], cache: Any) -> str | None:
    """Why `png` (of size `hw`) is not in the frame of `cache`'s features, or None."""
    expected = (cache.manifest.get("preprocessing") or {}).get("input_hw")
    if expected is None or tuple(expected) == tuple(hw):
        return None
    return (f"image {png} is {hw[0]}x{hw[1]} (HxW) but the cache was extracted from {expected[0]}x{expected[1]} "
            "images; give --images the PNG folder the cache was extracted from")


def unreadable_png(paths: Iterable[Path]) -> str | None:
    """The first PNG that cannot be decoded completely, with the reason, or None."""
    for path in dict.fromkeys(paths):
        try:
            with Image.open(path) as img:
                img.load()
        except (OSError, SyntaxError, ValueError) as e:
            return f"cannot read {path} ({e}); restore the PNG and rerun (nothing was written)"
    return None
