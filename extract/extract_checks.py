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


def output_folder_problem(out: Path) -> str | None:
    """Why `out` cannot be a cache folder (a file, or under a file), or None."""
    if out.exists() and not out.is_dir():
        return f"--out {out} is an existing file, not a folder; choose another --out"
    for parent in out.parents:
        if parent.exists():
            return None if parent.is_dir() else f"--out {out} is inside {parent}, which is a file"
    return None


def output_file_problem(dst: Path) -> str | None:
    """Why `dst` cannot be written as a file (a folder, or its folder is missing or a file), or None."""
    if dst.is_dir():
        return f"{dst} is a folder; give the output file's name"
    parent = dst.parent if str(dst.parent) else Path(".")
    if parent.exists() and not parent.is_dir():
        return f"cannot write {dst}: {parent} is a file"
    if not parent.exists():
        return f"cannot write {dst}: the folder {parent} does not exist"
    if not os.access(parent, os.W_OK):
        return f"cannot write {dst}: the folder {parent} is not writable"
    return None


def warn_constant_images(x_BCHW: torch.Tensor, paths: list[Path], indices: list[int], warned: set[int]) -> None:
    """Print one `warning:` line per blank (constant) input image, naming it."""
    flat = x_BCHW.flatten(1)
    constant = (flat.amax(dim=1) == flat.amin(dim=1)).tolist()
    for i, is_constant in zip(indices, constant):
        if is_constant and i not in warned:
            warned.add(i)
            print(f"warning: {paths[i]} is a constant (blank) image; its features carry no image content",
                  file=sys.stderr)
