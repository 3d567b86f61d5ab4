"""Checks an extraction makes before and while it works, and the fingerprint of its inputs.

The fingerprint is everything that decides what a cache holds besides the encoder and
preprocessing settings (already in the manifest): the checkpoint's bytes (sha256, not its file
name), the selected CSV rows, the split, the limit and the ordered image list. The writer
refuses to resume a cache whose fingerprint differs, field by field; `FeatureCache.verify()`
checks the stored ids and row table against it.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from cache.format import rows_digest, sha256_file
from cache.integrity import image_list_digest
from cache.write_support import rows_table

FINGERPRINT_VERSION = 1


def extraction_fingerprint(checkpoint: Path | None, split: str, limit: int | None, images: pd.DataFrame,
                           rows: pd.DataFrame) -> dict[str, Any]:
    """The manifest's `fingerprint` of one extraction (identical on every rank)."""
    return {"version": FINGERPRINT_VERSION,
            "checkpoint_sha256": None if checkpoint is None else sha256_file(checkpoint),
            "split": split, "limit": limit, "n_images": len(images),
            "images_sha256": image_list_digest(images["patient_id"].tolist(), images["image_id"].tolist(),
                                               images["split"].tolist()),
            "rows_sha256": rows_digest(rows_table(rows))}


def _blocked_by(path: Path) -> str | None:
    """Why files cannot be created under `path`: its first existing ancestor is a file or read-only."""
    for folder in (path, *path.parents):  # missing folders are created; the first existing one decides
        if folder.exists():
            if not folder.is_dir():
                return f"{folder} is a file"
            return None if os.access(folder, os.W_OK) else f"{folder} is not writable"
    return None


def output_folder_problem(out: Path) -> str | None:
    """Why `out` cannot be a cache folder (a file, under a file, read-only), or None."""
    if out.exists() and not out.is_dir():
        return f"--out {out} is an existing file, not a folder; choose another --out"
    return None if (why := _blocked_by(out)) is None else f"cannot write --out {out}: {why}"


def output_file_problem(dst: Path) -> str | None:
    """Why `dst` cannot be written as a file (a folder, under a file, read-only), or None."""
    if dst.is_dir():
        return f"{dst} is a folder; give the output file's name"
    return None if (why := _blocked_by(dst.parent)) is None else f"cannot write {dst}: {why}"


def warn_constant_images(x_BCHW: torch.Tensor, paths: list[Path], indices: list[int], warned: set[int]) -> None:
    """Print one `warning:` line per blank (constant) input image, naming it (on the main thread, per
    batch: one pass over channel 0, since the three channels are one grey image broadcast)."""
    low, high = torch.aminmax(x_BCHW[:, 0].flatten(1), dim=1)
    constant = (low == high).tolist()
    for i, is_constant in zip(indices, constant):
        if is_constant and i not in warned:
            warned.add(i)
            print(f"warning: {paths[i]} is a constant (blank) image; its features carry no image content",
                  file=sys.stderr)
