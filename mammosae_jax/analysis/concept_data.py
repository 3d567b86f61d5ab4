"""Shared plumbing of the concept analyses: labels per row or per image, split selection, JSON output."""
from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np

from cache.atomic import write_json_atomic

UNITS = ("row", "image")
DENSITY_CLASSES = ("A", "B", "C", "D")


class ConceptError(ValueError):
    """Bad input to a concept analysis (unknown label, missing split, mismatched files)."""


class Units(NamedTuple):
    """Evaluation units of a split: one label per unit and the position of its image."""

    labels_U: np.ndarray  # [U] int64
    image_pos_U: np.ndarray  # [U] index into the split's image array


def check_label(cache, label: str) -> None:
    """Refuse a label the cache does not hold."""
    names = list(cache.label_names)
    if label not in names:
        raise ConceptError(f"label '{label}' is not in the cache; it has {', '.join(names) or 'no labels'}")


def n_classes_of(label: str) -> int:
    """4 for density (BI-RADS A-D), 2 for the binary findings."""
    return len(DENSITY_CLASSES) if label == "density" else 2


def class_names_of(label: str) -> tuple[str, ...]:
    return DENSITY_CLASSES if label == "density" else ("0", "1")


def split_images(cache, split: str) -> np.ndarray:
    """Image indices of a split, with an error naming the splits the cache has."""
    splits = sorted(set(cache.splits))
    if split not in splits:
        raise ConceptError(f"the cache has no '{split}' images; its splits are {', '.join(splits)}")
    return cache.split_indices(split)


def units(cache, label: str, images: np.ndarray, per: str) -> Units:
    """Labels of the split's CSV rows (``per='row'``, reference parity) or images (``'image'``)."""
    check_label(cache, label)
    if per == "image":
        return Units(cache.labels[label].to_numpy(np.int64)[images], np.arange(len(images)))
    if per != "row":
        raise ConceptError(f"--per must be one of {', '.join(UNITS)}, got '{per}'")
    rows = cache.rows
    if label not in rows.columns:
        raise ConceptError(f"the cache's row table has no '{label}' column")
    position = np.full(len(cache), -1, np.int64)
    position[images] = np.arange(len(images))
    pos_U = position[rows["image_index"].to_numpy(np.int64)]
    keep = pos_U >= 0
    return Units(rows[label].to_numpy()[keep].astype(np.int64), pos_U[keep])


def write_json(path: str | os.PathLike, obj) -> None:
    """Write ``obj`` as JSON (indent 4, no trailing newline) atomically."""
    write_json_atomic(path, obj, indent=4)
