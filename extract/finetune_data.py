"""Training data of the concept classifier: the CSV's training split, one entry per unique image.

Labels are image-level (max over an image's rows, `cache.vindr.images_from_rows`). The
validation images are those of a seeded random subset of the training split's *patients*, so no
patient is on both sides and the test split is never used.
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np

from extract.preprocess import ImageError, load_model_input, read_grey
from cache.vindr import images_from_rows, load_annotations, png_path


class DataError(Exception):
    """The CSV or images cannot be used for training; the message says why."""


class TrainingData(NamedTuple):
    paths: list[Path]  # one PNG per unique training-split image
    hw: tuple[int, int]
    labels: np.ndarray  # (N, K) int64, image level
    train_indices: np.ndarray  # into paths
    val_indices: np.ndarray
    val_patients: list[str]


def load_training_data(csv: Path, images: Path, concepts: list[str], val_fraction: float, seed: int,
                       limit: int | None = None) -> TrainingData:
    """Read the CSV, keep the training split, split its patients into train / validation."""
    if not concepts:
        raise DataError("--concepts names no concept")
    try:
        rows = load_annotations(csv)
    except (FileNotFoundError, ValueError) as exc:
        raise DataError(str(exc)) from None
    unknown = [c for c in concepts if c not in rows.columns]
    if unknown:
        raise DataError(f"{csv} has no concept column {', '.join(unknown)}")
    rows = rows[rows["split"] == "training"].reset_index(drop=True)
    if rows.empty:
        raise DataError(f"{csv} has no rows in the training split")
    table, _ = images_from_rows(rows)
    if limit is not None:
        table = table.iloc[:limit].reset_index(drop=True)
    labels = table[concepts].to_numpy(np.int64)
    bad = [c for k, c in enumerate(concepts) if not set(np.unique(labels[:, k])) <= {0, 1}]
    if bad:
        raise DataError(f"concept {', '.join(bad)} is not binary (0/1); the classifier trains binary concepts")
    patients = np.array(sorted(table["patient_id"].astype(str).unique()))
    n_val = int(round(val_fraction * len(patients)))
    if not 0 < n_val < len(patients):
        raise DataError(f"--val-fraction {val_fraction} leaves {n_val} of {len(patients)} training patients "
                        "for validation; both sides need at least one")
    val_patients = sorted(np.random.default_rng(seed).choice(patients, n_val, replace=False).tolist())
    is_val = table["patient_id"].astype(str).isin(val_patients).to_numpy()
    train_idx, val_idx = np.flatnonzero(~is_val), np.flatnonzero(is_val)
    for name, idx in (("training", train_idx), ("validation", val_idx)):
        for k, concept in enumerate(concepts):
            if len(np.unique(labels[idx, k])) < 2:
                raise DataError(f"the {name} images have only one class of {concept}; "
                                "more images or another --val-fraction / --seed is needed")
    paths = [png_path(images, r) for r in table[["patient_id", "image_id"]].to_dict("records")]
    hw = read_grey(paths[0]).shape
    return TrainingData(paths, (int(hw[0]), int(hw[1])), labels, train_idx, val_idx, val_patients)


def load_inputs(data: TrainingData, indices: np.ndarray, augment_seed: int | None = None) -> np.ndarray:
    """(B, 3, H, W) float32 encoder inputs of `indices` (ImageError names a bad file)."""
    return np.stack([load_model_input(data.paths[i], data.hw, augment_seed=augment_seed, image_index=int(i))
                     for i in indices])


__all__ = ["DataError", "ImageError", "TrainingData", "load_inputs", "load_training_data"]
