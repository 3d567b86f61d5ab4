"""The one figure-saving helper: atomic write (`cache.atomic.write_figure_atomic`), then close."""
from __future__ import annotations

import os
from typing import Any

from cache.atomic import write_figure_atomic


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 100) -> None:
    """Save a matplotlib figure atomically (format from the suffix) and release it."""
    import matplotlib.pyplot as plt

    write_figure_atomic(fig, path, dpi=dpi)
    plt.close(fig)
